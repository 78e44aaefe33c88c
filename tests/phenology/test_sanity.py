"""Regression tests of two faults seen on real crop series, the final guard, and input sanity.

The faults (Sentinel-2 L2A with SCL, winter cereals in Flanders, 2018):

* a pixel whose series ends during a cycle (QA 3) got a peak date long after the series' end (the centre of the top
  came from a crossing extrapolated past the last node, dividing by the slope of an almost flat top);
* green-down dates in reverse order (senescence > midgreendown > dormancy, after the last image) flagged QA 4: a high
  plateau at the series end passed for the cycle's dormant floor, the side's amplitude came out negative, and the
  crossings were extrapolated beyond the data. The same on the green-up side at the series start.

Both are rebuilt here from real pixels of tests/data/flanders (the SCL-masked EVI of the 2018 patch, as is and
mirrored in time) and from synthetic series of the same shape. Each test asserts what the old code got wrong.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from treemap.phenology import (FLOAT_FIELDS, QA_FEW_OBSERVATIONS, QA_GAP, QA_GOOD, QA_NO_CYCLE, QA_PARTIAL,
                               PhenologyResult, PhenologyStats, evi, phenology_metrics)
from treemap.phenology import sanity
from treemap.phenology.sanity import enforce

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_properties import assert_possible  # noqa: E402  (the invariants, checked from the raw inputs)

DATA = Path(__file__).resolve().parents[1] / "data" / "flanders" / "flanders_2018.npz"
ENGINES = ["numba", "numpy"]
STEP = 5.0


def _lg(x):
    return 1.0 / (1.0 + np.exp(-x))


def _doy(dates, year):
    return (np.asarray(dates).astype("datetime64[D]") - np.datetime64(f"{year}-01-01")).astype(np.int64) + 1.0


@pytest.fixture(scope="module")
def patch():
    """EVI of the 2018 patch (46 dates, 4096 pixels) and the SCL clear mask ({4, 5, 6, 7, 11}, data present)."""
    z = np.load(DATA)
    blue, red, nir = (z[k].astype(np.float32) / 10000 for k in ("B02", "B04", "B08"))
    scl = z["SCL"].repeat(2, axis=1).repeat(2, axis=2)  # 20 m classes onto the 10 m grid
    clear = np.isin(scl, (4, 5, 6, 7, 11)) & (z["B02"] > 0)
    dates = z["datetime"].astype("datetime64[D]")
    return dates, evi(blue, red, nir).reshape(len(dates), -1), clear.reshape(len(dates), -1)


# ------------------------------------------------------------------------------- fault 1: a series ending mid-cycle

#: pixels of the patch whose 2018 cycle is cut by the series' end (27 November) on an almost flat top: the old code
#: put their peak on days 404.7, 411.1, 419.1, 446.8 and 42412.5
CUT_AT_END = [1261, 1262, 2086, 2280, 2533]


@pytest.mark.parametrize("engine", ENGINES)
def test_real_series_ending_mid_cycle_keeps_its_peak_inside(patch, engine):
    dates, values, clear = patch
    res = phenology_metrics(dates, values[:, CUT_AT_END], clear[:, CUT_AT_END], 2018, engine=engine)
    last = _doy(dates[-1], 2018)  # 331
    assert np.all(res.qa == QA_PARTIAL)
    assert np.all(np.isnan(res.dormancy)) and np.all(np.isnan(res.senescence))
    assert np.all(np.isfinite(res.peak))
    assert np.all(res.peak <= last + STEP), res.peak  # was 404.7 .. 42412.5
    assert np.all(res.peak >= res.maturity), (res.peak, res.maturity)
    assert_possible(res, dates, values[:, CUT_AT_END], clear[:, CUT_AT_END], year=2018)
    assert res.stats.n_guarded_pixels == 0  # fixed in the kernels, not only by the guard


@pytest.mark.parametrize("engine", ENGINES)
def test_synthetic_winter_cereal_cut_by_the_series_end(engine):
    """Sown in autumn, green over winter, at its top when the series stops in early June: the old code put the peak
    on day 318, five months after the last image (day 157)."""
    dates = np.datetime64("2020-07-01") + np.arange(0, 345, 5)
    t = _doy(dates, 2021)
    v = 0.12 + 0.3 * _lg((t + 75) / 8) + 0.38 * _lg((t - 95) / 8) - 0.68 * _lg((t - 200) / 8)
    values = v.astype(np.float32)[:, None]
    res = phenology_metrics(dates, values, None, 2021, engine=engine)
    assert res.qa[0] == QA_PARTIAL and np.isnan(res.dormancy[0])
    assert res.maturity[0] <= res.peak[0] <= t[-1] + STEP, res.peak  # was 318.1
    assert 95 < res.maturity[0] < 125
    assert_possible(res, dates, values, None, year=2021)


# ------------------------------------------------------------------------ fault 2: green-down dates in reverse order


def _mirrored(dates, year):
    """The dates mirrored in time about the middle of ``year``."""
    return np.datetime64(f"{year}-01-01") + (np.datetime64(f"{year}-12-31") - dates)


#: pixels of the patch that start 2018 on a green plateau level with their spring top; mirrored in time they end on
#: one, the green-down of the issue: the old code gave 3753 QA 0 with senescence 348.7 > midgreendown 333.7 >
#: dormancy 320.5 and 1386 QA 4 with 373.4 > 353.6 > 336.3 (the last image on day 355); as they are, the same on
#: their green-up side (1386: greenup 29.7 > midgreenup 12.4 > maturity -7.4, before the first image)
PLATEAU = [1386, 3753]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mirror", [False, True])
def test_real_plateau_at_a_series_end_is_no_base(patch, engine, mirror):
    dates, values, clear = patch
    if mirror:
        dates = _mirrored(dates, 2018)
    res = phenology_metrics(dates, values[:, PLATEAU], clear[:, PLATEAU], 2018, engine=engine)
    cut = ("senescence", "midgreendown", "dormancy") if mirror else ("greenup", "midgreenup", "maturity")
    kept = ("greenup", "midgreenup", "maturity") if mirror else ("senescence", "midgreendown", "dormancy")
    assert np.all(res.qa == QA_PARTIAL), res.qa  # was 4 and 0
    for name in cut:
        assert np.all(np.isnan(getattr(res, name))), name
    for a, b in zip(kept, kept[1:]):
        assert np.all(getattr(res, a) <= getattr(res, b)), (a, b)
    assert_possible(res, dates, values[:, PLATEAU], clear[:, PLATEAU], year=2018)
    assert res.stats.n_guarded_pixels == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_synthetic_green_down_cut_by_the_series_end(engine):
    """Bare until August, then a crop that reaches a plateau and is still green when the series ends (the last image
    on day 332): the old code gave QA 4 with senescence 418.9 > midgreendown 369.1 > dormancy 325.6."""
    dates = np.datetime64("2020-07-01") + np.arange(0, 518, 5)
    t = _doy(dates, 2021)
    v = 0.15 + 0.6 * _lg((t - 250) / 7) - 0.01 * _lg((t - 285) / 5)
    values = v.astype(np.float32)[:, None]
    res = phenology_metrics(dates, values, None, 2021, engine=engine)
    assert res.qa[0] == QA_PARTIAL
    assert np.isnan(res.senescence[0]) and np.isnan(res.midgreendown[0]) and np.isnan(res.dormancy[0])
    assert 230 < res.greenup[0] < res.midgreenup[0] < res.maturity[0] <= res.peak[0] <= t[-1] + STEP
    assert_possible(res, dates, values, None, year=2021)


@pytest.mark.parametrize("engine", ENGINES)
def test_real_patch_has_no_impossible_date(patch, engine):
    """All 4096 pixels, as they are and mirrored in time: every invariant, with nothing left for the guard."""
    dates, values, clear = patch
    for d in (dates, _mirrored(dates, 2018)):
        res = phenology_metrics(d, values, clear, 2018, engine=engine)
        assert_possible(res, d, values, clear, year=2018)
        assert res.stats.n_guarded_pixels == 0, res.stats
        assert np.count_nonzero(res.qa == QA_GOOD) > 3000
        assert np.nanmax(res.peak) <= _doy(d, 2018).max() + STEP


# ----------------------------------------------------------------------------------------------------- the guard


def _result(out, qa):
    n = qa.shape[0]
    return PhenologyResult(**{name: out[i] for i, name in enumerate(FLOAT_FIELDS)}, n_clear=np.zeros(n, np.int32),
                           qa=qa, n_cycles=np.ones(n, np.uint8), year=2021)


def _out(*dates, next_greenup=np.nan):
    out = np.full((len(FLOAT_FIELDS), 1), np.nan, np.float32)
    out[:7, 0] = dates
    out[7:10, 0] = (0.1, 0.6, 0.5)
    out[10, 0] = out[6, 0] - out[0, 0]
    out[11, 0] = next_greenup
    return out


def test_guard_keeps_a_possible_result():
    out = _out(100, 110, 120, 150, 200, 210, 220, next_greenup=300)
    qa = np.array([QA_GOOD], np.uint8)
    ref = out.copy()
    assert enforce(out, qa, np.array([10.0]), np.array([330.0]), STEP) == (0, 0)
    np.testing.assert_array_equal(out, ref)
    assert qa[0] == QA_GOOD
    # dates in the neighbouring years are fine inside the series; up to one step outside its observations too
    out = _out(-40, -20, -5, 60, 150, 170, 199)
    assert enforce(out, qa, np.array([-36.0]), np.array([195.0]), STEP) == (0, 0)


def test_guard_cuts_a_side_beyond_the_series():
    out = _out(100, 110, 120, 150, 300, 335, 340)  # dormancy after the last observation (330) + one step
    qa = np.array([QA_GAP], np.uint8)
    assert enforce(out, qa, np.array([10.0]), np.array([330.0]), STEP) == (1, 3)
    assert qa[0] == QA_PARTIAL
    assert np.all(np.isnan(out[4:7, 0])) and np.isnan(out[10, 0])  # the side and the season length
    np.testing.assert_array_equal(out[:4, 0], [100, 110, 120, 150])


def test_guard_clears_reversed_sides_and_a_stray_peak():
    out = _out(100, 110, 120, 130, 342, 331, 320)  # the green-down of the issue
    qa = np.array([QA_GAP], np.uint8)
    enforce(out, qa, np.array([10.0]), np.array([400.0]), STEP)
    assert qa[0] == QA_PARTIAL and np.all(np.isnan(out[4:7, 0])) and out[3, 0] == 130
    out = _out(np.nan, np.nan, np.nan, 1513, np.nan, np.nan, np.nan)  # the peak of the issue, on a cut cycle
    qa = np.array([QA_PARTIAL], np.uint8)
    assert enforce(out, qa, np.array([10.0]), np.array([331.0]), STEP) == (1, 1)
    assert np.isnan(out[3, 0]) and qa[0] == QA_PARTIAL
    out = _out(100, 110, 120, 90, 200, 210, 220)  # a peak before maturity
    qa = np.array([QA_GOOD], np.uint8)
    enforce(out, qa, np.array([10.0]), np.array([330.0]), STEP)
    assert np.isnan(out[3, 0]) and qa[0] == QA_PARTIAL and np.all(np.isfinite(out[[0, 1, 2, 4, 5, 6], 0]))


def test_guard_makes_qa_agree_with_the_dates():
    out = np.concatenate([_out(100, 110, 120, 150, 200, 210, 220)] * 3, axis=1)
    out[1, 2] = np.nan  # QA 0 with a hole in the green-up side
    qa = np.array([QA_FEW_OBSERVATIONS, QA_NO_CYCLE, QA_GOOD], np.uint8)
    enforce(out, qa, np.full(3, 10.0), np.full(3, 330.0), STEP)
    assert np.all(np.isnan(out[:, 0]))  # QA 1: every metric NaN
    assert np.all(np.isnan(out[:7, 1])) and np.isfinite(out[8, 1])  # QA 2: no dates, levels kept
    assert qa[2] == QA_PARTIAL and np.all(np.isnan(out[:3, 2])) and np.all(np.isfinite(out[3:7, 2]))
    # next_greenup before dormancy or outside the series goes
    out = _out(100, 110, 120, 150, 200, 210, 220, next_greenup=215)
    assert enforce(out, np.array([QA_GOOD], np.uint8), np.array([10.0]), np.array([330.0]), STEP) == (1, 1)
    assert np.isnan(out[11, 0])


def test_guard_counts_on_the_result_are_zero_for_good_data():
    dates = np.datetime64("2020-07-01") + np.arange(0, 735, 5)
    t = _doy(dates, 2021)
    v = 0.12 + 0.5 * (_lg((t - 120) / 8) - _lg((t - 270) / 10) + _lg((t - 485) / 8) + _lg((t + 245) / 8)
                      - _lg((t + 95) / 10))
    res = phenology_metrics(dates, v.astype(np.float32), None, 2021)
    assert res.qa[0] == QA_GOOD
    assert res.stats.n_guarded_pixels == 0 and res.stats.n_guarded_dates == 0


# --------------------------------------------------------------------------------------------------- input sanity


def test_implausible_observations_are_rejected_and_counted():
    dates = np.datetime64("2020-07-01") + np.arange(0, 735, 5)
    t = _doy(dates, 2021)
    good = (0.12 + 0.5 * (_lg((t - 120) / 8) - _lg((t - 270) / 10))).astype(np.float32)
    values = np.stack([good] * 3, axis=1)
    clear = np.ones(values.shape, bool)
    values[10, 0] = np.inf
    values[11, 0] = np.nan
    values[12, 1] = 1.6  # implausible
    values[13, 1] = -1e30
    values[14, 2] = 1.2  # plausible, outside valid_range (-1, 1)
    values[15, 2] = 7.0  # implausible, but not marked clear: not counted
    clear[15, 2] = False
    res = phenology_metrics(dates, values, clear, 2021)
    s = res.stats
    window = np.count_nonzero((t > -183) & (t <= 365 + 183))
    assert s.n_observations == 3 * window
    assert s.n_flagged_clear == 3 * window - 1
    assert (s.n_nonfinite, s.n_implausible, s.n_out_of_range) == (2, 2, 1)
    assert s.n_rejected == 5 and s.n_used == s.n_flagged_clear - 5
    assert s.max_abs == pytest.approx(1e30, rel=1e-6)
    assert not s.looks_unscaled
    assert np.all(res.qa == QA_GOOD)  # one bad observation costs a pixel nothing
    in_year = (t >= 1) & (t <= 365)
    rejected = ([10, 11], [12, 13], [14])  # per pixel (row 15 of pixel 2 was not marked clear anyway)
    np.testing.assert_array_equal(res.n_clear, [in_year.sum() - in_year[rows].sum() for rows in rejected])


def test_valid_range_must_be_plausible():
    dates = np.datetime64("2021-01-01") + np.arange(0, 365, 5)
    values = np.full((len(dates), 1), 0.3, np.float32)
    with pytest.raises(ValueError, match="valid_range"):
        phenology_metrics(dates, values, None, 2021, valid_range=(0, 10000))
    with pytest.raises(ValueError, match="valid_range"):
        phenology_metrics(dates, values, None, 2021, valid_range=(0.5, 0.2))
    res = phenology_metrics(dates, values, None, 2021, valid_range=(-1.5, 1.5))
    assert res.qa[0] == QA_NO_CYCLE


@pytest.fixture
def warnings_armed():
    sanity.reset_warnings()
    yield
    sanity.reset_warnings()


def test_unscaled_input_warns_once(patch, caplog, warnings_armed):
    """EVI computed from digital numbers (the bands not divided by 10000): the observations are rejected (QA 1) and
    one warning says why; a second call does not repeat it."""
    z = np.load(DATA)
    _, _, clear = patch
    dn = evi(*(z[k].astype(np.float32) for k in ("B02", "B04", "B08"))).reshape(clear.shape[0], -1)
    dates = z["datetime"]
    with caplog.at_level(logging.WARNING, logger="treemap.phenology"):
        res = phenology_metrics(dates, dn, clear, 2018)
        again = phenology_metrics(dates, dn[:, :100], clear[:, :100], 2018)
    msgs = [r.getMessage() for r in caplog.records if "unscaled" in r.getMessage()]
    assert len(msgs) == 1, msgs
    assert "DN / 10000" in msgs[0] and "(DN - 1000) / 10000" in msgs[0] and "QA 1" in msgs[0]
    assert res.stats.looks_unscaled and again.stats.looks_unscaled
    assert res.stats.share_implausible > 0.4
    assert np.count_nonzero(res.qa == QA_FEW_OBSERVATIONS) > 3000
    # re-armed, the index stored x 10000 (an int16 product read back) warns too
    sanity.reset_warnings()
    caplog.clear()
    refl = evi(*(z[k].astype(np.float32) / 10000 for k in ("B02", "B04", "B08"))).reshape(clear.shape[0], -1)
    with caplog.at_level(logging.WARNING, logger="treemap.phenology"):
        res = phenology_metrics(dates, np.rint(refl * 10000), clear, 2018)
    assert np.all(res.qa == QA_FEW_OBSERVATIONS)
    assert sum("unscaled" in r.getMessage() for r in caplog.records) == 1


def test_scaled_input_does_not_warn(patch, caplog, warnings_armed):
    dates, values, clear = patch
    with caplog.at_level(logging.WARNING, logger="treemap.phenology"):
        res = phenology_metrics(dates, values, clear, 2018)
        raw = phenology_metrics(dates, values, None, 2018)  # unmasked: clouds make EVI explode now and then
    assert not [r for r in caplog.records if "unscaled" in r.getMessage()]
    assert not res.stats.looks_unscaled and not raw.stats.looks_unscaled
    assert res.stats.n_implausible < 0.001 * res.stats.n_flagged_clear
    assert raw.stats.n_implausible > res.stats.n_implausible


def test_stats_add_up_and_travel_with_the_result():
    a = PhenologyStats(n_observations=10, n_flagged_clear=8, n_implausible=6, max_abs=3000.0, n_guarded_pixels=1)
    b = PhenologyStats(n_observations=30, n_flagged_clear=20, n_used=20, max_abs=0.9)
    total = PhenologyStats.combine([a, None, b])
    assert total == a + b
    assert (total.n_observations, total.n_flagged_clear, total.n_implausible, total.n_used) == (40, 28, 6, 20)
    assert total.max_abs == 3000.0 and total.n_guarded_pixels == 1
    assert a.looks_unscaled and not b.looks_unscaled and not total.looks_unscaled  # 6 of 28
    d = total.as_dict()
    assert d["n_rejected"] == 6 and d["looks_unscaled"] is False and d["max_abs"] == 3000.0
    assert PhenologyStats().as_dict()["max_abs"] is None
    dates = np.datetime64("2021-01-01") + np.arange(0, 365, 5)
    res = phenology_metrics(dates, np.full((len(dates), 4), 0.3, np.float32), None, 2021)
    assert "stats" not in res.as_dict() and res.take([0, 1]).stats == res.stats
    empty = phenology_metrics(dates[:1], np.ones((1, 2)), None, 2021)  # no grid: stats still there
    assert empty.stats.n_observations == 2 and np.all(empty.qa == QA_FEW_OBSERVATIONS)
