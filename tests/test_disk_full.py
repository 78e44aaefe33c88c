"""`treemap predict` and `treemap phenology` writing onto a real small filesystem (tmpfs) that fills up: during the
tile rasters and during the mosaic (the early free-space check, and the disk filling up during a sidecar, are
tested on the publishing step alone in test_publish.py). Each time: a non-zero exit, one clear error line,
nothing new at the final paths, the finished tiles kept; after space is freed a rerun gives the products of an
uninterrupted run, bit for bit."""

import hashlib
import os
import subprocess
import sys

import pytest
import rasterio

from treemap.workdir import WORK_DIR

PAGE = 4096


def _treemap(*args, env=None):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def aoi(corner_aoi):
    return corner_aoi


def _args(job, aoi, world, out):
    common = ["--aoi", aoi, "--catalog", world.catalog, "--out", out, "--tile-size", 32, "--workers", 1]
    if job == "predict":
        return ["predict", *common, "--year", 2022, "--model", "demo", "--species", "demo"]
    return ["phenology", *common, "--year", 2022, "--seasonal"]


def _pixels(out):
    sums = {}
    for path in sorted(out.glob("*.tif")):
        with rasterio.open(path) as ds:
            sums[path.name] = hashlib.sha256(ds.read().tobytes()).hexdigest()
    return sums


def _pages(paths):
    return sum(-(-os.path.getsize(p) // PAGE) * PAGE for p in paths)


@pytest.fixture(scope="module")
def references(small_world, aoi, tmp_path_factory):
    """Uninterrupted runs on a normal disk, one per job, made when first needed: their pixels, and the space
    their tiles and their products take."""
    made = {}

    def get(job):
        if job not in made:
            out = tmp_path_factory.mktemp(job) / "out"
            proc = _treemap(*_args(job, aoi, small_world, out), "--keep-work")
            assert proc.returncode == 0, proc.stderr
            tiles = list((out / WORK_DIR).rglob("*.tif")) + list((out / WORK_DIR).rglob("*.done"))
            assert len([t for t in tiles if t.suffix == ".tif"]) == 4, "the AOI spans 2 x 2 tiles"
            products = [p for p in out.iterdir() if p.is_file()]
            made[job] = _pixels(out), _pages(tiles), _pages(products)
        return made[job]

    return get


def _error_line(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("treemap: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("job,stage", [("predict", "tiles"), ("predict", "mosaic"), ("phenology", "mosaic")])
def test_full_disk_then_rerun(small_disk, small_world, aoi, references, job, stage):
    pixels, tile_bytes, product_bytes = references(job)
    disk = small_disk("16m")
    out = disk.root / "out"
    if stage == "tiles":
        free, env = tile_bytes // 2, {}  # the disk fills up half-way through the tiles
    else:  # room for the tiles and half the products; the early check is off, so the mosaic runs into it
        free, env = tile_bytes + product_bytes // 2, {"TREEMAP_SPACE_CHECK": "0"}
    disk.leave_free(free)
    proc = _treemap(*_args(job, aoi, small_world, out), env=env)
    assert proc.returncode == 74, proc.stderr
    line = _error_line(proc)
    assert line.startswith(f"treemap: error: cannot write {out}") and "No space left on device" in line, line
    assert (WORK_DIR in line) == (stage == "tiles"), line  # a tile raster or marker, else a product's final path
    assert proc.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == [WORK_DIR], "nothing new at the final paths"
    kept = list((out / WORK_DIR).rglob("*.done"))
    if stage == "mosaic":
        assert len(kept) == 4, "finished tiles are kept for the rerun"
    disk.release()
    again = _treemap(*_args(job, aoi, small_world, out))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already done") == len(kept)
    assert _pixels(out) == pixels, "the rerun's products equal an uninterrupted run's"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
