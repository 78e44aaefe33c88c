"""The built-in tree / not-tree rule (treemap.treemask) on the demo world's class end-members rendered as the demo
renders them, on edited time series (snow, missing months, the other hemisphere), and on the small demo world."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from treemap.cube import MODEL_BANDS
from treemap.demo.classes import (BUILT_UP, CROP_CALENDARS, CROPLAND, FOREST_FLOOR, GRASSLAND, URBAN_MATERIALS, WATER,
                                  class_table)
from treemap.demo.layout import Fields, surface
from treemap.demo.spec import BANDS
from treemap.treemask import DEFAULT_RULE, FEATURES, NODATA, MaskRule, mask_features, tree_mask

_TO_MODEL = [BANDS.index(b) for b in MODEL_BANDS]
#: Fresh snow, MODEL_BANDS order (B02 B03 B04 B08 B05 B06 B07 B8A B11 B12).
SNOW = np.array((0.80, 0.78, 0.75, 0.72, 0.74, 0.73, 0.72, 0.71, 0.12, 0.10), dtype=np.float32)
JAN, FEB, MAR, NOV, DEC = 0, 1, 2, 10, 11


def _render(on: np.ndarray, off: np.ndarray, autumn: np.ndarray, timing: np.ndarray, year: int = 2022) -> np.ndarray:
    """Monthly composites (12, 10, 1, N) of N clean demo pixels: the demo's surface (treemap.demo.layout.surface)
    on its acquisition days (every 5 days from 3 January), median per month. on/off/autumn: (10, N) in demo band
    order; timing: (4, N) sos, eos, rup, rdn."""
    n = on.shape[1]
    f = Fields(codes=np.zeros((1, n), np.uint8), off=off.astype(np.float32), dv=(on - off).astype(np.float32),
               autumn=autumn.astype(np.float32), sos=timing[0].astype(np.float32),
               eos=timing[1].astype(np.float32), rup=timing[2].astype(np.float32),
               rdn=timing[3].astype(np.float32), blossom=np.zeros(n, np.float32),
               blossom_doy=np.full(n, 103.0, np.float32), has_cycle=np.ones(n, bool))
    days = [dt.date(year, 1, 3) + dt.timedelta(days=5 * k) for k in range(73)]
    days = [d for d in days if d.year == year]
    comp = np.empty((12, 10, 1, n), np.float32)
    for month in range(1, 13):
        doys = np.array([d.timetuple().tm_yday for d in days if d.month == month], np.float32)[:, None]
        refl = surface(f, doys)  # (10, T, N)
        comp[month - 1, :, 0] = np.median(refl, axis=1)[_TO_MODEL]
    return comp


def demo_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Every demo class as the demo world builds it: trees at full canopy cover and at 75 % (the rest forest floor,
    the demo's lowest cover), grassland early/late, cropland on both calendars, water, each built-up material.
    Returns composites (12, 10, 1, N) and the truth codes (N,)."""
    on, off, aut, timing, codes = [], [], [], [], []

    def add(code, c_on, c_off, c_aut, t):
        on.append(np.asarray(c_on, np.float64))
        off.append(np.asarray(c_off, np.float64))
        aut.append(np.asarray(c_aut, np.float64))
        timing.append(t)
        codes.append(code)

    for c in class_table():
        t = (c.sos, c.eos, c.rup, c.rdn)
        if c.kind == "tree":
            for cover in (1.0, 0.75):
                mix = lambda s: np.asarray(s) * cover + FOREST_FLOOR * (1 - cover)  # noqa: E731
                add(c.code, mix(c.on), mix(c.off), c.autumn, t)
        elif c.code == GRASSLAND:
            for shift in (-10.0, 0.0, 10.0):
                add(c.code, c.on, c.off, c.autumn, (c.sos + shift, c.eos - shift, c.rup, c.rdn))
        elif c.code == CROPLAND:
            for cal in CROP_CALENDARS:
                for shift in (-7.0, 7.0):
                    add(c.code, c.on, c.off, c.autumn, (cal[0] + shift, cal[1] + shift, cal[2], cal[3]))
        elif c.code == WATER:
            add(c.code, c.on, c.off, c.autumn, t)
        elif c.code == BUILT_UP:
            for material in URBAN_MATERIALS:
                add(c.code, material, material, c.autumn, t)
    comp = _render(np.array(on).T, np.array(off).T, np.array(aut).T, np.array(timing).T)
    return comp, np.array(codes)


@pytest.fixture(scope="module")
def pixels():
    return demo_pixels()


def _is_tree(codes: np.ndarray) -> np.ndarray:
    return (codes >= 1) & (codes <= 100)


def _deciduous(codes: np.ndarray) -> np.ndarray:
    names = {c.code: c.name for c in class_table()}
    return np.array([names[int(c)].split()[0] in ("Larix", "Betula", "Carpinus", "Fraxinus", "Castanea",
                                                 "Prunus", "Ulmus") for c in codes])


# ------------------------------------------------------------------------------------------- end-members


