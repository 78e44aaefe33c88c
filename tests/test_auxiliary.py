"""Auxiliary layers (treemap/auxiliary.py) on real rasters in three CRSs: values at a tile's pixels and at single
points are the same numbers, bilinear interpolation and Horn's slope/aspect are right, and bad layer sets are one
line."""

import logging

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import box

from treemap.aoi import AOI
from treemap.auxiliary import (LAYER_VARIABLES, AuxReader, Layer, LayerSet, check_layers, horn, read_layer_set,
                               units_hint)
from treemap.errors import AuxError, AuxNotFoundError
from treemap.grid import plan_tiles

EPSG = 32632
LON0, LAT0 = 8.0, 50.0  # upper-left corner of the geographic layers


def write(path, data, transform, crs, nodata=None):
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data, 1)
    return path


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """A hilly 1 arc-second DEM and a 30 arc-second bio01 in EPSG:4326, a soil layer on the 250 m EPSG:3035 grid."""
    folder = tmp_path_factory.mktemp("aux")
    step = 1 / 3600
    rows, cols = np.mgrid[0:600, 0:900]
    lon, lat = LON0 + (cols + 0.5) * step, LAT0 - (rows + 0.5) * step
    dem = (300 + 80 * np.sin(lon * 400) * np.cos(lat * 300) + 2000 * (lon - LON0)).astype(np.float32)
    write(folder / "dem.tif", dem, from_origin(LON0, LAT0, step, step), "EPSG:4326", nodata=-9999)
    coarse = 1 / 120
    r2, c2 = np.mgrid[0:24, 0:16]
    bio = (95 + 10 * r2 - 3 * c2).astype(np.int16)
    bio[0, 0] = -32768
    write(folder / "bio01.tif", bio, from_origin(LON0, LAT0, coarse, coarse), "EPSG:4326", nodata=-32768)
    x, y = Transformer.from_crs(4326, 3035, always_xy=True).transform(LON0 + 0.05, LAT0 - 0.05)
    soil = (200 + np.arange(40 * 40).reshape(40, 40) % 97).astype(np.float32)
    write(folder / "soil.tif", soil, from_origin(round(x, -3) - 5000, round(y, -3) + 5000, 250, 250), "EPSG:3035")
    return LayerSet((Layer("elevation", str(folder / "dem.tif")), Layer("bio01", str(folder / "bio01.tif")),
                     Layer("soil_moisture_0_5cm", str(folder / "soil.tif"), scale=0.5, offset=1.0)))


@pytest.fixture(scope="module")
def tile():
    aoi = AOI(geometry=box(LON0 + 0.03, LAT0 - 0.1, LON0 + 0.07, LAT0 - 0.06), source="test")
    plan = plan_tiles(aoi, tile_size=128, epsg=EPSG)
    return plan.tiles[0]


def test_a_tiles_values_equal_those_of_points_in_its_pixels(layers, tile):
    with AuxReader(layers) as reader:
        grid = reader.tile(tile.epsg, tile.core_bounds, (tile.height, tile.width))
        rng = np.random.default_rng(1)
        rows = np.r_[0, tile.height - 1, rng.integers(0, tile.height, 60)]
        cols = np.r_[0, tile.width - 1, rng.integers(0, tile.width, 60)]
        x0, _, _, y1 = tile.core_bounds
        xs = x0 + 10 * cols + rng.uniform(0.01, 9.99, cols.size)  # anywhere inside the pixel
        ys = y1 - 10 * rows - rng.uniform(0.01, 9.99, rows.size)
        values, cx, cy = reader.points(tile.epsg, xs, ys)
    np.testing.assert_array_equal(values, grid[:, rows, cols])  # bit for bit, NaN where missing
    np.testing.assert_array_equal(cx, x0 + 10 * cols + 5)
    for name in ("elevation", "slope", "aspect", "bio01", "soil_moisture_0_5cm"):
        assert np.isfinite(grid[LAYER_VARIABLES.index(name)]).all(), name
    for name in ("bio02", "soil_moisture_5_15cm"):
        assert np.isnan(grid[LAYER_VARIABLES.index(name)]).all(), name


def test_bilinear_interpolation_reproduces_a_plane(tmp_path, tile):
    """A layer that is a linear function of lon/lat is interpolated exactly (away from its edges)."""
    step = 1 / 1200
    rows, cols = np.mgrid[0:200, 0:200]
    plane = 3.0 + 40.0 * (cols + 0.5) * step - 25.0 * (rows + 0.5) * step
    write(tmp_path / "plane.tif", plane, from_origin(LON0, LAT0, step, step), "EPSG:4326")
    with AuxReader(LayerSet((Layer("bio12", str(tmp_path / "plane.tif"), scale=2.0, offset=-1.0),))) as reader:
        grid = reader.tile(tile.epsg, tile.core_bounds, (tile.height, tile.width))
    x0, _, _, y1 = tile.core_bounds
    c, r = np.meshgrid(np.arange(tile.width), np.arange(tile.height))
    lon, lat = Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(x0 + 10 * c + 5, y1 - 10 * r - 5)
    want = 2.0 * (3.0 + 40.0 * (lon - LON0) - 25.0 * (LAT0 - lat)) - 1.0
    np.testing.assert_allclose(grid[LAYER_VARIABLES.index("bio12")], want, rtol=0, atol=1e-4)


