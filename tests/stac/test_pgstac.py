"""End to end against a real STAC API: stac-fastapi-pgstac on PostgreSQL/PostGIS, COGs over nginx (range requests).

The small demo world's 146 items are loaded through pypgstac with hrefs on nginx; `treemap search` and
`treemap predict` run as a user runs them (subprocesses).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime

import numpy as np
import pytest
import rasterio
from shapely import unary_union
from shapely.geometry import Polygon, box, shape

from treemap.grid import to_crs
from treemap.stac import Query
from treemap.stac.search import ApiCatalog


PREDICT_WINDOW = ("2022-05-01", "2022-07-31")


def broken_url(server) -> str:
    return f"{server.url}/collections/{server.broken_collection}"


def treemap(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "treemap", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def aoi(stac_server, tmp_path_factory):
    """A 600 m x 500 m AOI across the overlap of the world's two tiles."""
    spec = stac_server.world.spec
    x0, y1 = spec.x_min + 700, spec.y_max - 100
    lonlat = to_crs(box(x0, y1 - 500, x0 + 600, y1), 4326, src_epsg=spec.epsg)
    path = tmp_path_factory.mktemp("aoi") / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": lonlat.__geo_interface__}))
    return path, lonlat


def _expected(items: list[dict], geometry, start: str, end: str, max_cloud: float = 100.0) -> list[str]:
    """The ids the server holds for a query, computed from the loaded items (footprint, datetime, cloud)."""
    lo = datetime.fromisoformat(start + "T00:00:00+00:00")
    hi = datetime.fromisoformat(end + "T23:59:59.999999+00:00")
    out = []
    for item in items:
        p = item["properties"]
        when = datetime.fromisoformat(p["datetime"].replace("Z", "+00:00"))
        if lo <= when <= hi and p["eo:cloud_cover"] <= max_cloud and shape(item["geometry"]).intersects(geometry):
            out.append(item["id"])
    return out


