import json

import pytest

from treemap.aoi import aoi_from_geojson, read_aoi
from treemap.errors import AOIError

SQUARE = {"type": "Polygon", "coordinates": [[[9.0, 50.0], [9.01, 50.0], [9.01, 50.01], [9.0, 50.01], [9.0, 50.0]]]}


@pytest.mark.parametrize("doc", [
    SQUARE,
    {"type": "Feature", "properties": {}, "geometry": SQUARE},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": SQUARE}]},
])
def test_accepts_geometry_feature_and_collection(doc):
    aoi = aoi_from_geojson(doc)
    assert aoi.bounds == pytest.approx((9.0, 50.0, 9.01, 50.01))


def test_feature_collection_parts_are_unioned():
    other = {"type": "Polygon", "coordinates": [[[9.02, 50.0], [9.03, 50.0], [9.03, 50.01], [9.02, 50.0]]]}
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": g} for g in (SQUARE, other)]}
    aoi = aoi_from_geojson(doc)
    assert aoi.geometry.geom_type == "MultiPolygon"
    assert aoi.bounds[2] == pytest.approx(9.03)


@pytest.mark.parametrize("doc, message", [
    ({"type": "Point", "coordinates": [9, 50]}, "not a Polygon"),
    ({"type": "LineString", "coordinates": [[9, 50], [9.1, 50]]}, "not a Polygon"),
    ({"type": "FeatureCollection", "features": []}, "no features"),
    ({"type": "Feature", "geometry": None}, "no geometry"),
    ({"type": "Polygon", "coordinates": [[[500000, 5540000], [501000, 5540000], [501000, 5541000],
                                          [500000, 5540000]]]}, "not longitude/latitude"),
    ({"type": "Polygon", "coordinates": [[[9, 50], [9.2, 50.1], [9.2, 50], [9, 50.2], [9, 50]]]}, "not valid"),
    ([1, 2, 3], "not a GeoJSON object"),
    ({"type": "Polygon", "coordinates": "oops"}, "invalid Polygon"),
])
def test_rejects_bad_geometries(doc, message):
    with pytest.raises(AOIError, match=message):
        aoi_from_geojson(doc)


def test_read_errors(tmp_path):
    with pytest.raises(AOIError, match="not found"):
        read_aoi(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(AOIError, match="invalid JSON"):
        read_aoi(bad)
    with pytest.raises(AOIError, match="folder"):
        read_aoi(tmp_path)
    good = tmp_path / "good.geojson"
    good.write_text(json.dumps(SQUARE))
    assert read_aoi(good).source == str(good)
