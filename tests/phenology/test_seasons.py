"""The four phenological seasons and their clear-sky median composites, whole or block by block."""

import numpy as np
import pytest

from treemap.phenology import PhenologyResult, seasonal_windows
from treemap.phenology.tile import SeasonalCompositor, seasonal_composites

YEAR = 2021


def _result(greenup, maturity, senescence, dormancy, next_greenup):
    n = len(greenup)
    nan = np.full(n, np.nan, np.float32)
    f = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return PhenologyResult(greenup=f(greenup), midgreenup=nan, maturity=f(maturity), peak=nan,
                           senescence=f(senescence), midgreendown=nan, dormancy=f(dormancy), minimum=nan,
                           peak_value=nan, amplitude=nan, season_length=nan, next_greenup=f(next_greenup),
                           n_clear=np.zeros(n, np.int32), qa=np.zeros(n, np.uint8), n_cycles=np.ones(n, np.uint8),
                           year=YEAR)


def test_windows_and_the_dormant_season_fallback():
    res = _result([100, 100, np.nan], [150, 150, 150], [250, 250, 250], [300, 300, 300], [470, np.nan, np.nan])
    win = seasonal_windows(res)
    assert win.shape == (4, 2, 3)
    np.testing.assert_array_equal(win[:3, :, 0], [[100, 150], [150, 250], [250, 300]])
    np.testing.assert_array_equal(win[3, :, 0], [300, 470])  # to the next green-up
    np.testing.assert_array_equal(win[3, :, 1], [-65, 100])  # no next green-up: the winter before this cycle
    assert np.isnan(win[0, 0, 2]) and np.isnan(win[3, 1, 2])


def _reference(doy, refl, win, half_width):
    """Straightforward per-pixel medians of the clear observations in each window."""
    t, nb, h, w = refl.shape
    out = np.full((4, nb, h, w), np.nan, np.float32)
    mid = win.mean(axis=1)
    lo, hi = np.maximum(win[:, 0], mid - half_width), np.minimum(win[:, 1], mid + half_width)
    for s in range(4):
        for y in range(h):
            for x in range(w):
                pick = ((doy >= lo[s, y, x]) & (doy <= hi[s, y, x]) & np.isfinite(refl[:, :, y, x]).all(axis=1))
                if pick.any():
                    out[s, :, y, x] = np.median(refl[pick, :, y, x], axis=0)
    return out


@pytest.mark.parametrize("half_width", [15.0, 40.0])
def test_composites_equal_a_plain_reference_whole_and_in_blocks(half_width):
    rng = np.random.default_rng(0)
    h, w, nb = 3, 4, 10
    dates = np.datetime64("2020-10-01") + np.sort(rng.choice(np.arange(0, 540), 110, replace=False))
    refl = rng.uniform(0, 0.5, (len(dates), nb, h, w)).astype(np.float32)
    cloudy = rng.random((len(dates), h, w)) < 0.3
    refl[np.broadcast_to(cloudy[:, None], refl.shape)] = np.nan  # cloudy: all bands
    refl[:, 4][rng.random((len(dates), h, w)) < 0.05] = np.nan  # one band missing: not clear either
    n = h * w
    g = rng.uniform(80, 130, n)
    res = _result(g, g + 50, g + 150, g + 200, np.where(rng.random(n) < 0.5, g + 365, np.nan))
    doy = (dates - np.datetime64(f"{YEAR}-01-01")).astype(int) + 1.0
    expected = _reference(doy, refl, seasonal_windows(res).reshape(4, 2, h, w), half_width)
    whole = seasonal_composites(dates, refl, res, half_width=half_width)
    np.testing.assert_allclose(whole, expected, rtol=1e-6, equal_nan=True)
    assert np.isfinite(whole).mean() > 0.5
    comp = SeasonalCompositor(dates, res, (h, w), nb, half_width=half_width)
    for k in range(0, len(dates), 7):
        comp.add(dates[k:k + 7], refl[k:k + 7])
    np.testing.assert_array_equal(comp.result(), whole)


def test_block_shape_is_checked():
    res = _result([100], [150], [250], [300], [np.nan])
    comp = SeasonalCompositor(np.array(["2021-01-01"], "datetime64[D]"), res, (1, 1), 10)
    with pytest.raises(ValueError):
        comp.add(np.array(["2021-01-01"], "datetime64[D]"), np.zeros((1, 9, 1, 1), np.float32))
    with pytest.raises(ValueError):
        SeasonalCompositor([], res, (2, 1), 10)
