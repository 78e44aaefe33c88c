"""Shared fixtures. The demo world for tests is a small one built once per session into a temporary folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small demo world (same generator as the default, smaller extent) shared by pipeline tests."""
    from treemap.demo import WorldSpec, build_world

    spec = WorldSpec(seed=7, x_min=497000.0, y_max=5543000.0, width_px=200, height_px=120, overlap_px=40)
    return build_world(tmp_path_factory.mktemp("world") / "w", spec)


@pytest.fixture(scope="session")
def embed_aoi(small_world, tmp_path_factory):
    """About 660 m x 600 m in the small world's north-west: 2 x 3 tiles of 32 px, 2 x 2 of 48, one of 64."""
    from shapely.geometry import box

    from treemap.grid import to_crs

    spec = small_world.spec
    local = box(spec.x_min + 200, spec.y_max - 700, spec.x_min + 840, spec.y_max - 120)
    path = tmp_path_factory.mktemp("embed-aoi") / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    return path


@pytest.fixture(scope="session")
def seco_model(tmp_path_factory):
    """A tiny SeCo-Eco model file with seeded random weights and plausible channel statistics."""
    from treemap.models.seco import SecoConfig, random_seco, save_seco
    from treemap.models.seco_input import ChannelStats

    stats = ChannelStats(mean=(0.05, 0.08, 0.06, 0.1, 0.2, 0.25, 0.28, 0.3, 0.45),
                         std=(0.03, 0.03, 0.04, 0.04, 0.06, 0.07, 0.08, 0.08, 0.2))
    path = tmp_path_factory.mktemp("seco") / "seco.safetensors"
    return save_seco(random_seco(SecoConfig.tiny(), stats, seed=3), path)


@pytest.fixture(scope="session")
def seco_points(small_world, tmp_path_factory):
    """Two labelled points per tree species of the small world (GeoJSON), and their number."""
    import numpy as np
    import rasterio
    from shapely.geometry import Point

    from treemap.grid import to_crs

    classes = json.loads(small_world.classes.read_text())
    with rasterio.open(small_world.truth_species) as ds:
        codes, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    rng = np.random.default_rng(5)
    feats = []
    for code, c in classes.items():
        if c["kind"] != "tree":
            continue
        rows, cols = np.nonzero(codes == int(code))
        for i in rng.choice(rows.size, min(2, rows.size), replace=False):
            p = to_crs(Point(*(transform * (cols[i] + 0.5, rows[i] + 0.5))), 4326, src_epsg=epsg)
            feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.x, p.y]},
                          "properties": {"species": c["name"]}})
    path = tmp_path_factory.mktemp("seco-points") / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path, len(feats)


@pytest.fixture(scope="session")
def seco_head(small_world, seco_model, seco_points):
    """`treemap fewshot --encoder seco-eco` (prototype head, season mean) on the labelled points: its process
    and JSON summary."""
    import subprocess
    import sys
    from importlib import resources

    taxonomy = resources.files("treemap.data") / "species" / "demo.csv"
    with resources.as_file(taxonomy) as tax:
        proc = subprocess.run(
            [sys.executable, "-m", "treemap", "fewshot", "--encoder", "seco-eco", "--points", str(seco_points[0]),
             "--model", str(seco_model), "--catalog", str(small_world.catalog), "--year", "2022", "--taxonomy",
             str(tax), "--kind", "prototype", "--season", "mean", "--json"],
            capture_output=True, text=True, timeout=900)
    return proc, (json.loads(proc.stdout) if proc.returncode == 0 else None)


@pytest.fixture(scope="session")
def seco_float_map(small_world, embed_aoi, seco_model, tmp_path_factory):
    """`treemap embed --encoder seco-eco` of `embed_aoi` (year 2022, chip 16, stride 8, mean of the seasons) with
    64 px tiles as float32 in one worker: its JSON summary and output folder."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("seco-64")
    proc = subprocess.run(
        [sys.executable, "-m", "treemap", "-q", "embed", "--aoi", str(embed_aoi), "--catalog", str(small_world.catalog),
         "--year", "2022", "--encoder", "seco-eco", "--chip", "16", "--stride", "8", "--model", str(seco_model),
         "--device", "cpu", "--out", str(out), "--json", "--tile-size", "64", "--float32", "--workers", "1"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: the default demo world lives under a session temp folder."""
    cache = os.environ.get("TREEMAP_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("TREEMAP_CACHE", cache)


class SmallDisk:
    """A real, size-limited filesystem (tmpfs) mounted for one test, and a filler file to set its free space."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler.bin"

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def leave_free(self, nbytes: int) -> None:
        """Grow or shrink the filler so that about ``nbytes`` (rounded down to 4 KiB pages) stay free."""
        self.filler.unlink(missing_ok=True)
        size = max(self.free() - nbytes, 0) // 4096 * 4096
        with open(self.filler, "wb") as fh:
            fh.truncate(0)
            chunk = b"\0" * (1 << 20)
            left = size
            while left > 0:
                left -= fh.write(chunk[: min(left, len(chunk))])

    def leave_inodes(self, count: int) -> None:
        """Create empty files until only ``count`` more files or folders can be created."""
        self.release()
        folder = self.root / "inode-filler"
        folder.mkdir()
        k = 0
        while os.statvfs(self.root).f_favail > count:
            (folder / str(k)).touch()
            k += 1

    def release(self) -> None:
        import shutil

        self.filler.unlink(missing_ok=True)
        shutil.rmtree(self.root / "inode-filler", ignore_errors=True)


@pytest.fixture
def small_disk(tmp_path):
    """A fresh 8 MiB tmpfs at a temporary folder (skipped where this process may not mount one)."""
    import subprocess

    def mount(size: str = "8m", inodes: int | None = None) -> SmallDisk:
        root = tmp_path / f"disk-{len(mounted)}"
        root.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (f",nr_inodes={inodes}" if inodes else ""),
                               "tmpfs", str(root)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): needs root")
        mounted.append(root)
        return SmallDisk(root)

    mounted: list[Path] = []
    yield mount
    for root in mounted:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def _world_items(world) -> list[dict]:
    import json

    features = []
    for item_path in sorted((world.root / "items").rglob("*.json")):
        item = json.loads(item_path.read_text())
        for asset in item["assets"].values():
            if not asset["href"].startswith("/"):
                asset["href"] = str((item_path.parent / asset["href"]).resolve())
        features.append(item)
    return features


@pytest.fixture(scope="session")
def world_items():
    """Function giving a demo world's STAC items with absolute asset hrefs, ready for one item file.

    A fixture rather than an importable helper: ``from conftest import`` resolves to whichever
    conftest module pytest loaded first, which differs between checkouts.
    """
    return _world_items


@pytest.fixture(scope="session")
def corner_aoi(small_world, tmp_path_factory):
    """A 600 m x 400 m AOI in the small world's north-west corner: 2 x 2 tiles of 32 px."""
    import json

    from shapely.geometry import box

    from treemap.grid import to_crs

    spec = small_world.spec
    local = box(spec.x_min + 200, spec.y_max - 500, spec.x_min + 800, spec.y_max - 100)
    path = tmp_path_factory.mktemp("aoi") / "corner.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    return path
