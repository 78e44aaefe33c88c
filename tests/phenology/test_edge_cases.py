"""Bad, odd and degenerate inputs: NaN metrics and a QA code, never an exception."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from treemap.phenology import (QA_FEW_OBSERVATIONS, QA_GAP, QA_GOOD, QA_NO_CYCLE, QA_PARTIAL, TRANSITIONS, evi,
                               ndvi, phenology_metrics)

YEAR = 2021


def _dates(start="2020-07-01", n=147, step=5):
    return np.datetime64(start) + np.arange(n) * step


def _doy(dates):
    return (dates - np.datetime64(f"{YEAR}-01-01")).astype(int) + 1.0


def _cycle(t, sos=120.0, eos=270.0, rup=8.0, rdn=10.0, base=0.12, amp=0.45):
    def lg(x):
        return 1.0 / (1.0 + np.exp(-x))

    v = base + 0 * t
    for off in (-365.0, 0.0, 365.0):
        v = v + amp * (lg((t - sos - off) / rup) - lg((t - eos - off) / rdn))
    return v.astype(np.float32)


def _undefined_dates(res, i):
    return all(np.isnan(getattr(res, name)[i]) for name in TRANSITIONS)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_degenerate_pixels(engine):
    dates = _dates()
    t = _doy(dates)
    good = _cycle(t)
    cols = {
        "good": (good, np.ones(len(t), bool)),
        "constant": (np.full(len(t), 0.3, np.float32), np.ones(len(t), bool)),
        "evergreen": ((0.6 + 0.01 * np.sin(t / 20)).astype(np.float32), np.ones(len(t), bool)),
        "all_cloudy": (good, np.zeros(len(t), bool)),
        "all_nan": (np.full(len(t), np.nan, np.float32), np.ones(len(t), bool)),
        "some_nan": (np.where(np.arange(len(t)) % 3 == 0, np.nan, good).astype(np.float32), np.ones(len(t), bool)),
        "inf": (np.where(np.arange(len(t)) % 4 == 0, np.inf, good).astype(np.float32), np.ones(len(t), bool)),
        "few": (good, np.arange(len(t)) % 12 == 0),
        "out_of_range": (np.full(len(t), 7.0, np.float32), np.ones(len(t), bool)),
        "zero": (np.zeros(len(t), np.float32), np.ones(len(t), bool)),
    }
    values = np.stack([v for v, _ in cols.values()], axis=1)
    clear = np.stack([c for _, c in cols.values()], axis=1)
    res = phenology_metrics(dates, values, clear, YEAR, engine=engine)
    i = {name: k for k, name in enumerate(cols)}
    assert res.qa[i["good"]] == QA_GOOD
    assert 100 < res.greenup[i["good"]] < 125 and 255 < res.dormancy[i["good"]] < 295
    for name in ("constant", "evergreen", "zero"):
        assert res.qa[i[name]] == QA_NO_CYCLE, name
        assert _undefined_dates(res, i[name])
        assert res.amplitude[i[name]] < 0.05
    assert res.amplitude[i["constant"]] == 0
    for name in ("all_cloudy", "all_nan", "few", "out_of_range"):
        assert res.qa[i[name]] == QA_FEW_OBSERVATIONS, name
        assert all(np.isnan(getattr(res, f)[i[name]]) for f in ("minimum", "peak_value", "amplitude") + TRANSITIONS)
    assert res.n_clear[i["all_cloudy"]] == 0 and res.n_clear[i["all_nan"]] == 0
    assert res.n_clear[i["few"]] == np.sum(cols["few"][1] & (t >= 1) & (t < 366))
    for name in ("some_nan", "inf"):  # the rest of the series still gives the cycle
        assert res.qa[i[name]] == QA_GOOD, name
        assert abs(res.greenup[i[name]] - res.greenup[i["good"]]) < 3


def test_no_pixels_no_dates_one_date():
    res = phenology_metrics(_dates(), np.empty((147, 0), np.float32), np.empty((147, 0), bool), YEAR)
    assert len(res) == 0
    res = phenology_metrics(np.array([], "datetime64[D]"), np.empty((0, 3)), np.empty((0, 3), bool), YEAR)
    assert np.all(res.qa == QA_FEW_OBSERVATIONS) and np.all(np.isnan(res.greenup))
    res = phenology_metrics(np.array(["2021-05-01"], "datetime64[D]"), np.ones((1, 2)), np.ones((1, 2), bool), YEAR)
    assert np.all(res.qa == QA_FEW_OBSERVATIONS)
    # a year far from the data
    res = phenology_metrics(_dates(), np.ones((147, 2), np.float32), np.ones((147, 2), bool), 1990)
    assert np.all(res.qa == QA_FEW_OBSERVATIONS)


def test_date_types_order_and_duplicates():
    dates = _dates()
    values = _cycle(_doy(dates))[:, None]
    clear = np.ones_like(values, dtype=bool)
    ref = phenology_metrics(dates, values, clear, YEAR)
    as_py = [dt.date.fromisoformat(str(d)) for d in dates]
    as_dt = [dt.datetime.fromisoformat(str(d) + "T10:30:00") for d in dates]
    as_ns = dates.astype("datetime64[ns]") + np.timedelta64(37, "m")
    for alt in (as_py, as_dt, as_ns, [str(d) for d in dates]):
        res = phenology_metrics(alt, values, clear, YEAR)
        np.testing.assert_allclose(res.greenup, ref.greenup, rtol=1e-6)
    order = np.random.default_rng(0).permutation(len(dates))
    res = phenology_metrics(dates[order], values[order], clear[order], YEAR)
    np.testing.assert_allclose(res.dates(), ref.dates(), rtol=1e-5, atol=1e-3)
    # every date twice (two overlapping tiles): the data weigh double against the smoothing, dates hardly move
    res = phenology_metrics(np.concatenate([dates, dates]), np.concatenate([values, values]),
                            np.concatenate([clear, clear]), YEAR)
    for name in ("greenup", "midgreenup", "midgreendown", "dormancy"):
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), atol=1.0, err_msg=name)
    # one-dimensional input = one pixel; no clear mask = everything finite counts
    res = phenology_metrics(dates, values[:, 0], None, YEAR)
    np.testing.assert_allclose(res.greenup, ref.greenup, rtol=1e-6)


def test_irregular_dates_match_regular():
    rng = np.random.default_rng(1)
    dates = np.sort(np.datetime64("2020-07-01") + rng.choice(730, 220, replace=False))
    values = _cycle(_doy(dates))[:, None]
    res = phenology_metrics(dates, values, np.ones_like(values, bool), YEAR)
    assert res.qa[0] in (QA_GOOD, QA_GAP)
    # the clean curve's own dates (daily truth of the same double logistic)
    t = np.arange(-100.0, 500.0, 0.1)
    v = _cycle(t).astype(np.float64)
    peak = t[np.argmax(v[(t > 0) & (t < 366)]) + np.flatnonzero(t > 0)[0]]
    base = v.min()
    amp = v.max() - base
    green = t[np.flatnonzero((v >= base + 0.15 * amp) & (t > 0))[0]]
    dorm = t[np.flatnonzero((v >= base + 0.15 * amp) & (t < 366))[-1]]
    assert abs(res.greenup[0] - green) < 2.5 and abs(res.dormancy[0] - dorm) < 2.5
    assert abs(res.peak[0] - peak) < 15


def test_two_cycles_in_a_year_reports_the_larger():
    dates = _dates()
    t = _doy(dates)

    def lg(x):
        return 1.0 / (1.0 + np.exp(-x))

    v = 0.1 + 0 * t
    for off in (-365.0, 0.0, 365.0):
        v = v + 0.5 * (lg((t - 80 - off) / 6) - lg((t - 170 - off) / 5))  # winter cereal, larger
        v = v + 0.3 * (lg((t - 215 - off) / 6) - lg((t - 290 - off) / 6))  # catch crop, smaller
    values = v.astype(np.float32)[:, None]
    res = phenology_metrics(dates, values, np.ones_like(values, bool), YEAR)
    assert res.n_cycles[0] == 2
    assert 60 < res.greenup[0] < 85 and 150 < res.peak[0] < 160 or 100 < res.peak[0] < 170
    assert 170 < res.dormancy[0] < 200
    assert 195 < res.next_greenup[0] < 215  # the second cycle closes the winter season early
    # dropping the first cycle's amplitude below the second's flips the choice
    v2 = 0.1 + 0 * t
    for off in (-365.0, 0.0, 365.0):
        v2 = v2 + 0.2 * (lg((t - 80 - off) / 6) - lg((t - 170 - off) / 5))
        v2 = v2 + 0.4 * (lg((t - 215 - off) / 6) - lg((t - 290 - off) / 6))
    res2 = phenology_metrics(dates, v2.astype(np.float32)[:, None], None, YEAR)
    assert res2.n_cycles[0] == 2 and 200 < res2.greenup[0] < 215


def test_cycle_cut_by_the_series_end():
    dates = _dates("2020-07-01", n=int((np.datetime64("2021-06-20") - np.datetime64("2020-07-01")).astype(int)) // 5)
    t = _doy(dates)
    values = _cycle(t, sos=120, eos=270)[:, None]  # the series stops before this year's senescence
    res = phenology_metrics(dates, values, None, YEAR)
    assert res.qa[0] in (QA_PARTIAL, QA_NO_CYCLE)
    assert np.isnan(res.dormancy[0])


def test_long_gap_flags_qa():
    dates = _dates()
    t = _doy(dates)
    values = _cycle(t)[:, None]
    clear = ((t < 80) | (t > 140))[:, None]  # no clear observation around greenup
    res = phenology_metrics(dates, values, clear, YEAR)
    assert res.qa[0] == QA_GAP
    assert np.isfinite(res.greenup[0])


def test_invalid_arguments_raise():
    dates = _dates()
    values = np.ones((147, 2), np.float32)
    with pytest.raises(ValueError):
        phenology_metrics(dates, values[:-1], None, YEAR)
    with pytest.raises(ValueError):
        phenology_metrics(dates, values, np.ones((147, 3), bool), YEAR)
    with pytest.raises(TypeError):
        phenology_metrics(dates, values, None)
    with pytest.raises(ValueError):
        phenology_metrics(dates, values, None, YEAR, engine="fortran")
    with pytest.raises(ValueError):
        phenology_metrics(dates, values, None, YEAR, min_observations=2)


def test_indices():
    blue, red, nir = np.float32(0.05), np.float32(0.08), np.float32(0.35)
    assert evi(blue, red, nir) == pytest.approx(2.5 * (0.35 - 0.08) / (0.35 + 6 * 0.08 - 7.5 * 0.05 + 1), rel=1e-6)
    assert ndvi(red, nir) == pytest.approx((0.35 - 0.08) / (0.35 + 0.08), rel=1e-6)
    arr = evi(np.array([0.05, np.nan]), np.array([0.08, 0.1]), np.array([0.35, 0.3]))
    assert arr.dtype == np.float32 and np.isnan(arr[1])
    assert np.isnan(ndvi(np.array([0.0]), np.array([0.0]))[0])
    assert np.isnan(evi(np.array([0.0]), np.array([0.0]), np.array([-1.0]))[0])
