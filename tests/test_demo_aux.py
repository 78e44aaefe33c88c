"""The demo world's auxiliary layers (treemap.demo.auxlayers) and the demo model trained with them: the layers exist,
are read through the layer set, cover the world in the CRSs, grids and units of the products they stand in for,
follow where the species grow, come out the same for a world built before they existed, and `treemap predict --aux`
maps with the aux model end to end."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from shapely.geometry import box

import treemap.demo.world as world_mod
from train.demo_model import AUX_MODEL
from treemap.auxiliary import LAYER_VARIABLES, AuxReader, check_layers, read_layer_set
from treemap.demo.auxlayers import AUX_DIR, FILES, HABITAT, LAYER_SET, _habitat_arrays
from treemap.grid import to_crs
from treemap.models import load_model
from treemap.models.checkpoint import DEFAULT_AUX_RANGES
from treemap.models.config import AUX_VARIABLES

REPO = Path(__file__).resolve().parents[1]
GIVEN = {"elevation", "soil_moisture_0_5cm", "bio01", "bio05", "bio06", "bio12"}
ARCSEC = 1 / 3600
# what each layer holds over a world of the demo's (lowland-to-hill country at 50 N), in the model's units
PLAUSIBLE = {"elevation": (100, 900), "slope": (0, 75), "aspect": (0, 360), "soil_moisture_0_5cm": (100, 600),
             "bio01": (40, 130), "bio05": (150, 280), "bio06": (-100, 0), "bio12": (500, 1300)}
NEEDLELEAF = (1, 2, 3)  # Pinus, Taxus, Larix
BROADLEAF = (4, 5, 6, 7, 8, 9, 10)


def _bounds(world, pad: float = 0.0):
    s = world.spec
    return (s.x_min - pad, s.y_max - s.height_px * 10 - pad, s.x_min + s.width_px * 10 + pad, s.y_max + pad)


@pytest.fixture(scope="module")
def layers(small_world):
    return read_layer_set(small_world.aux_layers)


@pytest.fixture(scope="module")
def grid(small_world, layers):
    """Every variable on the world's 10 m grid, as predict computes it, and the truth codes."""
    s = small_world.spec
    with AuxReader(layers) as reader:
        values = reader.tile(s.epsg, _bounds(small_world), (s.height_px, s.width_px))
    with rasterio.open(small_world.truth_species) as ds:
        codes = ds.read(1)
    return {name: values[LAYER_VARIABLES.index(name)] for name in PLAUSIBLE}, codes


def test_the_layer_set_names_coarse_cogs_in_other_crss(small_world, layers, caplog):
    from rio_cogeo.cogeo import cog_validate

    assert small_world.aux_layers == small_world.root / LAYER_SET
    assert {layer.variable for layer in layers.layers} == GIVEN
    assert layers.derives("slope") and layers.derives("aspect")
    assert len(layers.missing()) == 25 - 8
    world_crs = CRS.from_epsg(small_world.spec.epsg)
    for f in FILES:
        layer = layers.layer(f.variable)
        assert Path(layer.path) == small_world.root / AUX_DIR / f.name and layer.units == f.units
        assert cog_validate(layer.path, quiet=True)[0], f.name
        with rasterio.open(layer.path) as ds:
            assert ds.crs != world_crs, f.name  # every run with them reprojects
            assert ds.dtypes[0] == f.dtype and ds.nodata == f.nodata
            crs, res = ds.crs, ds.res
        if f.variable == "elevation":
            assert crs == CRS.from_epsg(4326) and res == pytest.approx((ARCSEC, ARCSEC))  # ~20 x 31 m
        elif f.variable.startswith("bio"):
            assert crs == CRS.from_epsg(4326) and res == pytest.approx((30 * ARCSEC, 30 * ARCSEC))  # ~1 km
        else:
            assert "+proj=igh" in crs.to_proj4() and res == (250.0, 250.0)  # SoilGrids' Homolosine grid
    # they cover the world and a margin round it, in the units the model takes: no warning at all
    with caplog.at_level(logging.WARNING, logger="treemap.auxiliary"):
        cover = check_layers(layers, small_world.spec.epsg, _bounds(small_world, pad=500.0))
    assert cover == {name: 1.0 for name in GIVEN}
    assert "covers" not in caplog.text and "units" not in caplog.text and "range" not in caplog.text


def test_values_are_everywhere_and_in_the_models_units(grid):
    values, _ = grid
    for name, (lo, hi) in PLAUSIBLE.items():
        v = values[name]
        assert np.isfinite(v).all(), name
        assert lo <= v.min() and v.max() <= hi, (name, float(v.min()), float(v.max()))
        d_lo, d_hi = DEFAULT_AUX_RANGES[name]
        assert d_lo <= v.min() and v.max() <= d_hi, name
    assert values["elevation"].max() - values["elevation"].min() > 100  # relief
    assert np.ptp(values["bio01"]) > 1  # climate varies, a little, over 2 km
    assert np.percentile(values["slope"], 90) > 10 and np.median(values["slope"]) < 40


