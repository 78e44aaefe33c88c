"""Local catalogs read with pystac: footprint filtering (not only bboxes), nested static catalogs, broken input."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pytest
from shapely.geometry import Polygon, box, shape

from treemap.errors import CatalogError
from treemap.stac import Query, open_catalog

DATA = Path(__file__).resolve().parents[1] / "data" / "stac-items"
ES = DATA / "earth-search_sentinel-2-l2a.json"
SWATH_EDGE = "S2B_24MVV_20250731_0_L2A"  # a real Earth Search item at the edge of the orbit swath
YEAR = (date(2025, 1, 1), date(2025, 12, 31))


def _es_items() -> dict[str, dict]:
    return {f["id"]: f for f in json.loads(ES.read_text())["features"]}


def test_aoi_in_the_nodata_corner_of_a_swath_edge_item_gets_no_scene():
    """24MVV's footprint leaves out the south-west of its MGRS square (the orbit swath ends diagonally across it).
    An AOI there lies inside the item's bbox but outside its footprint: no scene, as from a STAC API."""
    item = _es_items()[SWATH_EDGE]
    footprint = shape(item["geometry"])
    aoi = box(-39.85, -4.92, -39.75, -4.85)
    assert box(*item["bbox"]).contains(aoi) and not footprint.intersects(aoi), "premise: bbox yes, footprint no"
    catalog = open_catalog(str(ES))
    assert catalog.search(Query(aoi.bounds, *YEAR, geometry=aoi)) == []
    assert catalog.search(Query(aoi.bounds, *YEAR)) == []  # the bbox alone is tested against the footprint too
    # a few kilometres north, inside the footprint: the scene
    inside = box(-39.85, -4.70, -39.75, -4.63)
    assert footprint.contains(inside)
    assert SWATH_EDGE in [s.id for s in catalog.search(Query(inside.bounds, *YEAR, geometry=inside))]


def test_aoi_geometry_decides_when_only_its_bbox_meets_the_footprint():
    """A triangle in the nodata corner whose bounding box reaches into the footprint: found by its bbox, not by
    its geometry."""
    footprint = shape(_es_items()[SWATH_EDGE]["geometry"])
    triangle = Polygon([(-39.85, -4.93), (-39.0, -4.93), (-39.85, -4.80)])
    assert box(*triangle.bounds).intersects(footprint) and not triangle.intersects(footprint), "premise"
    catalog = open_catalog(str(ES))
    assert SWATH_EDGE in [s.id for s in catalog.search(Query(triangle.bounds, *YEAR))]
    assert catalog.search(Query(triangle.bounds, *YEAR, geometry=triangle)) == []


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _catalog(kind: str, ident: str, links: list[dict]) -> dict:
    doc = {"type": kind, "id": ident, "stac_version": "1.0.0", "description": ident, "links": links}
    if kind == "Collection":
        doc.update(license="proprietary", extent={"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                  "temporal": {"interval": [[None, None]]}})
    return doc


def test_nested_static_catalog_with_relative_and_absolute_links(tmp_path, caplog):
    """catalog -> collection (relative link) -> items (relative and absolute ``file://`` links); relative asset
    hrefs resolve against each item's own file; a link cycle ends; a broken item is skipped with a warning."""
    items = list(_es_items().values())[:4]
    root = tmp_path / "stac"
    item_links = []
    for i, item in enumerate(items[:3]):
        item = dict(item, assets={k: dict(v, href=f"./{k}.tif") if k == "red" else v
                                  for k, v in item["assets"].items()})
        path = root / "s2" / item["id"] / f"{item['id']}.json"
        _write(path, item)
        href = path.as_uri() if i == 0 else f"./{item['id']}/{item['id']}.json"
        item_links.append({"rel": "item", "href": href})
    _write(root / "s2" / "broken" / "broken.json", {"type": "Feature", "id": "broken-item", "stac_version": "1.0.0"})
    item_links.append({"rel": "item", "href": "./broken/broken.json"})
    _write(root / "s2" / "collection.json",
           _catalog("Collection", "s2", item_links + [{"rel": "child", "href": "../catalog.json"}]))
    _write(root / "catalog.json", _catalog("Catalog", "root", [{"rel": "child", "href": "./s2/collection.json"}]))

    caplog.set_level(logging.WARNING, logger="treemap")
    scenes = open_catalog(str(root)).search(Query((-180, -90, 180, 90), *YEAR))
    assert sorted(s.id for s in scenes) == sorted(i["id"] for i in items[:3])
    for scene in scenes:
        assert scene.bands["B04"] == str(root / "s2" / scene.id / "red.tif")
        assert scene.bands["B02"].startswith("https://")
    assert [r.message for r in caplog.records if "skipping item" in r.message] == [
        next(r.message for r in caplog.records if "broken-item" in r.message)]


@pytest.mark.parametrize("layout, message", [
    ("missing child", "catalog file not found: {root}/gone/collection.json"),
    ("child not JSON", "{root}/bad/collection.json: invalid JSON"),
    ("child not STAC", "{root}/odd/collection.json: not a valid STAC catalog or collection"),
])
def test_broken_static_catalogs_are_one_line(tmp_path, layout, message):
    root = tmp_path / "stac"
    child = {"missing child": "gone", "child not JSON": "bad", "child not STAC": "odd"}[layout]
    _write(root / "catalog.json", _catalog("Catalog", "root", [{"rel": "child", "href": f"./{child}/collection.json"}]))
    if layout == "child not JSON":
        (root / "bad").mkdir()
        (root / "bad" / "collection.json").write_text("{")
    elif layout == "child not STAC":
        _write(root / "odd" / "collection.json", {"type": "Collection", "id": "odd"})
    with pytest.raises(CatalogError) as err:
        open_catalog(str(root)).search(Query((0, 0, 1, 1), *YEAR))
    text = str(err.value)
    assert "\n" not in text and text.startswith(message.format(root=root))


def test_item_file_of_one_feature_and_not_stac_files(tmp_path):
    one = tmp_path / "one.json"
    _write(one, _es_items()[SWATH_EDGE])
    assert [s.id for s in open_catalog(str(one)).search(Query((-180, -90, 180, 90), *YEAR))] == [SWATH_EDGE]
    other = tmp_path / "other.json"
    _write(other, {"type": "Topology"})
    with pytest.raises(CatalogError, match=r"not a STAC catalog, collection or item file \(type='Topology'\)"):
        open_catalog(str(other)).search(Query((0, 0, 1, 1), *YEAR))
    empty = tmp_path / "empty.json"
    _write(empty, {"type": "FeatureCollection", "features": []})
    with pytest.raises(CatalogError, match="no Sentinel-2 L2A items"):
        open_catalog(str(empty)).search(Query((0, 0, 1, 1), *YEAR))
