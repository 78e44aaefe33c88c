"""Harmonisation, SCL masking, acquisition mosaics and monthly composites against a NumPy reference that reads the
COGs with plain rasterio and index arithmetic (no warping)."""

import warnings
from datetime import date

import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from treemap.aoi import AOI
from treemap.composite import clear_mask, harmonise, mask_reflectance, monthly_composites, mosaic_first_valid
from treemap.cube import MODEL_BANDS, TileCube
from treemap.grid import plan_tiles, to_crs
from treemap.grid import scenes_for_tile
from treemap.stac import Query, open_catalog


def test_harmonise_pre_and_post_baseline_04_agree():
    rng = np.random.default_rng(0)
    surface = rng.uniform(0.01, 0.6, size=(1, 10, 8, 8))
    old = np.rint(surface * 10000).astype(np.uint16)            # baseline 03.01: no offset
    new = (np.rint(surface * 10000) + 1000).astype(np.uint16)    # baseline 04.00: +1000 DN
    dn = np.concatenate([old, new])
    refl = harmonise(dn, np.array([1e-4, 1e-4], np.float32), np.array([0.0, -0.1], np.float32))
    np.testing.assert_allclose(refl[0], refl[1], atol=1e-6)
    np.testing.assert_allclose(refl[0], surface[0], atol=0.51e-4)


def test_nodata_becomes_nan():
    dn = np.array([[[[0, 1500]]]], dtype=np.uint16)
    refl = harmonise(dn, np.array([1e-4], np.float32), np.array([-0.1], np.float32))
    assert np.isnan(refl[0, 0, 0, 0]) and refl[0, 0, 0, 1] == pytest.approx(0.05)


def test_scl_mask_classes():
    scl = np.arange(12, dtype=np.uint8).reshape(1, 1, 12)
    assert np.flatnonzero(clear_mask(scl)).tolist() == [4, 5, 6, 7, 11]
    refl = np.ones((1, 2, 1, 12), np.float32)
    mask_reflectance(refl, scl)
    assert np.isnan(refl[0, :, 0, [0, 1, 2, 3, 8, 9, 10]]).all()
    assert not np.isnan(refl[0, :, 0, [4, 5, 6, 7, 11]]).any()


def test_mosaic_takes_first_valid_scene():
    a = np.array([[[1.0, np.nan]], [[2.0, np.nan]]], np.float32)   # (B=2, H=1, W=2)
    b = np.array([[[9.0, 3.0]], [[9.0, 4.0]]], np.float32)
    out = mosaic_first_valid(np.stack([a, b]))
    assert out[:, 0, 0].tolist() == [1.0, 2.0] and out[:, 0, 1].tolist() == [3.0, 4.0]


def _read_on_grid(href: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    with rasterio.open(href) as ds:
        arr = ds.read(1)
        t = ds.transform
    cols = np.floor((xs - t.c) / t.a).astype(int)
    rows = np.floor((ys - t.f) / t.e).astype(int)
    out = np.zeros((ys.size, xs.size), dtype=arr.dtype)
    ok_r = (rows >= 0) & (rows < arr.shape[0])
    ok_c = (cols >= 0) & (cols < arr.shape[1])
    out[np.ix_(ok_r, ok_c)] = arr[np.ix_(rows[ok_r], cols[ok_c])]
    return out


def reference_composites(scenes, tile) -> np.ndarray:
    h, w = tile.read_shape
    x0, _, _, y1 = tile.read_bounds
    xs = x0 + (np.arange(w) + 0.5) * tile.resolution
    ys = y1 - (np.arange(h) + 0.5) * tile.resolution
    per_acq: dict = {}
    for scene in scenes:
        dn = np.stack([_read_on_grid(scene.bands[b], xs, ys) for b in MODEL_BANDS]).astype(np.float64)
        scl = _read_on_grid(scene.bands["SCL"], xs, ys)
        refl = dn * scene.scale + scene.offset
        refl[:, (dn == 0).any(axis=0)] = np.nan
        refl[:, ~np.isin(scl, [4, 5, 6, 7, 11])] = np.nan
        key = ((scene.platform or "").lower(), scene.datetime.date())
        if key in per_acq:
            prev = per_acq[key]
            fill = np.isnan(prev).any(axis=0) & ~np.isnan(refl).any(axis=0)
            prev[:, fill] = refl[:, fill]
        else:
            per_acq[key] = refl
    out = np.full((12, 10, h, w), np.nan)
    counts = np.zeros((12, h, w), dtype=int)
    for month in range(1, 13):
        stack = [v for (_, d), v in per_acq.items() if d.month == month]
        counts[month - 1] = sum((~np.isnan(v).any(axis=0)).astype(int) for v in stack) if stack else 0
        if stack:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[month - 1] = np.nanmedian(np.stack(stack), axis=0)
    return out, counts


def test_monthly_composites_match_numpy_reference(small_world):
    catalog = open_catalog(str(small_world.catalog))
    spec = small_world.spec
    # a tile straddling the strip seen by both MGRS-like tiles, with an odd size and an off-origin position
    x_mid = spec.x_min + spec.width_px * 5.0
    local = box(x_mid - 230, spec.y_max - 610, x_mid + 170, spec.y_max - 330)
    aoi = AOI(to_crs(local, 4326, src_epsg=spec.epsg))
    plan = plan_tiles(aoi, tile_size=4096)
    tile = plan.tiles[0]
    scenes = scenes_for_tile(catalog.search(Query(aoi.bounds, date(spec.year, 1, 1), date(spec.year, 12, 31))), tile)
    tiles_seen = {s.mgrs_tile for s in scenes}
    assert len(tiles_seen) == 2, "the test tile must be covered by both MGRS-like tiles"
    comps, counts = monthly_composites(TileCube(scenes, tile))
    ref, ref_counts = reference_composites(scenes, tile)
    assert comps.shape == (12, 10) + tile.read_shape
    np.testing.assert_array_equal(np.isnan(comps), np.isnan(ref))
    np.testing.assert_allclose(comps, ref, rtol=0, atol=1e-6, equal_nan=True)
    # clouds leave gaps in single scenes, but most month composites are filled
    assert 0.5 < np.mean(~np.isnan(comps[:, 0])) <= 1.0
    # one acquisition seen by both MGRS-like tiles counts once (mosaicked, not double counted)
    np.testing.assert_array_equal(counts, ref_counts)
    assert counts.max() <= 31 // spec.cadence_days + 1 < len([s for s in scenes if s.datetime.month == 7])
    # all present values are plausible harmonised reflectances
    present = comps[~np.isnan(comps)]
    assert present.min() > -0.05 and present.max() < 1.2


@pytest.mark.parametrize("t", [1, 2, 5, 8])
def test_nanmedian_matches_numpy(t):
    from treemap.composite import nanmedian_time

    rng = np.random.default_rng(t)
    stack = rng.normal(size=(t, 3, 20, 20)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.4] = np.nan
    stack[:, :, 0, 0] = np.nan  # a pixel never observed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(stack, axis=0)
    np.testing.assert_array_equal(nanmedian_time(stack), expected.astype(np.float32))