def test_every_demo_class_end_member(pixels):
    comp, codes = pixels
    mask = tree_mask(comp)[0]
    assert mask.dtype == np.uint8
    assert (mask == NODATA).sum() == 0
    np.testing.assert_array_equal(mask, _is_tree(codes).astype(np.uint8),
                                  err_msg=f"codes misclassified: {codes[mask != _is_tree(codes)].tolist()}")


def test_features_have_the_documented_physics(pixels):
    comp, codes = pixels
    f = {k: v[0] for k, v in mask_features(comp).items()}
    tree, grass, crop = _is_tree(codes), codes == GRASSLAND, codes == CROPLAND
    # water and built-up never reach the peak NDVI gate, every vegetated class does
    assert f["peak_ndvi"][np.isin(codes, (WATER, BUILT_UP))].max() < DEFAULT_RULE.min_peak_ndvi
    assert f["peak_ndvi"][tree | grass | crop].min() > DEFAULT_RULE.min_peak_ndvi
    # crowns are rough (flat visible spectrum, blue shade) and dark in SWIR; fields have a bright bare phase
    assert f["peak_blue_green"][tree].min() > f["peak_blue_green"][grass].max()
    assert np.median(f["peak_swir2"][tree]) < f["peak_swir2"][grass].min()
    assert f["dormant_vis"][crop].min() > f["dormant_vis"][tree].max()
    # each weight has the sign the physics gives
    assert [np.sign(w) for w in DEFAULT_RULE.weight] == [1, -1, -1] and FEATURES[0] == "peak_blue_green"
    # the peak season is anchored on each pixel: cropland calendars differ, their peak features barely do
    assert np.ptp(f["peak_ndvi"][crop]) < 0.05


def test_other_hemisphere_gives_the_same_mask(pixels):
    comp, _ = pixels
    base = tree_mask(comp)
    for shift in (1, 6, 11):
        np.testing.assert_array_equal(tree_mask(np.roll(comp, shift, axis=0)), base)


# ------------------------------------------------------------------------------------------- snow


def _snow_winter(comp: np.ndarray, share: float = 1.0) -> np.ndarray:
    out = comp.copy()
    for m in (DEC, JAN, FEB):
        out[m] = (1 - share) * out[m] + share * SNOW[:, None, None]
    return out


def test_snow_months_do_not_count_as_bare(pixels):
    comp, codes = pixels
    snowy = _snow_winter(comp)
    snowy[MAR] = 0.5 * comp[MAR] + 0.5 * SNOW[:, None, None]  # melting: partial snow
    snowy[NOV] = 0.7 * comp[NOV] + 0.3 * SNOW[:, None, None]
    np.testing.assert_array_equal(tree_mask(snowy), tree_mask(comp))
    f_snow, f_clear = mask_features(snowy), mask_features(comp)
    assert (f_snow["n_snow_free"] < f_clear["n_snow_free"]).all()
    assert (f_snow["n_valid"] == 12).all()
    dec = _deciduous(codes)
    assert dec.sum() >= 10
    # were snow months bare, every deciduous forest would look like a field in winter
    no_snow_test = dataclasses.replace(DEFAULT_RULE, snow_ndsi=2.0, dormant_max_ndsi=2.0)
    fooled = tree_mask(snowy, no_snow_test)[0]
    assert (fooled[dec] == 0).all()
    assert mask_features(snowy, rule=no_snow_test)["dormant_vis"][0][dec].min() > 0.3


def test_snow_test_spares_water():
    water = np.broadcast_to(np.array((0.045, 0.055, 0.035, 0.011, 0.026, 0.016, 0.013, 0.010, 0.006, 0.004),
                                     np.float32)[None, :, None, None], (12, 10, 1, 1))
    f = mask_features(water)
    assert f["n_snow_free"][0, 0] == 12  # high NDSI, but dark: not snow
    assert tree_mask(water)[0, 0] == 0


def test_all_snow_is_not_tree():
    comp = np.broadcast_to(SNOW[None, :, None, None], (12, 10, 2, 3)).copy()
    assert (tree_mask(comp) == 0).all()


# ------------------------------------------------------------------------------------------- missing months


def test_missing_months_are_tolerated(pixels):
    comp, codes = pixels
    truth = _is_tree(codes).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        holes = comp.copy()
        for i in range(codes.size):
            holes[rng.choice(12, size=2, replace=False), :, 0, i] = np.nan
        np.testing.assert_array_equal(tree_mask(holes)[0], truth)


def test_winter_gap_of_four_months_is_fine(pixels):
    comp, codes = pixels
    holes = comp.copy()
    holes[[NOV, DEC, JAN, FEB]] = np.nan
    np.testing.assert_array_equal(tree_mask(holes)[0], _is_tree(codes).astype(np.uint8))


def test_nan_in_one_band_drops_that_month(pixels):
    comp, _ = pixels
    one = comp.copy()
    one[6, 8] = np.nan  # July SWIR1 missing
    f = mask_features(one)
    assert (f["n_valid"] == 11).all()
    np.testing.assert_array_equal(tree_mask(one), tree_mask(comp))


