"""The tree mask of `treemap predict`: the built-in rule and a land-cover raster (`--mask`), on the small demo world
and on rasters in another CRS, plus the one-line refusals of what cannot serve as a mask."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject
from shapely.geometry import box

from treemap.aoi import AOI
from treemap.errors import MaskError, MaskNotFoundError
from treemap.grid import plan_tiles, to_crs
from treemap.masking import BUILTIN, NONE, RASTER, WORLDCOVER_TREES, landcover_mask, mask_spec, parse_classes
from treemap.outputs import NODATA_U8

TREE_PRODUCTS = ("species_probability", "genus_probability", "family_probability", "leaf_type_probability",
                 "dominant_species", "uncertainty")


def _write(path, data, transform, crs, nodata=None, dtype="uint8"):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=dtype,
                       crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data.astype(dtype), 1)
    return path


# -- options --------------------------------------------------------------------------------------------------------
def test_class_lists_parse_and_refuse_garbage():
    assert parse_classes(None) == WORLDCOVER_TREES
    assert parse_classes(" 95, 10,10") == (10, 95)
    for bad in ("ten", "10;20", ",", "1.5"):
        with pytest.raises(MaskError, match="--mask-classes"):
            parse_classes(bad)


def test_mask_specs_and_their_refusals(tmp_path):
    assert mask_spec(None).kind == BUILTIN and mask_spec("none").kind == NONE
    assert not mask_spec("none").enabled
    with pytest.raises(MaskError, match="applies to a land-cover raster"):
        mask_spec("builtin", "10")
    with pytest.raises(MaskNotFoundError, match="no such file"):
        mask_spec(tmp_path / "missing.tif")
    with pytest.raises(MaskError, match="is a folder"):
        mask_spec(tmp_path)
    (tmp_path / "notes.txt").write_text("not a raster\n")
    with pytest.raises(MaskError, match="GDAL cannot read it"):
        mask_spec(tmp_path / "notes.txt")
    _write(tmp_path / "nocrs.tif", np.ones((4, 4)), from_origin(0, 4, 1, 1), None)
    with pytest.raises(MaskError, match="has no CRS"):
        mask_spec(tmp_path / "nocrs.tif")
    _write(tmp_path / "float.tif", np.ones((4, 4)), from_origin(0, 4, 1, 1), "EPSG:4326", dtype="float32")
    with pytest.raises(MaskError, match="integer class codes"):
        mask_spec(tmp_path / "float.tif")
    good = _write(tmp_path / "lc.tif", np.ones((4, 4)), from_origin(0, 4, 1, 1), "EPSG:4326")
    spec = mask_spec(good, "10,20")
    assert (spec.kind, spec.raster, spec.classes) == (RASTER, str(good.absolute()), (10, 20))
    # a changed raster is another job: the fingerprint (work folder) changes with its size and time
    before = spec.fingerprint()
    _write(good, np.ones((5, 5)), from_origin(0, 5, 1, 1), "EPSG:4326")
    assert mask_spec(good, "10,20").fingerprint() != before


# -- a land-cover raster in another CRS, warped onto the tile grid --------------------------------------------------
def test_a_geographic_raster_is_warped_onto_the_utm_tile_grid(tmp_path):
    """A WorldCover-like raster in EPSG:4326 (about 1/3 of a 10 m pixel per cell) with random classes, a nodata
    block, and an edge short of the tile: compared pixel by pixel with a point lookup at each tile pixel centre."""
    lon0, lat0, step = 7.0, 50.02, 1 / 36000  # WorldCover's 1/12 arc-second grid is 1/36000 deg
    rng = np.random.default_rng(3)
    blocks = rng.choice([10, 30, 40, 50, 80, 95], size=(24, 36))  # 30 x 30 cell blocks (about 0.9 x 0.6 km)
    codes = np.kron(blocks, np.ones((30, 30), dtype=np.int64)).astype(np.uint8)
    codes[100:160, 200:300] = 0  # nodata
    path = _write(tmp_path / "lc4326.tif", codes, from_origin(lon0, lat0, step, step), "EPSG:4326", nodata=0)

    aoi_ll = box(lon0 + 0.002, lat0 - 0.018, lon0 + 0.012, lat0 - 0.002)
    plan = plan_tiles(AOI(geometry=aoi_ll, source="test"), tile_size=64)
    tile = plan.tiles[0]
    got = landcover_mask(str(path), (10, 95), tile)
    assert got.shape == (tile.height, tile.width)

    # the oracle: each tile pixel centre to lon/lat, then the source cell that holds it
    x0, _, _, y1 = tile.core_bounds
    cols, rows = np.meshgrid(np.arange(tile.width), np.arange(tile.height))
    to_ll = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
    lon, lat = to_ll.transform(x0 + (cols + 0.5) * 10, y1 - (rows + 0.5) * 10)
    i, j = np.floor((lat0 - lat) / step).astype(int), np.floor((lon - lon0) / step).astype(int)
    inside = (i >= 0) & (i < codes.shape[0]) & (j >= 0) & (j < codes.shape[1])
    code = np.where(inside, codes[np.clip(i, 0, codes.shape[0] - 1), np.clip(j, 0, codes.shape[1] - 1)], 0)
    want = np.where(np.isin(code, (10, 95)), 1, 0)
    want[code == 0] = NODATA_U8
    assert {0, 1, NODATA_U8} <= set(np.unique(want)), "the tile sees trees, other land and nodata"
    agree = (got == want).mean()
    assert agree >= 0.995, agree  # only pixels whose centre lies on a cell edge may differ


def test_a_tile_beyond_the_raster_is_all_nodata(tmp_path):
    path = _write(tmp_path / "lc.tif", np.full((10, 10), 10), from_origin(7.0, 50.0, 1e-4, 1e-4), "EPSG:4326")
    plan = plan_tiles(AOI(geometry=box(8.0, 49.0, 8.003, 49.003), source="test"), tile_size=64)
    assert (landcover_mask(str(path), (10,), plan.tiles[0]) == NODATA_U8).all()


# -- end to end on the small demo world -----------------------------------------------------------------------------
def _predict(world, aoi, out, *extra):
    proc = subprocess.run([sys.executable, "-m", "treemap", "-q", "predict", "--aoi", str(aoi), "--catalog",
                           str(world.catalog), "--year", "2022", "--out", str(out), "--tile-size", "128",
                           "--workers", "1", "--model", "demo", "--species", "demo", *extra], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out


def _on_grid(src_path, like):
    with rasterio.open(src_path) as src, rasterio.open(like) as dst:
        out = np.zeros((dst.height, dst.width), dtype=np.uint8)
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs, dst_transform=dst.transform,
                  dst_crs=dst.crs, resampling=Resampling.nearest)
    return out


@pytest.fixture(scope="module")
def mask_aoi(small_world, tmp_path_factory):
    """1.2 km x 0.9 km across forest and open land of the small world."""
    spec = small_world.spec
    local = box(spec.x_min + 250, spec.y_max - 1100, spec.x_min + 1450, spec.y_max - 200)
    path = tmp_path_factory.mktemp("aoi") / "mask.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    return path


@pytest.fixture(scope="module")
def landcover_run(small_world, mask_aoi, tmp_path_factory):
    return _predict(small_world, mask_aoi, tmp_path_factory.mktemp("lc") / "out", "--mask",
                    str(small_world.landcover))


def test_the_demo_world_has_a_worldcover_raster_beside_its_truth(small_world):
    truth = _on_grid(small_world.truth_species, small_world.landcover)
    with rasterio.open(small_world.landcover) as ds:
        lc = ds.read(1)
    assert set(np.unique(lc)) == {10, 30, 40, 50, 80}
    assert ((truth >= 1) & (truth <= 10) == (lc == 10)).all()
    for code, wc in ((101, 80), (102, 30), (103, 40), (104, 50)):
        assert (lc[truth == code] == wc).all()


def test_with_the_land_cover_raster_every_masked_class_is_nodata(landcover_run, small_world):
    out = landcover_run
    lc = _on_grid(small_world.landcover, out / "tree_mask.tif")
    with rasterio.open(out / "tree_mask.tif") as ds:
        tree = ds.read(1)
    inside = tree != NODATA_U8
    assert inside.sum() > 5000
    assert (tree[inside] == (lc[inside] == 10)).all()
    masked = inside & (lc != 10)
    assert masked.sum() > 1000, "the AOI holds open land"
    for name in TREE_PRODUCTS:
        with rasterio.open(out / f"{name}.tif") as ds:
            data = ds.read()
        assert (data[:, masked] == NODATA_U8).all(), f"{name}: 100 % of masked pixels are nodata"
        assert (data[0][inside & (lc == 10)] != NODATA_U8).mean() > 0.95, f"{name}: tree pixels are mapped"
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["treemap:tree_mask"]["kind"] == "raster"
    assert item["properties"]["treemap:tree_mask"]["classes"] == [10, 95]
    assert "tree_mask" in item["assets"] and (out / "tree_mask.qml").is_file()
    qml = (out / "tree_mask.qml").read_text()
    assert 'label="tree"' in qml and 'label="not tree"' in qml


def test_the_builtin_rule_agrees_with_the_truth(small_world, mask_aoi, tmp_path):
    out = _predict(small_world, mask_aoi, tmp_path / "out")  # --mask builtin is the default
    truth = _on_grid(small_world.truth_species, out / "tree_mask.tif")
    with rasterio.open(out / "tree_mask.tif") as ds:
        tree = ds.read(1)
    inside = tree != NODATA_U8
    is_tree = (truth >= 1) & (truth <= 10)
    assert (tree[inside & is_tree] == 1).mean() >= 0.97
    assert (tree[inside & ~is_tree] == 0).mean() >= 0.97
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["treemap:tree_mask"]["kind"] == "builtin"


@pytest.mark.parametrize("args, words", [
    (["--mask", "/no/such/landcover.tif"], "no such file"),
    (["--mask", "none", "--mask-classes", "10"], "applies to a land-cover raster"),
    (["--mask", "LANDCOVER", "--mask-classes", "trees"], "--mask-classes 'trees'"),
])
def test_bad_mask_options_are_one_line(small_world, mask_aoi, tmp_path, args, words):
    args = [str(small_world.landcover) if a == "LANDCOVER" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "treemap", "predict", "--aoi", str(mask_aoi), "--catalog",
                           str(small_world.catalog), "--year", "2022", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()
