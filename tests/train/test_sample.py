"""train.sample (SSL4Eco sampling) on a small demo world: grid, land mask, seasons against the planted truth, patch
cloud shares from SCL, weights, missing seasons, and a killed run resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import from_bounds
from shapely.geometry import MultiPolygon, Point, box, mapping, shape

from train.sample import main
from train.sample_grid import GridSpec, SampleError, grid_crs, grid_locations, read_land
from train.sample_store import read_shard
from treemap.aoi import AOI
from treemap.demo import WorldSpec, build_world
from treemap.grid import to_crs

SPEC = WorldSpec(seed=7, x_min=497000.0, y_max=5543000.0, width_px=200, height_px=120, overlap_px=40)
UTM = 32632
PATCH, WINDOW, MAX_CLOUD, SPACING_KM = 8, 16, 20.0, 0.6
SEASONS = ("greenup_maturity", "maturity_senescence", "senescence_dormancy", "dormancy_greenup")
CLEAR_SCL = (4, 5, 6, 7, 11)
WATER = 101
REPO = Path(__file__).resolve().parents[2]


def write_aoi(path: Path, utm_bounds) -> Path:
    geom = to_crs(box(*utm_bounds), 4326, src_epsg=UTM)
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(geom)}))
    return path


def lonlat_aoi(path: Path, records: list[dict], pad: float = 0.0004) -> Path:
    """An AOI of small squares around the given locations (and no other grid node)."""
    geom = MultiPolygon([box(r["lon"] - pad, r["lat"] - pad, r["lon"] + pad, r["lat"] + pad) for r in records])
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(geom)}))
    return path


def sample_args(catalog, out, aoi, origin, *extra) -> list[str]:
    return ["--catalog", str(catalog), "--out", str(out), "--aoi", str(aoi), "--spacing-km", str(SPACING_KM),
            "--grid-origin", str(origin[0]), str(origin[1]), "--patch-size", str(PATCH), "--window", str(WINDOW),
            "--max-cloud", str(MAX_CLOUD), "--start", "2022-01-01", "--end", "2022-12-31", *map(str, extra)]


def index(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "index.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("sample-world") / "w", SPEC)


@pytest.fixture(scope="module")
def water_origin(world):
    """A grid origin (EPSG:6933) on the centre of a water pixel whose 9 x 9 neighbourhood is all water (from the
    truth), so that node x+0y+0's 8 x 8 patch is open water."""
    with rasterio.open(world.truth_species) as ds:
        water, transform = ds.read(1) == WATER, ds.transform
    k, (h, w) = 4, water.shape
    padded, whole = np.pad(water, k), np.ones_like(water)
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            whole &= padded[dy:dy + h, dx:dx + w]
    row, col = np.argwhere(whole)[0]
    x, y = transform * (col + 0.5, row + 0.5)
    return Transformer.from_crs(UTM, 6933, always_xy=True).transform(x, y)


