"""Publishing a product set onto a real filesystem that fills up (a small tmpfs): at every amount of free space the
publication either completes or fails with one WriteError, and the output folder then holds the previous product set
untouched, no partial file and no temporary file outside the work folder."""

import hashlib
import json
import os
import subprocess

import numpy as np
import pytest
import rasterio

from treemap.aoi import AOI
from treemap.errors import WriteError
from treemap.grid import plan_tiles, to_crs
from treemap.outputs import PROB_SCALE, ProductSpec, class_colours, write_tile_raster
from treemap.publish import JOURNAL, Staging, check_space, recover
from treemap.tiles import publish
from treemap.workdir import WORK_DIR
from shapely.geometry import box

NAMES = ["Abies alba", "Fagus sylvatica", "Picea abies"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Three noisy tiles (they compress badly, so the products have a realistic size) on a normal disk."""
    folder = tmp_path_factory.mktemp("tiles")
    aoi = AOI(to_crs(box(497000, 5541000, 498900, 5542200), 4326, src_epsg=32632))
    plan = plan_tiles(aoi, tile_size=96)
    rng = np.random.default_rng(5)
    sources = []
    for tile in plan.tiles:
        data = rng.integers(0, 201, (4, tile.height, tile.width), dtype=np.uint8)
        data[3] = rng.integers(0, 3, (tile.height, tile.width))
        sources.append((tile, write_tile_raster(folder / f"{tile.id}.tif", tile, data)))
    return plan, sources


def specs(tag: str) -> list[ProductSpec]:
    probs = tuple({"description": n, "scale": PROB_SCALE, "offset": 0.0} for n in NAMES)
    dominant = ({"description": "dominant species", "categories": NAMES, "colours": class_colours(3)},)
    return [ProductSpec("species_probability", probs, 0, resampling="AVERAGE", tags=(("RUN", tag),)),
            ProductSpec("dominant_species", dominant, 3, tags=(("RUN", tag),))]


def snapshot(out):
    """name -> sha256 of every file in the output folder, apart from the work folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def _sweep(disk, out, plan, sources, levels, fill) -> set[str]:
    """Publish a new set at each fill level until it succeeds; check the folder after every failure. Returns the
    kinds of file whose write failed (tif, aux.xml, json ...)."""
    root = out / WORK_DIR
    before = snapshot(out)
    stages, succeeded = set(), False
    for level in levels:
        fill(level)
        try:
            publish(specs("new"), plan, sources, out, root)
        except WriteError as exc:
            message = str(exc)
            assert message.startswith(f"cannot write {out}") and "\n" not in message, message
            assert "No space left on device" in message, message
            assert WORK_DIR not in message.split(":")[0], "errors name the final path, not the staging one"
            target = message.split()[2].rstrip(":")
            stages.add("aux.xml" if target.endswith(".aux.xml") else "folder" if target == str(out)
                       else target.rsplit(".", 1)[-1])
            assert snapshot(out) == before, f"previous products changed at fill level {level}"
        else:
            succeeded = True
            after = snapshot(out)
            assert set(after) == set(before)
            for name in ("species_probability.tif", "dominant_species.tif"):
                with rasterio.open(out / name) as ds:
                    assert ds.tags()["RUN"] == "new"
            break
        finally:
            disk.release()
        leftovers = [p.name for p in out.iterdir() if p.name not in before and p.name != WORK_DIR]
        assert not leftovers, leftovers
        assert not list(root.glob("staging-*")) and not (root / JOURNAL).exists()
    assert succeeded, "with enough space the publication completes"
    return stages


def test_publish_at_every_fill_level(small_disk, tiles, monkeypatch):
    """Every amount of free space from none to enough (4 KiB steps), then every number of free inodes: the disk
    fills up when the staging folder is made, during a COG and during its sidecar."""
    monkeypatch.setenv("TREEMAP_SPACE_CHECK", "0")  # reach the writes themselves; the early check is tested below
    plan, sources = tiles
    stages = set()
    for kind in ("bytes", "inodes"):
        disk = small_disk("8m", inodes=400)
        out = disk.root / "out"
        out.mkdir()
        old = publish(specs("old"), plan, sources, out, out / WORK_DIR)
        assert set(snapshot(out)) == {"species_probability.tif", "dominant_species.tif",
                                      "dominant_species.tif.aux.xml"}
        if kind == "bytes":
            needed = sum(os.path.getsize(p) for p in old.values()) + 64 * 1024
            stages |= _sweep(disk, out, plan, sources, range(0, needed, 4096), disk.leave_free)
        else:
            stages |= _sweep(disk, out, plan, sources, range(0, 12), disk.leave_inodes)
    assert {"folder", "tif", "aux.xml"} <= stages, stages


def test_interrupted_publication_is_finished_by_the_next_run(tmp_path, tiles):
    """A crash between two renames leaves the journal; recover() completes the set before anything else."""
    plan, sources = tiles
    out = tmp_path / "out"
    out.mkdir()
    root = out / WORK_DIR
    publish(specs("old"), plan, sources, out, root)
    staging = Staging(out, root)
    from treemap.outputs import write_product

    for spec in specs("new"):
        write_product(staging.path(spec.filename), plan, sources, spec)
    names = sorted(p.name for p in staging.dir.iterdir())
    (root / JOURNAL).write_text(json.dumps({"staging": staging.dir.name, "files": names}))
    os.replace(staging.dir / "species_probability.tif", out / "species_probability.tif")  # the crash: one renamed
    recover(out, root)
    for name in ("species_probability.tif", "dominant_species.tif"):
        with rasterio.open(out / name) as ds:
            assert ds.tags()["RUN"] == "new"
    assert not (root / JOURNAL).exists() and not staging.dir.exists()


def test_space_check_names_needed_and_available(small_disk, tiles):
    plan, sources = tiles
    disk = small_disk("2m")
    with pytest.raises(WriteError, match=r"about [\d.]+ MiB needed, [\d.]+ MiB available"):
        check_space(disk.root, [path for _, path in sources] * 20)
    check_space(disk.root, [path for _, path in sources][:1])


@pytest.mark.parametrize("failure", ["read-only", "removed"])
def test_output_folder_that_goes_away(small_disk, tiles, failure):
    plan, sources = tiles
    disk = small_disk("8m")
    out = disk.root / "out"
    out.mkdir()
    if failure == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(disk.root)], check=True)
        expected = "Read-only file system"
    else:
        out.rmdir()
        expected = "No such file or directory"
    with pytest.raises(WriteError, match=expected):
        publish(specs("x"), plan, sources, out, out / WORK_DIR)