def test_the_layers_follow_where_the_species_grow(grid):
    values, codes = grid
    elev, soil, slope = values["elevation"], values["soil_moisture_0_5cm"], values["slope"]
    needle, broad = np.isin(codes, NEEDLELEAF), np.isin(codes, BROADLEAF)
    assert elev[needle].mean() > elev[broad].mean() + 15  # measured 34 m on this world, 40-60 m on others
    pref_elev, pref_wet, _ = _habitat_arrays()
    trees = needle | broad
    assert np.corrcoef(elev[trees], pref_elev[codes[trees]])[0, 1] > 0.25  # measured 0.47 (0.38-0.47 other seeds)
    assert np.corrcoef(soil[trees], pref_wet[codes[trees]])[0, 1] > 0.05  # smeared by 250 m cells: 0.27 here
    wet = np.isin(codes, [6, 9])  # Fraxinus, Ulmus
    dry = np.isin(codes, [1, 7])  # Pinus, Castanea
    assert soil[wet].mean() > soil[dry].mean()
    assert slope[codes == 3].mean() > slope[codes == 6].mean()  # Larix on rougher ground than Fraxinus
    # ... but they do not give the species away: every species spans a wide range of elevations
    for code in range(1, 11):
        if (codes == code).sum() > 200:
            assert np.ptp(elev[codes == code]) > 60, code
    assert set(HABITAT) >= {"water", "grassland", "cropland", "built-up"}


def test_a_world_built_before_the_layers_gets_the_same_files(small_world, tmp_path):
    """The backfill of an existing world (from its truth and seed) writes byte for byte what a build writes."""
    (tmp_path / "truth").mkdir()
    shutil.copyfile(small_world.truth_species, tmp_path / "truth" / "species.tif")
    assert world_mod._aux_layers(tmp_path, small_world.spec) == tmp_path / LAYER_SET
    for f in FILES:
        assert (tmp_path / AUX_DIR / f.name).read_bytes() == (small_world.root / AUX_DIR / f.name).read_bytes(), f.name
    assert (tmp_path / LAYER_SET).read_text() == small_world.aux_layers.read_text()
    assert sorted(p.name for p in (tmp_path / AUX_DIR).iterdir()) == sorted(f.name for f in FILES)  # no temporaries


def test_the_aux_model_card_has_the_layers_ranges():
    assert AUX_MODEL.stat().st_size < 8_000_000
    _, card = load_model(AUX_MODEL)
    stats = dict(zip(AUX_VARIABLES, zip(card.statistics["aux_min"], card.statistics["aux_max"])))
    assert stats["longitude"] == (-180.0, 180.0) and stats["latitude"] == (-90.0, 90.0)  # pinned, as demo-tiny
    for name in GIVEN | {"slope", "aspect"}:  # min / max over the training shards, not the fixed global ranges
        lo, hi = stats[name]
        assert (lo, hi) != DEFAULT_AUX_RANGES[name] and lo < hi, name
    assert 100 < stats["elevation"][0] < stats["elevation"][1] < 900
    assert stats["bio12"] != DEFAULT_AUX_RANGES["bio12"] and stats["soil_moisture_5_15cm"] == (0.0, 1000.0)
    assert "auxiliary" in card.notes and "--aux" in card.notes


def test_predict_with_the_aux_model_and_the_worlds_layers(small_world, layers, tmp_path):
    s = small_world.spec
    local = box(s.x_min + 300, s.y_max - 900, s.x_min + 1500, s.y_max - 100)  # 120 x 80 pixels
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": to_crs(local, 4326, src_epsg=s.epsg).__geo_interface__}))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "treemap", "predict", "--catalog", str(small_world.catalog), "--aoi", str(aoi),
         "--out", str(out), "--model", str(AUX_MODEL), "--species", "demo", "--aux", str(small_world.aux_layers),
         "--year", str(s.year), "--workers", "1", "--device", "cpu", "--mask", "none", "--tile-size", "128"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    item = json.loads((out / "item.json").read_text())
    recorded = item["properties"]["treemap:auxiliary"]
    assert set(recorded["layers"]) == GIVEN and recorded["derived"] == ["slope", "aspect"]
    assert recorded["checksum"] == layers.checksum()
    assert all(Path(v["path"]).is_absolute() for v in recorded["layers"].values())
    with rasterio.open(out / "dominant_species.tif") as ds:
        tags = ds.tags()
        pred = ds.read(1)
        bounds = ds.bounds
    assert set(tags["TREEMAP_AUX_LAYERS"].split(",")) == GIVEN | {"slope", "aspect"}
    with rasterio.open(small_world.truth_species) as ds:
        from rasterio.windows import from_bounds

        truth = ds.read(1, window=from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths(),
                        boundless=True, fill_value=0)
    trees = (truth >= 1) & (truth <= 10) & (pred != 255)
    assert trees.sum() > 3000
    top1 = float(np.mean(pred[trees] == truth[trees] - 1))
    assert top1 > 0.6 and not math.isnan(top1), top1  # another seed's world: stands and layers it never saw