def test_horn_slope_and_aspect_of_planes():
    for gx, gy, aspect in ((0.1, 0.0, 270.0), (0.0, 0.1, 180.0), (-0.1, 0.0, 90.0), (0.0, -0.1, 0.0),
                           (0.1, 0.05, 243.43494882)):
        z = [np.array([gx * dx * 10 + gy * dy * 10]) for dx, dy in
             ((-1, 1), (0, 1), (1, 1), (-1, 0), (0, 0), (1, 0), (-1, -1), (0, -1), (1, -1))]
        s, a = horn(*z)
        assert s[0] == pytest.approx(np.degrees(np.arctan(np.hypot(gx, gy))))
        assert a[0] % 360 == pytest.approx(aspect)
    s, a = horn(*[np.array([5.0])] * 9)
    assert (s[0], a[0]) == (0.0, 0.0)  # flat: aspect 0, as gdaldem -zero_for_flat


def test_slope_on_a_utm_dem_is_the_planes(tmp_path, tile):
    x0, _, _, y1 = tile.core_bounds
    rows, cols = np.mgrid[0:100, 0:100]
    # a 30 m DEM on the same UTM grid: z = 0.2 x + 0.1 y (x east, y north), 900 m of relief
    plane = (0.2 * (cols * 30 + 15) + 0.1 * (-(rows * 30 + 15))).astype(np.float64)
    write(tmp_path / "utm.tif", plane, from_origin(x0 - 300, y1 + 300, 30, 30), f"EPSG:{EPSG}")
    with AuxReader(LayerSet((Layer("elevation", str(tmp_path / "utm.tif")),))) as reader:
        grid = reader.tile(tile.epsg, tile.core_bounds, (40, 40))
    slope, aspect = grid[LAYER_VARIABLES.index("slope")], grid[LAYER_VARIABLES.index("aspect")]
    np.testing.assert_allclose(slope, np.degrees(np.arctan(np.hypot(0.2, 0.1))), atol=1e-4)
    np.testing.assert_allclose(aspect, np.degrees(np.arctan2(-0.2, -0.1)) % 360, atol=1e-3)


def test_layer_sets_from_yaml(tmp_path, layers):
    (tmp_path / "dem.tif").symlink_to(layers.layer("elevation").path)
    path = tmp_path / "aux.yaml"
    path.write_text("elevation: dem.tif\nbio05: {path: /data/bio5.tif, band: 2, scale: 10, units: degC}\n")
    ls = read_layer_set(path)
    assert ls.layer("elevation").path == str(tmp_path / "dem.tif")
    assert (ls.layer("bio05").band, ls.layer("bio05").scale) == (2, 10.0)
    assert ls.derives("slope") and ls.derives("aspect") and "bio01" in ls.missing()
    for text, words in (("elevaton: dem.tif\n", "unknown auxiliary variable(s) elevaton"),
                        ("bio01: {path: a.tif, colour: red}\n", "unknown field(s) colour"),
                        ("bio01: {band: 2}\n", "give a raster path"),
                        ("bio01: {path: a.tif, band: zero}\n", "band must be an integer"),
                        ("- elevation\n", "expected a mapping")):
        path.write_text(text)
        with pytest.raises(AuxError, match=words.replace("(", r"\(").replace(")", r"\)")):
            read_layer_set(path)


def test_bad_layers_are_one_line(tmp_path, tile, layers, caplog):
    bounds = tile.core_bounds
    with pytest.raises(AuxNotFoundError, match="no such file"):
        check_layers(LayerSet((Layer("bio01", str(tmp_path / "nope.tif")),)), EPSG, bounds)
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(AuxError, match="GDAL cannot read"):
        check_layers(LayerSet((Layer("bio01", str(tmp_path / "text.tif")),)), EPSG, bounds)
    write(tmp_path / "nocrs.tif", np.ones((4, 4), np.float32), from_origin(0, 4, 1, 1), None)
    with pytest.raises(AuxError, match="has no CRS"):
        check_layers(LayerSet((Layer("bio01", str(tmp_path / "nocrs.tif")),)), EPSG, bounds)
    with pytest.raises(AuxError, match="has 1 band"):
        check_layers(LayerSet((Layer("bio01", layers.layer("bio01").path, band=3),)), EPSG, bounds)
    write(tmp_path / "far.tif", np.ones((4, 4), np.float32), from_origin(-70, 10, 0.01, 0.01), "EPSG:4326")
    with pytest.raises(AuxError, match="does not cover the area"):
        check_layers(LayerSet((Layer("bio01", str(tmp_path / "far.tif")),)), EPSG, bounds)
    # half the area: a warning, the rest missing
    x0, y0, x1, y1 = bounds
    write(tmp_path / "half.tif", np.full((10, 10), 120, np.int16),
          from_origin(x0 - 100, y1 + 100, (x1 - x0) / 20 + 20, (y1 - y0) / 10 + 20), f"EPSG:{EPSG}")
    with caplog.at_level(logging.WARNING, logger="treemap.auxiliary"):
        cover = check_layers(LayerSet((Layer("bio05", str(tmp_path / "half.tif")),)), EPSG, bounds)
    assert 0.3 < cover["bio05"] < 0.8
    assert "covers" in caplog.text and "masked: elevation" in caplog.text


def test_units_hints():
    assert units_hint("bio05", np.array([18.0, 24.5]), (-100.0, 500.0)).startswith("values 18 .. 24.5 look like degC")
    assert units_hint("bio05", np.array([180.0, 245.0]), (-100.0, 500.0)) == ""
    assert "with scale 0.1 they would fit" in units_hint("bio12", np.array([80000.0, 90000.0]), (0.0, 11500.0))
    assert units_hint("elevation", np.array([120.0, 900.0]), (-500.0, 9000.0)) == ""
