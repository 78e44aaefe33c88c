"""End to end: `treemap predict` as a user runs it, on a small demo world, checked with rio-cogeo and GDAL."""

import json
from datetime import date
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Polygon, box

from treemap.grid import to_crs
from treemap.outputs import NODATA_U8, PROB_SCALE
from treemap.run import WORK_DIR, PredictRequest, predict
from treemap.taxonomy import demo_species_list

YEAR = (date(2022, 1, 1), date(2022, 12, 31))


@pytest.fixture(scope="module")
def aoi_inside(small_world, tmp_path_factory):
    """A concave polygon inside the small world, across the strip of the two MGRS-like tiles."""
    spec = small_world.spec
    x0, y1 = spec.x_min + 205, spec.y_max - 95
    poly = Polygon([(x0, y1), (x0 + 1500, y1), (x0 + 1500, y1 - 600), (x0 + 700, y1 - 600),
                    (x0 + 700, y1 - 950), (x0, y1 - 950)])
    lonlat = to_crs(poly, 4326, src_epsg=spec.epsg)
    path = tmp_path_factory.mktemp("aoi") / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": lonlat.__geo_interface__}))
    return path, lonlat


@pytest.fixture(scope="module")
def run(small_world, aoi_inside, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "treemap", "predict", "--aoi", str(aoi_inside[0]), "--catalog",
         str(small_world.catalog), "--model", "demo", "--species", "demo", "--year", "2022", "--out", str(out),
         "--tile-size", "100"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_stdout_lists_the_products(run):
    proc, out = run
    paths = proc.stdout.strip().splitlines()
    names = ["species_probability", "genus_probability", "family_probability", "leaf_type_probability",
             "dominant_species", "uncertainty", "tree_mask"]
    assert paths == [str(out / f"{name}.tif") for name in names]
    # each COG's QGIS style, the quicklook, the run's STAC item and log beside them, published with the set
    assert {p.name for p in out.iterdir() if p.is_file()} >= {f"{n}.qml" for n in names} | {
        "quicklook.png", "item.json", "treemap.log"}
    assert "tile" in proc.stderr  # logs go to stderr
    assert not (out / WORK_DIR).exists() or not any((out / WORK_DIR).iterdir())
    assert not list(out.glob(".*tmp*"))


def test_products_are_valid_cogs_covering_the_aoi(run, aoi_inside):
    _, out = run
    aoi_utm = to_crs(aoi_inside[1], 32632)
    for path in sorted(out.glob("*.tif")):
        valid, errors, warnings = cog_validate(str(path))
        assert valid, errors
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32632
            assert ds.res == (10.0, 10.0)
            b = ds.bounds
            assert box(b.left, b.bottom, b.right, b.top).contains(box(*aoi_utm.bounds))
            assert ds.overviews(1), "COGs carry overviews"
        if shutil.which("rio"):
            subprocess.run(["rio", "cogeo", "validate", str(path)], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="GDAL command-line tools (gdal-bin) not installed")
def test_gdalinfo_accepts_products(run):
    _, out = run
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(out / "species_probability.tif")], check=True,
                                     capture_output=True, text=True).stdout)
    species = demo_species_list().species
    assert [b["description"] for b in info["bands"]] == list(species)
    assert all(b["noDataValue"] == NODATA_U8 and b["scale"] == PROB_SCALE for b in info["bands"])
    assert info["metadata"][""]["PROBABILITY_SCALE"] == str(PROB_SCALE)
    dom = json.loads(subprocess.run(["gdalinfo", "-json", str(out / "dominant_species.tif")], check=True,
                                    capture_output=True, text=True).stdout)
    assert dom["bands"][0]["categories"] == list(species)
    assert dom["bands"][0]["colorInterpretation"] == "Palette"


