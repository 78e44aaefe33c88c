"""An AOI across the UTM zone 32/33 boundary (12 deg E): scenes from both zones, one product on one grid."""

import json
from datetime import date

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from shapely.geometry import box

from treemap.demo import WorldSpec, build_world
from treemap.grid import to_crs, utm_epsg
from treemap.masking import MaskSpec
from treemap.outputs import NODATA_U8
from treemap.run import PredictRequest, predict


@pytest.fixture(scope="module")
def two_zone_catalog(tmp_path_factory):
    """Two small demo worlds, one on each side of 12 deg E, in their own UTM zones, merged into one item file."""
    root = tmp_path_factory.mktemp("zones")
    worlds = [
        build_world(root / "z32", WorldSpec(seed=11, epsg=32632, x_min=713000.0, y_max=5544000.0, width_px=200,
                                            height_px=120, overlap_px=40, cadence_days=10)),
        build_world(root / "z33", WorldSpec(seed=12, epsg=32633, x_min=285000.0, y_max=5544000.0, width_px=200,
                                            height_px=120, overlap_px=40, cadence_days=10)),
    ]
    features = []
    for world in worlds:
        for item_path in sorted((world.root / "items").rglob("*.json")):
            item = json.loads(item_path.read_text())
            for asset in item["assets"].values():
                asset["href"] = str((item_path.parent / asset["href"]).resolve())
            features.append(item)
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_aoi_across_two_zones_maps_into_one_cog(two_zone_catalog, tmp_path):
    aoi_geom = box(11.988, 50.0005, 12.012, 50.008)
    assert utm_epsg(11.988, 50.004) == 32632 and utm_epsg(12.012, 50.004) == 32633
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps(aoi_geom.__geo_interface__))
    result = predict(PredictRequest(aoi=aoi, out=tmp_path / "out", catalog=str(two_zone_catalog), model="demo",
                                    species="demo", start=date(2022, 1, 1), end=date(2022, 12, 31),
                                    tile_size=128, mask=MaskSpec(kind="none")))  # every pixel mapped
    assert result.epsg == 32633  # the zone of the AOI's centroid
    with rasterio.open(result.products["species_probability"]) as ds:
        assert ds.crs.to_epsg() == 32633
        band = ds.read(1)
        local = to_crs(aoi_geom, 32633)
        inside = geometry_mask([local], out_shape=ds.shape, transform=ds.transform, invert=True)
        cols = np.arange(ds.width)
        xs = ds.transform.c + (cols + 0.5) * ds.transform.a
        boundary_x = to_crs(box(12.0, 50.0, 12.0000001, 50.0000001), 32633).bounds[0]
    west = inside & (xs[None, :] < boundary_x - 50)
    east = inside & (xs[None, :] > boundary_x + 50)
    assert west.sum() > 1000 and east.sum() > 1000
    # both sides are mapped: the west from zone-32 scenes reprojected onto the zone-33 grid, the east natively
    assert (band[west] != NODATA_U8).mean() > 0.95
    assert (band[east] != NODATA_U8).mean() > 0.95
    assert (band[~inside] == NODATA_U8).all()