def test_counts_mark_months_missing(pixels):
    comp, _ = pixels
    counts = np.ones((12,) + comp.shape[2:], np.uint16)
    np.testing.assert_array_equal(tree_mask(comp, counts=counts), tree_mask(comp))
    counts[:9] = 0  # only three months with a clear acquisition
    assert (tree_mask(comp, counts=counts) == NODATA).all()
    with pytest.raises(ValueError):
        tree_mask(comp, counts=counts[:6])


# ------------------------------------------------------------------------------------------- nodata


def test_nodata_where_too_few_months_or_a_long_gap(pixels):
    comp, codes = pixels
    tree = int(np.flatnonzero(_is_tree(codes))[0])
    series = comp[:, :, :, tree:tree + 1]
    cases = {"none": [], "three": [5, 6, 7], "four": [4, 5, 6, 7], "winter": [2, 3, 4, 5, 6, 7, 8, 9],
             "gap6": [0, 1, 2, 3, 4, 5], "gap5": [0, 1, 2, 3, 4, 5, 6], "wrap": [6, 7, 8, 9, 10, 11, 0]}
    stack = np.full((12, 10, 1, len(cases)), np.nan, np.float32)
    for j, keep in enumerate(cases.values()):
        stack[keep, :, :, j] = series[keep, :, :, 0]
    mask = dict(zip(cases, tree_mask(stack)[0].tolist()))
    # < 4 clear months; a run of 6+ missing months (a whole half-year may be the unseen growing season)
    assert mask["none"] == mask["three"] == NODATA
    assert mask["four"] == NODATA  # 8 missing months in a row
    assert mask["gap6"] == NODATA
    assert mask["gap5"] == 1 and mask["winter"] == 1 and mask["wrap"] == 1
    f = mask_features(stack)
    assert f["max_gap"][0].tolist() == [12, 9, 8, 4, 6, 5, 5]


def test_output_dtype_shape_and_determinism(pixels):
    comp, _ = pixels
    big = np.tile(comp, (1, 1, 3, 2))  # (12, 10, 3, 2N)
    a = tree_mask(big)
    assert a.dtype == np.uint8 and a.shape == big.shape[2:]
    assert set(np.unique(a).tolist()) <= {0, 1, 255}
    np.testing.assert_array_equal(a, tree_mask(big.copy()))
    np.testing.assert_array_equal(a, tree_mask(big.astype(np.float64)))
    np.testing.assert_array_equal(a[0], a[2])
    feats = mask_features(big)
    for name in ("peak_ndvi",) + FEATURES:
        assert feats[name].dtype == np.float32 and feats[name].shape == big.shape[2:]
    with pytest.raises(ValueError):
        tree_mask(big[:, :9])


def test_mask_rule_is_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_RULE.bias = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        MaskRule(weight=(1.0, 2.0))
    with pytest.raises(ValueError):
        MaskRule(scale=(1.0, 0.0, 1.0))
    assert MaskRule() == DEFAULT_RULE


# ------------------------------------------------------------------------------------------- small demo world


def test_small_demo_world(small_world):
    """The whole small world (seed 7, 200 x 120 px), composited tile by tile as predict does, against its truth."""
    import rasterio
    from rasterio.windows import from_bounds
    from shapely.geometry import box

    from treemap.aoi import AOI
    from treemap.composite import monthly_composites
    from treemap.cube import TileCube
    from treemap.grid import plan_tiles, scenes_for_tile, to_crs
    from treemap.tiles import find_scenes

    s = small_world.spec
    local = box(s.x_min + 10, s.y_max - s.height_px * 10 + 10, s.x_min + s.width_px * 10 - 10, s.y_max - 10)
    aoi = AOI(geometry=to_crs(local, 4326, src_epsg=s.epsg), source="test")
    scenes = find_scenes(str(small_world.catalog), aoi, dt.date(s.year, 1, 1), dt.date(s.year, 12, 31))
    plan = plan_tiles(aoi, tile_size=128, epsg=s.epsg)
    with rasterio.open(small_world.truth_species) as ds:
        win = from_bounds(*plan.bounds, transform=ds.transform).round_offsets().round_lengths()
        truth = ds.read(1, window=win, boundless=True, fill_value=0)
    mask = np.full(truth.shape, NODATA, np.uint8)
    for tile in plan.tiles:
        comp, counts = monthly_composites(TileCube(scenes_for_tile(scenes, tile), tile))
        col, row, w, h = tile.window
        k = tile.halo
        mask[row:row + h, col:col + w] = tree_mask(comp, counts=counts)[k:k + h, k:k + w]
    tree, other = (truth >= 1) & (truth <= 100), truth > 100
    assert tree.sum() > 5000 and other.sum() > 2000
    kept, removed = (mask[tree] == 1).mean(), (mask[other] == 0).mean()
    assert kept >= 0.95 and removed >= 0.95, (kept, removed)