@pytest.fixture(scope="module")
def sampled(world, water_origin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample-run")
    aoi = write_aoi(folder / "aoi.geojson", (497050, 5541850, 498950, 5542950))
    out = folder / "out"
    assert main(sample_args(world.catalog, out, aoi, water_origin)) == 0
    return out, index(out)


# -- helpers reading the world directly --------------------------------------------------------------------------------
def item_days(world) -> dict[str, date]:
    return {p.stem: date.fromisoformat(json.loads(p.read_text())["properties"]["datetime"][:10])
            for p in (world.root / "items").glob("*.json")}


def patch_clear_share(world, scene_ids, bounds) -> float:
    """Share of the patch's 10 m pixels that are clear sky in at least one scene of the acquisition, from the
    scenes' SCL files (20 m) read here."""
    x0, y0, x1, y1 = bounds
    xs = x0 + 5 + 10 * np.arange(round((x1 - x0) / 10))
    ys = y1 - 5 - 10 * np.arange(round((y1 - y0) / 10))
    gx, gy = np.meshgrid(xs, ys)
    clear = np.zeros(gx.shape, dtype=bool)
    for sid in scene_ids:
        with rasterio.open(world.root / "data" / sid / "SCL.tif") as ds:
            scl = ds.read(1)
            cols, rows = ~ds.transform * (gx, gy)
        rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
        inside = (rows >= 0) & (rows < scl.shape[0]) & (cols >= 0) & (cols < scl.shape[1])
        values = np.zeros(gx.shape, dtype=scl.dtype)
        values[inside] = scl[rows[inside], cols[inside]]
        clear |= np.isin(values, CLEAR_SCL)
    return float(clear.mean())


def planted_seasons(world, record) -> list[tuple[float, float]]:
    """The location's planted seasons: median truth dates over the window's pixels that have a planted cycle."""
    b = record["patch_bounds"]
    cx, cy, half = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, WINDOW * 5
    with rasterio.open(world.truth_phenology) as ds:
        t = ds.read(window=from_bounds(cx - half, cy - half, cx + half, cy + half, ds.transform),
                    boundless=True, fill_value=ds.nodata).astype(float)
        t[t == ds.nodata] = np.nan
    dates = [float(np.nanmedian(t[k])) for k in (0, 2, 4, 6)]  # Greenup, Maturity, Senescence, Dormancy
    bounds = dates + [dates[0] + 365]
    return [(bounds[k], bounds[k + 1]) for k in range(4)]


def in_interval(doy: float, lo: float, hi: float) -> bool:
    return (doy - lo) % 365 <= hi - lo


# -- the seasons and scenes -----------------------------------------------------------------------------------------
def test_every_chosen_scene_lies_in_the_planted_season_and_is_clear_enough(world, sampled):
    out, records = sampled
    days = item_days(world)
    checked = 0
    done = [r for r in records.values() if r["state"] == "done"]
    assert len(done) >= 3, records
    for r in done:
        assert 2 <= len(r["seasons"]) <= 4
        truth = planted_seasons(world, r) if r["phenology"]["source"] == "phenology" else None
        for s in r["seasons"]:
            day = days[s["scene_ids"][0]]
            assert all(days[sid] == day for sid in s["scene_ids"])  # one acquisition
            assert s["doy"] == day.timetuple().tm_yday
            share = 1.0 - patch_clear_share(world, s["scene_ids"], r["patch_bounds"])
            assert share < MAX_CLOUD / 100, (r["id"], s)
            assert share == pytest.approx(s["cloud"], abs=1e-4)
            if truth is not None and np.isfinite(truth[0][0]):
                lo, hi = truth[SEASONS.index(s["season"])]
                assert in_interval(s["doy"], lo, hi), (r["id"], s["season"], s["doy"], lo, hi)
                checked += 1
    assert checked >= 8


def test_no_clear_enough_scene_lies_nearer_the_season_middle(world, sampled):
    """The rule: nothing usable nearer the middle than the chosen scene by more than the tie margin (2 days)."""
    out, records = sampled
    days = item_days(world)
    by_day: dict[date, list[str]] = {}
    for sid, day in days.items():
        by_day.setdefault(day, []).append(sid)
    nearer = 0
    for r, s in ((r, s) for r in records.values() if r["state"] == "done" for s in r["seasons"]):
        start, length = s["start"], (s["end"] - s["start"]) % 365.25
        for day, ids in by_day.items():
            offset = (day.timetuple().tm_yday - start) % 365.25
            if offset >= length or abs(offset - length / 2) >= s["distance"] - 2:
                continue
            assert 1.0 - patch_clear_share(world, ids, r["patch_bounds"]) >= MAX_CLOUD / 100, (r["id"], day)
            nearer += 1
    assert nearer > 0  # some seasons had cloudy scenes nearer their middle than the one chosen


def test_shards_hold_harmonised_bands_and_ndvi_as_the_index_says(world, sampled):
    out, records = sampled
    for r in (r for r in records.values() if r["state"] == "done"):
        shard = read_shard(out / r["shard"])
        n = len(r["seasons"])
        assert shard["images"].shape == (n, 9, PATCH, PATCH) and shard["images"].dtype == np.float16
        assert shard["seasons"].tolist() == [s["season"] for s in r["seasons"]]
        assert shard["dates"].tolist() == [s["date"] for s in r["seasons"]]
        assert shard["scene_ids"].tolist() == [",".join(s["scene_ids"]) for s in r["seasons"]]
        assert shard["channels"].tolist()[-1] == "NDVI"
        assert shard["meta"]["weight"] == r["weight"]
        for k, s in enumerate(r["seasons"]):
            img, clear = shard["images"][k].astype(np.float32), shard["clear"][k]
            assert clear.mean() == pytest.approx(1 - s["cloud"], abs=1e-4)
            with rasterio.open(world.root / "data" / s["scene_ids"][0] / "B04.tif") as ds:  # red, 10 m
                dn = ds.read(1, window=from_bounds(*r["patch_bounds"], ds.transform), boundless=True, fill_value=0)
            offset = 1000 if date.fromisoformat(s["date"]) >= date(2022, 1, 25) else 0
            ok = clear & (dn > 0)
            if len(s["scene_ids"]) == 1 and ok.any():
                expected = (dn[ok].astype(np.float64) - offset) / 10000
                assert np.allclose(img[2][ok], expected, atol=2e-3)
            red, nir = img[2], img[6]
            np.testing.assert_allclose(img[8][clear], ((nir - red) / (nir + red))[clear], atol=5e-3)


def test_water_location_weighs_a_quarter_and_green_ones_one(sampled):
    out, records = sampled
    water = records["x+0y+0"]
    assert water["state"] == "done" and water["weight"] == 0.25
    for r in (r for r in records.values() if r["state"] == "done"):
        shard = read_shard(out / r["shard"])
        means = [float(np.mean(shard["images"][k, 8].astype(np.float32)[shard["clear"][k]]))
                 for k in range(len(r["seasons"]))]
        assert r["weight"] == (0.25 if all(m < 0.1 for m in means) else 1.0), (r["id"], means)
    assert any(r.get("weight") == 1.0 for r in records.values())


# -- the grid and the land mask -------------------------------------------------------------------------------------
def test_grid_points_are_equally_spaced_and_on_land(tmp_path):
    """A land polygon given in UTM (GeoJSON ``crs`` member) and the same land as a raster in another CRS."""
    region = box(7.9, 49.8, 8.5, 50.3)
    land_utm = to_crs(shape({"type": "Polygon", "coordinates": [[(7.9, 49.8), (8.5, 49.8), (8.5, 50.0),
                                                                  (8.1, 50.0), (8.1, 50.3), (7.9, 50.3),
                                                                  (7.9, 49.8)]]}), UTM)
    vector = tmp_path / "land.geojson"
    vector.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::32632"}}, "features": [{"type": "Feature", "properties": {},
                                                                  "geometry": mapping(land_utm)}]}))
    grid = GridSpec(2300.0, (1000.0, -500.0))
    crs = grid_crs(grid.crs)
    points = grid_locations(grid, AOI(region), read_land(vector, crs))
    to_utm = Transformer.from_crs(6933, UTM, always_xy=True)
    xs, ys = np.array([p.x for p in points]), np.array([p.y for p in points])
    np.testing.assert_allclose((xs - 1000.0) / 2300.0, np.array([p.i for p in points]), atol=1e-9)
    np.testing.assert_allclose((ys + 500.0) / 2300.0, np.array([p.j for p in points]), atol=1e-9)
    ux, uy = to_utm.transform(xs, ys)
    assert all(land_utm.contains(Point(a, b)) for a, b in zip(ux, uy))
    # every node on land in the region is there (brute force over the nodes of the region's bounds)
    to_ea = Transformer.from_crs(4326, 6933, always_xy=True)
    ex, ey = to_ea.transform([7.9, 8.5], [49.8, 50.3])
    want = set()
    for i in range(int((ex[0] - 1000) // 2300), int((ex[1] - 1000) // 2300) + 2):
        for j in range(int((ey[0] + 500) // 2300), int((ey[1] + 500) // 2300) + 2):
            x, y = 1000.0 + i * 2300, -500.0 + j * 2300
            lon, lat = Transformer.from_crs(6933, 4326, always_xy=True).transform(x, y)
            if region.contains(Point(lon, lat)) and land_utm.contains(Point(*to_utm.transform(x, y))):
                want.add((i, j))
    assert {(p.i, p.j) for p in points} == want and len(want) > 20
    # the same land as a raster in EPSG:3035 (nonzero = land): the points kept lie on nonzero pixels
    raster = tmp_path / "land.tif"
    land_laea = to_crs(land_utm, 3035, src_epsg=UTM)
    x0, y0, x1, y1 = land_laea.bounds
    transform = from_origin(x0 - 1000, y1 + 1000, 250, 250)
    width, height = int((x1 - x0 + 2000) / 250), int((y1 - y0 + 2000) / 250)
    data = rasterize([land_laea], out_shape=(height, width), transform=transform, dtype="uint8")
    with rasterio.open(raster, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs="EPSG:3035", transform=transform) as ds:
        ds.write(data, 1)
    on_raster = grid_locations(grid, AOI(region), read_land(raster, crs))
    to_laea = Transformer.from_crs(6933, 3035, always_xy=True)
    for p in on_raster:
        row, col = rasterio.transform.rowcol(transform, *to_laea.transform(p.x, p.y))
        assert data[row, col] == 1
    assert len({p.id for p in on_raster} ^ {p.id for p in points}) <= 0.1 * len(points)  # edge pixels differ


def test_empty_land_masks_are_one_line_errors(tmp_path, world):
    aoi = write_aoi(tmp_path / "aoi.geojson", (497050, 5541850, 498950, 5542950))
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    zeros = tmp_path / "zeros.tif"
    with rasterio.open(zeros, "w", driver="GTiff", width=50, height=50, count=1, dtype="uint8", crs=f"EPSG:{UTM}",
                       transform=from_origin(496000, 5544000, 100, 100)) as ds:
        ds.write(np.zeros((1, 50, 50), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for land, command, fragment in (
            (empty, [sys.executable, "-m", "train.sample"], "is empty: it holds no polygon"),
            (zeros, [sys.executable, "-m", "treemap", "train", "sample"], "no grid point (spacing 0.6 km) lies")):
        out = tmp_path / f"out-{land.stem}"
        proc = subprocess.run([*command, "--land", str(land), "--aoi", str(aoi), "--catalog", str(world.catalog),
                               "--out", str(out), "--spacing-km", str(SPACING_KM)], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and ": error: " in lines[0] and fragment in lines[0], proc.stderr
        assert proc.stdout == "" and not out.exists()
    # an AOI that falls between the grid nodes (200 m around the middle of a grid cell)
    middle = Transformer.from_crs(6933, 4326, always_xy=True).transform(865000 + 300, 5617200 + 300)
    between = box(middle[0] - 0.001, middle[1] - 0.0005, middle[0] + 0.001, middle[1] + 0.0005)
    with pytest.raises(SampleError, match="no grid point"):
        grid_locations(GridSpec(600.0), AOI(between))


# -- missing seasons, dropped locations -----------------------------------------------------------------------------
def test_an_empty_season_is_listed_and_the_others_written(world, sampled, water_origin, world_items, tmp_path):
    """Acquisitions from day 245 to 330 removed: the autumn season of tree locations has no scene."""
    _, records = sampled
    gap = [f for f in world_items(world)
           if not 245 <= date.fromisoformat(f["properties"]["datetime"][:10]).timetuple().tm_yday <= 330]
    catalog = tmp_path / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": gap}))
    kept_doys = sorted({date.fromisoformat(f["properties"]["datetime"][:10]).timetuple().tm_yday for f in gap})
    trees = [r for r in records.values() if r["state"] == "done" and r["weight"] == 1.0][:2]
    aoi = lonlat_aoi(tmp_path / "aoi.geojson", trees)
    out = tmp_path / "out"
    assert main(sample_args(catalog, out, aoi, water_origin)) == 0
    got = index(out)
    assert set(got) == {r["id"] for r in trees}
    missing = [(r, m) for r in got.values() for m in r["missing"]]
    assert missing, got
    for r, m in missing:
        length = (m["end"] - m["start"]) % 365.25
        inside = [d for d in kept_doys if (d - m["start"]) % 365.25 < length]
        if m["reason"] == "no acquisition in the season":
            assert not inside, (r["id"], m, inside)
        else:
            assert inside and "none with less than 20 %" in m["reason"]
    for r in got.values():
        names = [s["season"] for s in r["seasons"]] + [m["season"] for m in r["missing"]]
        assert sorted(names) == sorted(SEASONS)
        if len(r["seasons"]) >= 2:
            assert r["state"] == "done"
            assert read_shard(out / r["shard"])["seasons"].tolist() == [s["season"] for s in r["seasons"]]
        else:
            assert r["state"] == "dropped" and not (out / "shards" / f"{r['id']}.npz").exists()
    # no scene clear enough anywhere (--max-cloud 0): dropped, listed with the reason, nothing written, exit 0
    out0 = tmp_path / "out0"
    assert main(sample_args(catalog, out0, lonlat_aoi(tmp_path / "one.geojson", trees[:1]), water_origin,
                            "--max-cloud", "0")) == 0
    (only,) = index(out0).values()
    assert only["state"] == "dropped" and only["reason"] == "0 season(s) with a scene; 2 needed"
    assert len(only["missing"]) == 4 and not list((out0 / "shards").iterdir())


# -- kill and rerun ---------------------------------------------------------------------------------------------------
def test_a_killed_run_resumes_to_the_uninterrupted_result(world, sampled, water_origin, tmp_path):
    ref_out, records = sampled
    pair = [r for r in records.values() if r["state"] == "done" and r["id"] != "x+0y+0"][:2]
    aoi = lonlat_aoi(tmp_path / "aoi.geojson", pair)
    out = tmp_path / "out"
    args = sample_args(world.catalog, out, aoi, water_origin)
    second = pair[1]["id"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TREEMAP_TEST_KILL_AT": f"written:{second}.npz"}
    proc = subprocess.run([sys.executable, "-m", "train.sample", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed with the second shard written but not yet renamed
    journal = index(out)
    assert list(journal) == [pair[0]["id"]]
    assert list((out / "shards").glob(f".{second}.npz.tmp-*")) and not (out / "shards" / f"{second}.npz").exists()
    # make it worse: the first shard cut short, a journal line cut mid-write
    first = out / "shards" / f"{pair[0]['id']}.npz"
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with open(out / "index.jsonl", "a") as fh:
        fh.write('{"id": "' + second + '", "state": "do')
    assert main(args) == 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.name == ".treemap-work"]
    after = index(out)
    assert list(after) == [r["id"] for r in pair]
    for r in pair:
        assert after[r["id"]] == r  # the same record as the uninterrupted run
        mine, ref = read_shard(out / r["shard"]), read_shard(ref_out / r["shard"])
        for key in ("images", "clear", "seasons", "scene_ids", "dates", "cloud"):
            np.testing.assert_array_equal(mine[key], ref[key])
    assert len((out / "index.jsonl").read_text().splitlines()) == 2


def test_a_location_with_unreadable_assets_fails_alone(world, sampled, water_origin, world_items, tmp_path,
                                                        monkeypatch):
    """Every red band of the eastern tile's scenes is missing: the location only that tile covers is recorded as
    failed (its unreadable assets named) and retried by the next run; a western location is written; exit 3."""
    monkeypatch.setenv("TREEMAP_HTTP_RETRIES", "1")
    monkeypatch.setenv("TREEMAP_HTTP_BACKOFF", "0")
    _, records = sampled
    east_name = SPEC.tiles[1]
    items = world_items(world)
    for f in items:
        if east_name in f["id"]:
            f["assets"]["red"]["href"] = str(tmp_path / "missing" / f"{f['id']}-B04.tif")
    catalog = tmp_path / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    done = sorted((r for r in records.values() if r["state"] == "done"), key=lambda r: r["x"])
    west, east = done[0], done[-1]
    with rasterio.open(world.root / "data" / next(f["id"] for f in items if east_name in f["id"]) / "SCL.tif") as ds:
        east_x0 = ds.bounds.left
    assert west["patch_bounds"][2] < east_x0 < east["patch_bounds"][0]  # each covered by one tile only
    out = tmp_path / "out"
    args = sample_args(catalog, out, lonlat_aoi(tmp_path / "aoi.geojson", [west, east]), water_origin)
    assert main(args) == 3
    got = index(out)
    assert got[west["id"]] == west
    failed = got[east["id"]]
    assert failed["state"] == "failed" and "shard" not in failed
    assert failed["unreadable"] and all(u[1] == "B04" for u in failed["unreadable"])
    assert "asset(s) unreadable (first: " in failed["reason"]
    assert main(args) == 3  # retried (and failing again), the written location skipped
    assert index(out)[west["id"]] == west
