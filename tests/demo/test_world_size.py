"""`treemap demo --size WxH`: demo worlds of another extent for measurements, built as a user builds them (the
command in a subprocess); the default world stays what it was."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pystac
import pytest
import rasterio
from pyproj import Transformer

import treemap.demo.world as world_mod
from treemap.demo import GENERATOR_VERSION, WorldSpec, ensure_demo_world
from treemap.demo.spec import MAX_SIDE_KM, MIN_SIDE_KM, acquisition_dates, parse_size, sized_spec, tile_grids


def run_demo(*args):
    return subprocess.run([sys.executable, "-m", "treemap", "demo", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sized") / "world"
    proc = run_demo("--size", "2x1.5", "--seed", "4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out.absolute() / "catalog.json")
    return out


def test_the_default_size_is_the_default_world():
    assert sized_spec(0, 6.4, 4) == WorldSpec()
    assert sized_spec(7, 6.4, 4.0) == WorldSpec(seed=7)
    assert parse_size(" 10X10 ") == (10.0, 10.0) and parse_size("2x1.5") == (2.0, 1.5)
    # sides round to the 20 m grid; narrow worlds keep both tiles by a narrower overlap
    assert (sized_spec(0, 1.23, 4.567).width_px, sized_spec(0, 1.23, 4.567).height_px) == (124, 456)
    narrow = sized_spec(0, MIN_SIDE_KM, MAX_SIDE_KM)
    narrow.validate()
    assert narrow.overlap_px < WorldSpec().overlap_px


def test_a_sized_world_has_a_cache_folder_of_its_own(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(world_mod, "build_world", lambda out, spec: calls.append((Path(out), spec)) or "w")
    ensure_demo_world(2, cache_dir=tmp_path, size=(10, 10))
    assert calls[-1] == (tmp_path / "demo" / f"world-{GENERATOR_VERSION}-seed2-1000x1000px", sized_spec(2, 10, 10))
    ensure_demo_world(2, cache_dir=tmp_path, size=(6.4, 4))  # the default size is the default world
    assert calls[-1] == (tmp_path / "demo" / f"world-{GENERATOR_VERSION}-seed2", WorldSpec(seed=2))


def test_size_2x1_5_gives_its_extent(small):
    spec = WorldSpec.from_json(json.loads((small / "world.json").read_text())["spec"])
    assert spec == sized_spec(4, 2, 1.5) and (spec.width_px, spec.height_px) == (200, 150)
    for name in ("species.tif", "landcover.tif", "phenology.tif"):
        with rasterio.open(small / "truth" / name) as src:
            assert (src.width, src.height) == (200, 150)
            assert tuple(src.bounds) == (496000.0, 5542500.0, 498000.0, 5544000.0)
            assert src.crs.to_epsg() == 32632
    species = rasterio.open(small / "truth" / "species.tif").read(1)
    assert set(range(1, 11)) <= set(species.ravel().tolist())  # every species planted


def test_size_2x1_5_gives_a_valid_catalog(small):
    spec = sized_spec(4, 2, 1.5)
    items = list(pystac.Catalog.from_file(str(small / "catalog.json")).get_items(recursive=True))
    assert len(items) == 2 * len(acquisition_dates(spec))
    grids = {t.name: t for t in tile_grids(spec)}
    assert grids["32UMA"].col1 > grids["32UNA"].col0  # the two tiles still overlap
    for item in items[:: len(items) // 4]:
        tile = grids[item.id.split("_")[1]]
        for key, res in (("blue", 10), ("rededge1", 20), ("scl", 20)):
            with rasterio.open(item.assets[key].get_absolute_href()) as src:
                assert [src.height, src.width] == list(tile.shape(res)) == item.assets[key].extra_fields["proj:shape"]
                assert tuple(src.transform)[:6] == tuple(tile.transform(res))
        lon0, lat0, lon1, lat1 = item.bbox
        x, y = Transformer.from_crs(4326, 32632, always_xy=True).transform((lon0 + lon1) / 2, (lat0 + lat1) / 2)
        x0, y0, x1, y1 = tile.bounds
        assert x0 < x < x1 and y0 < y < y1
    # treemap's own search finds the scenes of a point inside the world
    from treemap.aoi import read_aoi
    from treemap.tiles import find_scenes

    lon, lat = Transformer.from_crs(32632, 4326, always_xy=True).transform(497900.0, 5542600.0)
    aoi = {"type": "Polygon", "coordinates": [[[lon, lat], [lon + 0.0005, lat], [lon + 0.0005, lat + 0.0005],
                                               [lon, lat + 0.0005], [lon, lat]]]}
    path = small.parent / "aoi.geojson"
    path.write_text(json.dumps(aoi))
    scenes = find_scenes(str(small / "catalog.json"), read_aoi(path), date(2022, 1, 1), date(2022, 12, 31), 100.0)
    assert {s.id.split("_")[1] for s in scenes} == {"32UNA"} and len(scenes) == len(acquisition_dates(spec))


@pytest.mark.parametrize("value, words", [
    ("0", "is not a size like 10x10"),
    ("0x0", f"is outside {MIN_SIDE_KM:g}..{MAX_SIDE_KM:g} km per side"),
    ("-2x3", "is outside"),
    ("5x-2", "is outside"),
    ("tenxten", "is not a size like 10x10"),
    ("10x10x10", "is not a size like 10x10"),
    ("nanx3", "is not a size like 10x10"),
    ("30x5", f"is outside {MIN_SIDE_KM:g}..{MAX_SIDE_KM:g} km per side"),
    ("0.5x2", "is outside"),
])
def test_a_bad_size_is_one_usage_line(value, words, tmp_path):
    proc = run_demo(f"--size={value}", "--out", tmp_path / "w")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"treemap: error: --size {value} {words}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert not (tmp_path / "w").exists()
