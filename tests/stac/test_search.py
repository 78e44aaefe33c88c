"""The local search filter over real item files, and catalog resolution errors."""

import json
from datetime import date
from pathlib import Path

import pytest
from shapely.geometry import box, shape

from treemap.errors import CatalogError
from treemap.stac import Query, open_catalog
from treemap.stac.scene import normalise_item

DATA = Path(__file__).resolve().parents[1] / "data" / "stac-items"
PC = DATA / "planetarycomputer_sentinel-2-l2a.json"
ES = DATA / "earth-search_sentinel-2-l2a.json"


def _reference(path: Path, query: Query) -> set[str]:
    """A straightforward re-statement of the filter over the raw JSON: the item footprint (geometry) meets the
    query's area (its geometry, else its bbox), as in STAC API item search."""
    area = query.geometry if query.geometry is not None else box(*query.bbox)
    out = set()
    for f in json.loads(path.read_text())["features"]:
        d = date.fromisoformat(f["properties"]["datetime"][:10])
        cc = f["properties"]["eo:cloud_cover"]
        if shape(f["geometry"]).intersects(area) and query.start <= d <= query.end and cc <= query.max_cloud:
            out.add(f["id"])
    return out


@pytest.mark.parametrize("bbox, max_cloud", [
    ((173.6, 57.6, 173.7, 57.7), 100.0),
    ((173.6, 57.6, 173.7, 57.7), 30.0),
    ((160.0, 50.0, 180.0, 70.0), 100.0),
    ((0.0, 0.0, 1.0, 1.0), 100.0),
    ((170.0, 57.0, 171.0, 59.5), 100.0),
])
def test_item_file_filter_matches_reference(bbox, max_cloud):
    query = Query(bbox=bbox, start=date(2018, 12, 1), end=date(2019, 1, 31), max_cloud=max_cloud)
    got = {s.id for s in open_catalog(str(PC)).search(query)}
    assert got == _reference(PC, query)
    # the same area as a geometry: the same answer
    assert {s.id for s in open_catalog(str(PC)).search(Query(bbox, query.start, query.end, max_cloud,
                                                              geometry=box(*bbox)))} == got


def test_item_file_filter_uses_footprints_not_bboxes():
    """Over the Planetary Computer file, some queries meet an item's bbox but not its footprint."""
    items = json.loads(PC.read_text())["features"]
    probes = 0
    for f in items:
        outside = box(*f["bbox"]).difference(shape(f["geometry"]))
        if outside.area < 0.01:
            continue
        spot = outside.representative_point().buffer(0.005, quad_segs=2)
        if spot.intersects(shape(f["geometry"])):
            continue
        probes += 1
        query = Query(spot.bounds, date(2018, 12, 1), date(2019, 1, 31), geometry=spot)
        got = {s.id for s in open_catalog(str(PC)).search(query)}
        assert f["id"] not in got
        assert got == _reference(PC, query)
    assert probes >= 10


def test_date_window_excludes_other_days():
    catalog = open_catalog(str(PC))
    assert catalog.search(Query((160, 50, 180, 70), date(2019, 1, 2), date(2019, 1, 31))) == []
    assert len(catalog.search(Query((160, 50, 180, 70), date(2019, 1, 1), date(2019, 1, 1)))) > 0


def test_results_are_time_ordered_and_normalised():
    scenes = open_catalog(str(ES)).search(Query((-180, -90, 180, 90), date(2020, 1, 1), date(2026, 1, 1)))
    assert scenes
    assert [s.datetime for s in scenes] == sorted(s.datetime for s in scenes)
    for s in scenes:
        assert set(s.bands) == {"B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL"}
        assert all(href.endswith(".tif") for href in s.bands.values())
        assert (s.scale, s.offset) == (0.0001, -0.1)  # baseline 05.x carries the +1000 DN offset


def test_static_catalog_with_relative_links(tmp_path):
    features = json.loads(ES.read_text())["features"][:3]
    (tmp_path / "items").mkdir()
    links = []
    for f in features:
        f = dict(f, assets={k: dict(v, href=f"../data/{k}.tif") if k == "red" else v for k, v in f["assets"].items()})
        (tmp_path / "items" / f"{f['id']}.json").write_text(json.dumps(f))
        links.append({"rel": "item", "href": f"./items/{f['id']}.json"})
    (tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "c", "stac_version": "1.0.0",
                                                         "description": "t", "links": links}))
    scenes = open_catalog(str(tmp_path)).search(Query((-180, -90, 180, 90), date(2020, 1, 1), date(2026, 1, 1)))
    assert len(scenes) == 3
    assert scenes[0].bands["B04"] == str(tmp_path / "data" / "red.tif")


@pytest.mark.parametrize("spec, message", [
    ("nowhere-catalog", "unknown catalog"),
    ("/no/such/catalog.json", "unknown catalog"),
])
def test_unknown_catalogs(spec, message):
    with pytest.raises(CatalogError, match=message):
        open_catalog(spec)


def test_invalid_catalog_json(tmp_path):
    bad = tmp_path / "items.json"
    bad.write_text("{")
    with pytest.raises(CatalogError, match="invalid JSON"):
        open_catalog(str(bad)).search(Query((0, 0, 1, 1), date(2020, 1, 1), date(2020, 2, 1)))


def test_offset_follows_baseline_not_contradicting_metadata():
    item = json.loads(ES.read_text())["features"][0]
    item["properties"]["s2:processing_baseline"] = "03.01"
    item["properties"]["datetime"] = "2021-06-01T10:00:00Z"
    scene = normalise_item(item)
    assert scene.offset == 0.0  # metadata says -0.1 but a 03.01 product has no offset
    item["properties"].pop("s2:processing_baseline")
    item["properties"]["datetime"] = "2022-02-01T10:00:00Z"
    assert normalise_item(item).offset == -0.1  # no baseline: decided by date