def test_probabilities_and_nodata(run, aoi_inside):
    _, out = run
    with rasterio.open(out / "species_probability.tif") as ds:
        dn = ds.read()
        inside = geometry_mask([to_crs(aoi_inside[1], 32632)], out_shape=ds.shape, transform=ds.transform,
                               invert=True)
    with rasterio.open(out / "dominant_species.tif") as ds:
        dom = ds.read(1)
    with rasterio.open(out / "tree_mask.tif") as ds:
        tree = ds.read(1)
    assert (dn[:, ~inside] == NODATA_U8).all(), "nodata outside the AOI"
    assert (tree[~inside] == NODATA_U8).all() and set(np.unique(tree[inside])) <= {0, 1, NODATA_U8}
    assert 0.2 < (tree[inside] == 0).mean() < 0.8, "the small world is part forest, part open land"
    assert (dn[:, tree == 0] == NODATA_U8).all() and (dom[tree == 0] == NODATA_U8).all(), "no species off trees"
    mapped = dn[0] != NODATA_U8
    assert mapped[inside & (tree != 0)].mean() > 0.95, "nearly every tree pixel has a clear observation"
    probs = dn[:, mapped].astype(np.float64) * PROB_SCALE
    assert np.abs(probs.sum(axis=0) - 1).max() <= len(dn) * PROB_SCALE / 2 + 1e-9
    # the dominant class is the arg-max of the stored probabilities (up to ties from uint8 rounding)
    best = dn[:, mapped].max(axis=0)
    assert (dn[:, mapped][dom[mapped], np.arange(mapped.sum())] == best).all()
    assert (dom[~mapped] == NODATA_U8).all()
    # a random tiny model still gives pixel-dependent answers, not one constant
    assert len(np.unique(dom[mapped])) > 1


def test_genus_family_and_leaf_type_are_sums_of_species(run):
    _, out = run
    species = demo_species_list()
    with rasterio.open(out / "species_probability.tif") as ds:
        p = ds.read().astype(np.float64) * PROB_SCALE
        mapped = ds.read(1) != NODATA_U8
    for level in ("genus", "family", "level0"):  # level0: leaf type
        names, index = species.groups(level)
        product = "leaf_type" if level == "level0" else level
        with rasterio.open(out / f"{product}_probability.tif") as ds:
            assert ds.descriptions == names
            got = ds.read().astype(np.float64) * PROB_SCALE
        for g in range(len(names)):
            expected = p[index == g].sum(axis=0)
            # each stored value is rounded to half a DN step; sums carry the rounding of their members
            tol = PROB_SCALE / 2 * (1 + (index == g).sum())
            assert np.abs(got[g][mapped] - expected[mapped]).max() <= tol + 1e-9


def test_same_scenes_from_an_item_file_give_identical_products(small_world, world_items, aoi_inside, tmp_path):
    """The catalog form does not matter: an ItemCollection of the same items maps to the same pixels."""
    features = world_items(small_world)
    item_file = tmp_path / "items.json"
    item_file.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    results = [
        predict(PredictRequest(aoi=aoi_inside[0], out=tmp_path / name, catalog=str(catalog), model="demo",
                               species="demo", start=YEAR[0], end=YEAR[1], tile_size=100))
        for name, catalog in (("from-items", item_file), ("from-catalog", small_world.catalog))
    ]
    for name in results[0].products:
        with rasterio.open(results[0].products[name]) as a, rasterio.open(results[1].products[name]) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_resume_skips_finished_tiles(small_world, aoi_inside, tmp_path, caplog):
    request = PredictRequest(aoi=aoi_inside[0], out=tmp_path, catalog=str(small_world.catalog), model="demo",
                             species="demo", start=YEAR[0], end=YEAR[1], tile_size=100, keep_work=True)
    first = predict(request)
    with rasterio.open(first.products["species_probability"]) as ds:
        before = ds.read()
    markers = list((tmp_path / WORK_DIR).rglob("*.done"))
    assert len(markers) == first.tiles
    caplog.set_level("INFO", logger="treemap")
    second = predict(request)
    assert sum("already done" in r.message for r in caplog.records) == first.tiles
    with rasterio.open(second.products["species_probability"]) as ds:
        np.testing.assert_array_equal(ds.read(), before)


def test_the_quicklook_and_the_item_of_a_real_run(run):
    """The quicklook's legend names the species drawn and the land the tree mask removed; the STAC item validates
    offline and every asset opens from its href."""
    from PIL import Image

    from treemap.item_validation import validate_run_item

    _, out = run
    with Image.open(out / "quicklook.png") as im:
        width, height = im.size
        legend = json.loads(im.text["treemap:legend"])
    assert width >= 800 and height >= 400
    names = [e["name"] for e in legend]
    assert names[-1] == "not tree" and set(names[:-1]) <= set(demo_species_list().species) and len(names) > 2
    assert abs(sum(e["share_pct"] for e in legend) - 100) < 0.5
    schemas = Path(__file__).resolve().parent / "data" / "stac-schemas"
    validate_run_item(out / "item.json", schemas)
    item = json.loads((out / "item.json").read_text())
    for key, asset in item["assets"].items():
        path = out / asset["href"]
        assert path.is_file(), key
        if path.suffix == ".tif":
            with rasterio.open(path) as ds:
                assert ds.count == len(asset["raster:bands"])
