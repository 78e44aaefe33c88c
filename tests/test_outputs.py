"""Product writing: uint8 encoding, class maps, and the COG mosaic checked with rio-cogeo and GDAL's gdalinfo."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box

from treemap.aoi import AOI
from treemap.grid import plan_tiles, to_crs
from treemap.outputs import (NODATA_U8, PROB_SCALE, class_colours, dominant_class, encode_probability,
                             write_cog_mosaic, write_tile_raster)


def test_probability_encoding_round_trip():
    p = np.array([0.0, 0.0049, 0.5, 1.0, np.nan], dtype=np.float32)
    dn = encode_probability(p)
    assert dn.dtype == np.uint8
    assert dn[-1] == NODATA_U8
    assert np.allclose(dn[:-1] * PROB_SCALE, p[:-1], atol=PROB_SCALE / 2)


def test_dominant_class_and_nodata():
    probs = np.array([[[0.1, np.nan]], [[0.7, np.nan]], [[0.2, np.nan]]], dtype=np.float32)
    out = dominant_class(probs)
    assert out.tolist() == [[1, NODATA_U8]]


def test_colours_distinct():
    colours = class_colours(40)
    assert len(set(colours)) == 40


@pytest.fixture
def two_tile_plan():
    aoi = AOI(to_crs(box(497000, 5541000, 497900, 5541500), 4326, src_epsg=32632))
    plan = plan_tiles(aoi, tile_size=32)
    assert len(plan.tiles) > 2
    return plan


def test_mosaic_is_valid_cog_with_metadata(tmp_path, two_tile_plan):
    plan = two_tile_plan
    names = ["Pinus sylvestris", "Fagus & <sylvatica>", "Larix decidua"]
    sources = []
    for k, tile in enumerate(plan.tiles[:-1]):  # the last tile is missing: it must come out as nodata
        data = np.full((4, tile.height, tile.width), k, dtype=np.uint8)
        data[3] = k % 3
        sources.append((tile, write_tile_raster(tmp_path / f"{tile.id}.tif", tile, data)))
    bands = [{"description": n, "scale": PROB_SCALE, "offset": 0.0} for n in names]
    (tmp_path / "out").mkdir()
    probs = write_cog_mosaic(tmp_path / "out" / "p.tif",
                             plan, sources, bands, tags={"TREEMAP_TEST": "1"}, resampling="AVERAGE")
    dom = write_cog_mosaic(tmp_path / "out" / "d.tif", plan, sources,
                           [{"description": "dominant species", "categories": names, "colours": class_colours(3)}],
                           source_band_offset=3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["d.tif", "d.tif.aux.xml", "p.tif"]
    for path in (probs, dom):
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
    with rasterio.open(probs) as ds:
        assert ds.crs.to_epsg() == plan.epsg
        assert ds.width == plan.width and ds.height == plan.height
        assert tuple(ds.bounds) == pytest.approx(plan.bounds)
        assert ds.descriptions == tuple(names)
        assert ds.scales == (PROB_SCALE,) * 3
        assert ds.tags()["TREEMAP_TEST"] == "1"
        arr = ds.read(1)
        for k, tile in enumerate(plan.tiles):
            col, row, w, h = tile.window
            expected = k if k < len(plan.tiles) - 1 else NODATA_U8
            assert (arr[row:row + h, col:col + w] == expected).all()
    with rasterio.open(dom) as ds:
        assert ds.colormap(1)[0][:3] == class_colours(3)[0][:3]


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="GDAL command-line tools (gdal-bin) not installed")
def test_gdalinfo_reads_categories(tmp_path, two_tile_plan):
    plan = two_tile_plan
    tile = plan.tiles[0]
    src = write_tile_raster(tmp_path / "t.tif", tile, np.zeros((1, tile.height, tile.width), dtype=np.uint8))
    out = write_cog_mosaic(tmp_path / "d.tif", plan, [(tile, src)],
                           [{"description": "dominant species", "categories": ["A a", "B b"],
                             "colours": class_colours(2)}])
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(out)], check=True, capture_output=True,
                                     text=True).stdout)
    band = info["bands"][0]
    assert band["categories"] == ["A a", "B b"]
    assert band["colorInterpretation"] == "Palette"
    assert band["noDataValue"] == NODATA_U8