def _item(folder, job, names):
    (folder / "item.json").write_text(json.dumps({
        "properties": {"treemap:job": job},
        "assets": {n.replace(".", "_"): {"href": f"./{n}"} for n in [*names, "item.json"] if n != "item.json"}}))


@pytest.mark.parametrize("old_job, removed", [("predict", True), ("phenology", False), (None, False)])
def test_files_of_the_previous_set_that_the_new_run_does_not_make_go_with_it(tmp_path, old_job, removed):
    """A predict run with --top-k beside a later one without: the later set must not keep the earlier
    top_species.tif. Files another job wrote (or an unreadable item) are not the set's and stay."""
    out, root = tmp_path / "out", tmp_path / "out" / WORK_DIR
    out.mkdir()
    old = ["species_probability.tif", "top_species.tif", "top_species.tif.aux.xml", "top_species.qml"]
    for name in [*old, "notes.txt"]:
        (out / name).write_text("old")
    if old_job is None:
        (out / "item.json").write_text("{not json")
    else:
        _item(out, old_job, old)
    staging = Staging(out, root)
    (staging.path("species_probability.tif")).write_text("new")
    _item(staging.dir, "predict", ["species_probability.tif"])
    published = staging.publish()
    assert {p.name for p in published} == {"species_probability.tif", "item.json"}
    assert (out / "species_probability.tif").read_text() == "new" and (out / "notes.txt").exists()
    left = {n for n in old[1:] if (out / n).exists()}
    assert left == (set() if removed else set(old[1:]))
