"""The tile engine through real runs on the small demo world: failed tiles (a manifest, exit code 3, no products, a
rerun that retries only them), unreadable assets named everywhere, and the run's log."""

import json
import subprocess
import sys

import pytest
import rasterio

from treemap.workdir import WORK_DIR


def _treemap(*args):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def aoi(corner_aoi):
    return corner_aoi


@pytest.fixture(scope="module")
def broken_catalog(small_world, world_items, tmp_path_factory):
    """The small world's items as one item file, with one scene's B04 pointing at a file that does not exist."""
    features = world_items(small_world)
    victim = features[len(features) // 2]
    missing = tmp_path_factory.mktemp("gone") / "B04.tif"
    key = next(k for k, a in victim["assets"].items() if k.upper() in ("B04", "RED"))
    victim["assets"][key]["href"] = str(missing)
    path = tmp_path_factory.mktemp("items") / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path, victim["id"], str(missing)


def test_failed_tiles_then_a_rerun_that_retries_them(aoi, broken_catalog, tmp_path):
    catalog, scene, href = broken_catalog
    out = tmp_path / "out"
    args = ["phenology", "--aoi", aoi, "--catalog", catalog, "--year", 2022, "--out", out, "--tile-size", 32,
            "--workers", 1, "--json"]
    strict = _treemap(*args, "--max-unreadable", 0)
    assert strict.returncode == 3, strict.stderr
    manifest = json.loads(next((out / WORK_DIR).rglob("manifest.json")).read_text())
    states = {tile: entry["state"] for tile, entry in manifest["tiles"].items()}
    failed = sorted(tile for tile, state in states.items() if state == "failed")
    # the scene with the broken band covers the east half of the AOI: those tiles fail, the others are done
    assert 0 < len(failed) < 4 and manifest["failed"] == len(failed)
    assert all(states[t] == "done" for t in states if t not in failed)
    assert all("1 of 1606 assets are unreadable" in manifest["tiles"][t]["error"] for t in failed)
    errors = [line for line in strict.stderr.splitlines() if line.startswith("treemap: error:")]
    assert len(errors) == 1 and f"{len(failed)} of 4 tiles failed" in errors[0], strict.stderr
    assert strict.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == [WORK_DIR], "no products"
    assert "1 of 1606 assets are unreadable" in next((out / WORK_DIR).rglob("treemap.log")).read_text()

    tolerant = _treemap(*args)  # the default threshold (5 %) lets one unreadable asset in 1,606 through
    assert tolerant.returncode == 0, tolerant.stderr
    assert tolerant.stderr.count("already done") == 4 - len(failed), "only the failed tiles are computed again"
    summary = json.loads(tolerant.stdout)
    assert [(u["scene"], u["band"], u["href"]) for u in summary["unreadable_assets"]] == [(scene, "B04", href)]
    with rasterio.open(out / "phenology.tif") as ds:
        tags = ds.tags()
    assert tags["TREEMAP_UNREADABLE_ASSETS"] == "1"
    listed = json.loads(tags["TREEMAP_UNREADABLE_ASSET_LIST"])
    assert listed[0]["scene"] == scene and listed[0]["band"] == "B04" and listed[0]["href"] == href
    log = (out / "treemap.log").read_text()
    assert "phenology" in log and f"scene {scene} band B04" in log and "tile(s) computed in" in log
    assert not (out / WORK_DIR).exists()


class _Recording:
    """A TileTask stand-in that records the order of reads and finishes (the engine's loop is what is tested)."""

    job = None

    def __init__(self):
        self.events = []

    def read(self, tile):
        self.events.append(("read", tile))
        return tile * 10

    def finish(self, tile, inputs):
        self.events.append(("finish", tile))
        return {"tile": tile, "inputs": inputs}


def test_without_prefetch_each_tile_is_read_after_the_previous_one_finished(monkeypatch):
    from treemap.tiles import _in_process

    monkeypatch.setenv("TREEMAP_PREFETCH", "0")
    task = _Recording()
    out = list(_in_process(task, [1, 2, 3]))
    assert out == [(t, {"tile": t, "inputs": t * 10}) for t in (1, 2, 3)]
    assert task.events == [("read", 1), ("finish", 1), ("read", 2), ("finish", 2), ("read", 3), ("finish", 3)]


def test_with_prefetch_the_next_tile_is_read_while_this_one_computes(monkeypatch):
    import threading

    from treemap.tiles import _in_process

    monkeypatch.setenv("TREEMAP_PREFETCH", "1")
    read_two = threading.Event()
    seen_during_finish = []

    class Task(_Recording):
        def read(self, tile):
            if tile == 2:
                read_two.set()
            return super().read(tile)

        def finish(self, tile, inputs):
            if tile == 1:  # tile 2 is read in the background while tile 1 is being finished
                seen_during_finish.append(read_two.wait(timeout=10))
            return super().finish(tile, inputs)

    out = list(_in_process(Task(), [1, 2, 3]))
    assert [t for t, _ in out] == [1, 2, 3] and seen_during_finish == [True]


def test_prefetch_by_default_only_for_jobs_on_a_gpu(monkeypatch):
    from treemap.tiles import prefetch_enabled

    class Job:
        def __init__(self, gpu):
            self.gpu = gpu

        def computes_on_gpu(self):
            return self.gpu

    monkeypatch.delenv("TREEMAP_PREFETCH", raising=False)
    assert prefetch_enabled(Job(True)) and not prefetch_enabled(Job(False)) and not prefetch_enabled(object())
    monkeypatch.setenv("TREEMAP_PREFETCH", "1")
    assert prefetch_enabled(Job(False))
    monkeypatch.setenv("TREEMAP_PREFETCH", "off")
    assert not prefetch_enabled(Job(True))
