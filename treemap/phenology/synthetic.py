"""Synthetic index series with known phenology, for the benchmark and the tests.

Each pixel's clean curve is a base level plus one double-logistic cycle per calendar year (previous, target and next
year), each with its own random timing, widths and amplitude::

    v(t) = base + sum_c amp_c * (L((t - sos_c) / rup_c) - L((t - eos_c) / rdn_c)),   L(x) = 1 / (1 + exp(-x))

Observations: a fixed cadence (5 days) over two years centred on the target year (1 July of the year before to
30 June of the year after), a random ``cloud_fraction`` of them flagged not clear (their values replaced by a
cloud-like low index, which the method must ignore), and Gaussian noise on the rest.

Truth: the MCD12Q2 definitions on the clean curve sampled daily. The target year's cycle is the one peaking in the
year; its left and right minima are the lowest points between it and the neighbouring cycles' peaks; greenup,
midgreenup and maturity are the first upward crossings of 15/50/90 % of (peak - left minimum) above the left
minimum, senescence, midgreendown and dormancy the last downward crossings of 90/50/15 % of (peak - right minimum)
above the right minimum; crossings are interpolated linearly between days; peak is the day of the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treemap.phenology._core import TRANSITIONS, jan1


@dataclass(frozen=True)
class SyntheticSeries:
    dates: np.ndarray  # (T,) datetime64[D]
    values: np.ndarray  # (T, N) float32
    clear: np.ndarray  # (T, N) bool
    truth: dict[str, np.ndarray]  # transition name -> (N,) float64 day of year of ``year``; plus "minimum",
    # "peak_value", "amplitude"
    year: int


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _curve(t, base, cycles):
    """Clean curve at days ``t`` (relative to 1 January of the target year, (T, 1)) for (N,) parameters."""
    v = np.broadcast_to(base, (t.shape[0], base.shape[0])).astype(np.float64)
    for sos, eos, rup, rdn, amp in cycles:
        v = v + amp * (_logistic((t - sos) / rup) - _logistic((t - eos) / rdn))
    return v


def synthetic_series(n: int, *, year: int = 2021, seed: int = 0, cadence: int = 5, cloud_fraction: float = 0.4,
                     noise: float = 0.02, sos_range=(80.0, 160.0), length_range=(90.0, 190.0),
                     latest_eos: float = 330.0, width_range=(5.0, 15.0), base_range=(0.05, 0.2),
                     amp_range=(0.2, 0.6), shift: float = 0.0) -> SyntheticSeries:
    """``n`` pixels of a synthetic EVI-like series for ``year`` with truth (see the module docstring).

    Timing per cycle: sos uniform in ``sos_range`` (day of its year), eos = sos + a length uniform in
    ``length_range``, capped at ``latest_eos``; widths (days) uniform in ``width_range``; amplitude uniform in
    ``amp_range``; one base per pixel. ``shift`` (days) moves every cycle, e.g. 182 for a southern-hemisphere
    calendar whose cycles cross the new year.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(*base_range, n)
    cycles = []
    for offset in (-365.0, 0.0, 365.0):
        sos = rng.uniform(*sos_range, n)
        eos = np.minimum(sos + rng.uniform(*length_range, n), latest_eos)
        cycles.append((sos + offset + shift, eos + offset + shift, rng.uniform(*width_range, n),
                       rng.uniform(*width_range, n), rng.uniform(*amp_range, n)))
    y0 = jan1(year)
    start = y0 - 184  # 1 July of the previous year (184 days before 1 January)
    days = np.arange(start, start + 2 * 365 + 1, cadence)
    t = (days - y0 + 1).astype(np.float64)[:, None]  # day of year of the target year
    clean = _curve(t, base, cycles)
    values = clean + rng.normal(0.0, noise, clean.shape)
    clear = rng.random(clean.shape) >= cloud_fraction
    values = np.where(clear, values, rng.uniform(-0.1, 0.1, clean.shape))  # cloud-contaminated index
    truth = _truth(base, cycles, year, shift)
    return SyntheticSeries(dates=days.astype("datetime64[D]"), values=values.astype(np.float32), clear=clear,
                           truth=truth, year=year)


def _truth(base, cycles, year, shift):
    n = base.shape[0]
    t = np.arange(-400.0, 800.0)[:, None] + 1.0  # day of year, daily
    v = _curve(t, base, cycles)
    cols = np.arange(n)
    # peaks of the three cycles: the daily maximum between consecutive cycles' mid-points
    (s0, e0, *_), (s1, e1, *_), (s2, e2, *_) = cycles
    centres = [(s0 + e0) / 2, (s1 + e1) / 2, (s2 + e2) / 2]
    tt = t[:, 0]

    def argmax_between(lo, hi):
        m = (tt[:, None] >= lo) & (tt[:, None] < hi)
        return np.argmax(np.where(m, v, -np.inf), axis=0)

    def argmin_between(lo_idx, hi_idx):
        ii = np.arange(len(tt))[:, None]
        m = (ii >= lo_idx) & (ii <= hi_idx)
        return np.argmin(np.where(m, v, np.inf), axis=0)

    mid01 = (centres[0] + centres[1]) / 2
    mid12 = (centres[1] + centres[2]) / 2
    p_prev = argmax_between(-np.inf, mid01)
    p = argmax_between(mid01, mid12)
    p_next = argmax_between(mid12, np.inf)
    tl = argmin_between(p_prev, p)
    tr = argmin_between(p, p_next)
    vp = v[p, cols]
    bl = v[tl, cols]
    br = v[tr, cols]
    out = {"peak": tt[p]}
    ii = np.arange(len(tt))[:, None]
    for name_up, name_dn, f in (("greenup", "dormancy", 0.15), ("midgreenup", "midgreendown", 0.5),
                                ("maturity", "senescence", 0.9)):
        thr = bl + f * (vp - bl)
        above = (v >= thr) & (ii > tl) & (ii <= p)
        k = np.argmax(above, axis=0)
        out[name_up] = tt[k - 1] + (thr - v[k - 1, cols]) / (v[k, cols] - v[k - 1, cols])
        thr = br + f * (vp - br)
        above = (v >= thr) & (ii >= p) & (ii < tr)
        k = len(tt) - 1 - np.argmax(above[::-1], axis=0)
        out[name_dn] = tt[k] + (v[k, cols] - thr) / (v[k, cols] - v[k + 1, cols])
    out = {name: out[name] for name in TRANSITIONS}
    out["minimum"] = np.minimum(bl, br)
    out["peak_value"] = vp
    out["amplitude"] = vp - out["minimum"]
    return out


def mae_days(result, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean absolute error (days) per transition over the pixels where the estimate is defined, and the share of
    pixels where it is not (``undefined``)."""
    errs = {}
    undefined = np.zeros(len(result), dtype=bool)
    for name in TRANSITIONS:
        est = getattr(result, name).astype(np.float64)
        ok = np.isfinite(est)
        undefined |= ~ok
        errs[name] = float(np.mean(np.abs(est[ok] - truth[name][ok]))) if ok.any() else float("nan")
    errs["undefined"] = float(undefined.mean())
    return errs