@pytest.mark.parametrize("start, end, max_cloud", [
    ("2022-01-01", "2022-12-31", 100.0),  # every item: 146, more than one page of 100
    ("2022-03-01", "2022-06-30", 100.0),
    ("2022-01-01", "2022-12-31", 20.0),
])
def test_search_json_returns_exactly_the_servers_items(stac_server, aoi, start, end, max_cloud):
    proc = treemap("search", "--aoi", str(aoi[0]), "--catalog", stac_server.url, "--start", start, "--end", end,
                   "--max-cloud", str(max_cloud), "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = _expected(stac_server.items, aoi[1], start, end, max_cloud)
    assert sorted(r["id"] for r in records) == sorted(expected)
    assert len(records) == len({r["id"] for r in records}), "no item twice across pages"
    if max_cloud == 100.0 and start.endswith("01-01"):
        assert len(records) == len(stac_server.items) > 100
    by_id = {i["id"]: i for i in stac_server.items}
    for r in records:
        item = by_id[r["id"]]
        assert set(r) >= {"id", "datetime", "cloud_cover", "mgrs_tile", "epsg", "bands", "scale", "offset"}
        assert r["cloud_cover"] == item["properties"]["eo:cloud_cover"] <= max_cloud
        assert r["epsg"] == 32632 and r["mgrs_tile"] in ("32UMA", "32UNA")
        assert r["bands"]["B04"] == item["assets"]["red"]["href"]
        assert r["bands"]["SCL"].startswith(stac_server.files.url + "/data/")
        baseline = item["properties"]["s2:processing_baseline"]
        assert (r["scale"], r["offset"]) == (0.0001, -0.1 if baseline >= "04.00" else 0.0)


def test_paging_with_small_pages(stac_server, aoi):
    """Page size 7: 21 requests for 146 items, and still every item exactly once."""
    scenes = ApiCatalog(stac_server.url, stac_server.collection, page_size=7).search(
        Query(aoi[1].bounds, date(2022, 1, 1), date(2022, 12, 31)))
    assert sorted(s.id for s in scenes) == sorted(i["id"] for i in stac_server.items)
    assert [s.datetime for s in scenes] == sorted(s.datetime for s in scenes)


def test_aoi_geometry_is_sent_as_intersects(stac_server, aoi, tmp_path):
    """A query with the AOI geometry searches the API with ``intersects``: the same items as the footprint rule,
    for a triangle and for the bbox; none for a triangle outside the world whose bbox still overlaps it."""
    catalog = ApiCatalog(stac_server.url, stac_server.collection)
    x0, y0, x1, y1 = aoi[1].bounds
    triangle = Polygon([(x0, y0), (x1, y0), (x0, y1)])
    got = catalog.search(Query(triangle.bounds, date(2022, 3, 1), date(2022, 6, 30), geometry=triangle))
    assert sorted(s.id for s in got) == sorted(_expected(stac_server.items, triangle, "2022-03-01", "2022-06-30"))
    assert got
    world = unary_union([shape(i["geometry"]) for i in stac_server.items])
    wx0, wy0, wx1, wy1 = world.bounds
    # a triangle north-east of the world, its long side passing beyond the world's north-east corner: its bbox
    # covers the world, the triangle itself misses it
    outside = Polygon([(wx1 + 0.5, wy0), (wx1 + 0.5, wy1 + 0.1), (wx0, wy1 + 0.1)])
    assert box(*outside.bounds).intersects(world) and not outside.intersects(world), "premise"
    assert catalog.search(Query(outside.bounds, date(2022, 1, 1), date(2022, 12, 31))) != []
    assert catalog.search(Query(outside.bounds, date(2022, 1, 1), date(2022, 12, 31), geometry=outside)) == []


def test_search_table_lists_scenes(stac_server, aoi):
    proc = treemap("search", "--aoi", str(aoi[0]), "--catalog", stac_server.url, "--year", "2022", "--max-cloud", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["datetime", "(UTC)"]
    assert len(lines) - 1 == len(_expected(stac_server.items, aoi[1], "2022-01-01", "2022-12-31", 5.0))


def test_collection_url_form(stac_server, aoi):
    proc = treemap("search", "--aoi", str(aoi[0]), "--catalog", broken_url(stac_server),
                   "--year", "2022", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(line)["id"] for line in proc.stdout.splitlines()) == \
        sorted(i["id"] for i in stac_server.broken_items)


def test_missing_collection_is_one_clear_line(stac_server, aoi):
    proc = treemap("search", "--aoi", str(aoi[0]), "--catalog", f"{stac_server.url}/collections/no-such-thing",
                   "--year", "2022")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"treemap: error: collection 'no-such-thing' not found in STAC API {stac_server.url} "
        f"(it has: {stac_server.broken_collection}, {stac_server.collection})"]


def test_bbox_without_scenes_is_one_clear_line(stac_server, tmp_path):
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "Polygon", "coordinates": [[[10, 0], [10.1, 0], [10.1, 0.1], [10, 0.1],
                                                                    [10, 0]]]}))
    for command in (["search"], ["predict", "--model", "demo", "--species", "demo", "--out", str(tmp_path / "o")]):
        proc = treemap(*command, "--aoi", str(far), "--catalog", stac_server.url, "--year", "2022")
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("treemap: error: no Sentinel-2 L2A scenes"), proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def predicted_over_api(stac_server, aoi, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict-api")
    proc = treemap("predict", "--aoi", str(aoi[0]), "--catalog", stac_server.url, "--model", "demo", "--species",
                   "demo", "--start", PREDICT_WINDOW[0], "--end", PREDICT_WINDOW[1], "--tile-size", "100",
                   "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_predict_over_pgstac_equals_predict_over_an_item_file(stac_server, aoi, predicted_over_api, tmp_path):
    """The same items, once from the STAC API and once from a local item file (same nginx hrefs): same pixels."""
    out_api, proc = predicted_over_api
    assert "unreadable" not in proc.stderr
    item_file = tmp_path / "items.json"
    item_file.write_text(json.dumps({"type": "FeatureCollection", "features": stac_server.items}))
    out_file = tmp_path / "o"
    proc = treemap("predict", "--aoi", str(aoi[0]), "--catalog", str(item_file), "--model", "demo", "--species",
                   "demo", "--start", PREDICT_WINDOW[0], "--end", PREDICT_WINDOW[1], "--tile-size", "100",
                   "--out", str(out_file), timeout=600)
    assert proc.returncode == 0, proc.stderr
    products = sorted(p.name for p in out_api.glob("*.tif"))
    assert products and products == sorted(p.name for p in out_file.glob("*.tif"))
    for name in products:
        with rasterio.open(out_api / name) as a, rasterio.open(out_file / name) as b:
            assert (a.crs, a.transform, a.count) == (b.crs, b.transform, b.count)
            np.testing.assert_array_equal(a.read(), b.read())
    assert stac_server.files.requests_for("/data/") > 0, "pixels came over HTTP from nginx"


def test_unreadable_asset_is_skipped_with_a_warning(stac_server, aoi, tmp_path):
    """One band of one scene answers 404: predict completes and names it in a warning."""
    scene_id, band = stac_server.broken_asset
    proc = treemap("predict", "--aoi", str(aoi[0]), "--catalog", broken_url(stac_server),
                   "--model", "demo", "--species", "demo", "--year", "2022", "--tile-size", "100",
                   "--out", str(tmp_path / "o"), "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [(u["scene"], u["band"]) for u in summary["unreadable_assets"]] == [(scene_id, band)]
    with rasterio.open(summary["products"]["species_probability"]) as ds:
        assert ds.tags()["TREEMAP_UNREADABLE_ASSETS"] == "1"
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line and "unreadable" in line]
    assert warnings, proc.stderr
    assert all(scene_id in line and f"band {band}" in line and "B04-missing.tif" in line for line in warnings)
    assert "404" in warnings[0]
    assert stac_server.files.requests_for("B04-missing.tif") > 0
    assert list((tmp_path / "o").glob("*.tif"))
