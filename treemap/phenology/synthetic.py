"""Synthetic index series with known phenology, for the benchmark and the tests.

Each pixel's clean curve is a base level plus one double-logistic cycle per calendar year (previous, target and next
year), each with its own random timing, widths and amplitude::

    v(t) = base + sum_c amp_c * (L((t - sos_c) / rup_c) - L((t - eos_c) / rdn_c)),   L(x) = 1 / (1 + exp(-x))

Observations: a fixed cadence (5 days) over two years centred on the target year (1 July of the year before to
30 June of the year after), a random ``cloud_fraction`` of them flagged not clear (their values replaced by a
cloud-like low index, which the method must ignore), and Gaussian noise on the rest.

Truth: the MCD12Q2 definitions on the clean curve sampled daily. The target year's cycle is the middle one (the
cycle drawn for the target year); its left and right minima are the lowest points between it and the neighbouring
cycles' peaks; greenup, midgreenup and maturity are the first upward crossings of 15/50/90 % of (peak - left minimum)
above the left minimum, senescence, midgreendown and dormancy the last downward crossings of 90/50/15 % of
(peak - right minimum) above the right minimum; crossings are interpolated linearly between days; peak is the day of
the maximum. ``next_greenup``: the following cycle's greenup, its peak taken as that cycle's maximum even where the
series ends before it. :func:`treemap.phenology.phenology_metrics` reports the cycle whose peak falls in the year, so
the two are the same cycle only where the parameters keep the middle cycle's peak (and no other) well inside the
year; check ``truth["peak"]`` when shifting the cycles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

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
    noise_draw = rng.standard_normal((len(days), n), dtype=np.float32)
    clear = rng.random((len(days), n), dtype=np.float32) >= cloud_fraction
    cloudy_value = rng.uniform(-0.1, 0.1, (len(days), n)).astype(np.float32)
    values = np.empty((len(days), n), dtype=np.float32)
    truth = {}
    for i0 in range(0, n, _CHUNK):
        sl = slice(i0, min(n, i0 + _CHUNK))
        part = [tuple(a[sl] for a in c) for c in cycles]
        clean = _curve(t, base[sl], part)
        values[:, sl] = np.where(clear[:, sl], clean + noise * noise_draw[:, sl], cloudy_value[:, sl])
        for k, v in _truth(base[sl], part, year, shift).items():
            truth.setdefault(k, []).append(v)
    truth = {k: np.concatenate(v) for k, v in truth.items()}
    return SyntheticSeries(dates=days.astype("datetime64[D]"), values=values, clear=clear, truth=truth, year=year)


_CHUNK = 65536


def _truth(base, cycles, year, shift):
    n = base.shape[0]
    par = np.array([[c[i] for c in cycles] for i in range(5)], dtype=np.float64)  # (5 params, 3 cycles, n)
    out = np.empty((11, n))
    _truth_kernel(base.astype(np.float64), par, out)
    names = TRANSITIONS + ("minimum", "peak_value", "amplitude", "next_greenup")
    return {name: out[i] for i, name in enumerate(names)}


@njit(parallel=True, cache=True)
def _truth_kernel(base, par, out):  # pragma: no cover - compiled
    """MCD12Q2 dates of the middle cycle on the clean curve sampled daily (see the module docstring)."""
    n = base.shape[0]
    for i in prange(n):
        centres = np.empty(3)
        for c in range(3):
            centres[c] = 0.5 * (par[0, c, i] + par[1, c, i])
        lo_day = int(np.floor(centres[0])) - 1
        hi_day = int(np.ceil(max(centres[2], par[1, 2, i]))) + 1  # through the next cycle's peak
        m = hi_day - lo_day + 1
        v = np.empty(m)
        for d in range(m):
            t = float(lo_day + d)
            x = base[i]
            for c in range(3):
                z1 = min(max((t - par[0, c, i]) / par[2, c, i], -60.0), 60.0)
                z2 = min(max((t - par[1, c, i]) / par[3, c, i], -60.0), 60.0)
                x += par[4, c, i] * (1.0 / (1.0 + np.exp(-z1)) - 1.0 / (1.0 + np.exp(-z2)))
            v[d] = x
        mid01 = 0.5 * (centres[0] + centres[1]) - lo_day
        mid12 = 0.5 * (centres[1] + centres[2]) - lo_day
        p_prev, p, p_next = 0, -1, -1
        for d in range(m):
            if d < mid01:
                if v[d] > v[p_prev]:
                    p_prev = d
            elif d < mid12:
                if p < 0 or v[d] > v[p]:
                    p = d
            else:
                if p_next < 0 or v[d] > v[p_next]:
                    p_next = d
        tl = p_prev
        for d in range(p_prev, p + 1):
            if v[d] < v[tl]:
                tl = d
        tr = p
        for d in range(p, p_next + 1):
            if v[d] < v[tr]:
                tr = d
        vp, bl, br = v[p], v[tl], v[tr]
        fr = (0.15, 0.5, 0.9)
        for j in range(3):
            thr = bl + fr[j] * (vp - bl)
            x = np.nan
            for d in range(tl + 1, p + 1):
                if v[d] >= thr:
                    x = d - 1 + (thr - v[d - 1]) / (v[d] - v[d - 1])
                    break
            out[j, i] = lo_day + x
            thr = br + fr[j] * (vp - br)
            x = np.nan
            for d in range(tr - 1, p - 1, -1):
                if v[d] >= thr:
                    x = d + (v[d] - thr) / (v[d] - v[d + 1])
                    break
            out[6 - j, i] = lo_day + x
        out[3, i] = lo_day + p
        out[7, i] = min(bl, br)
        out[8, i] = vp
        out[9, i] = vp - min(bl, br)
        thr = br + fr[0] * (v[p_next] - br)  # the next cycle's greenup: its left minimum is this one's right
        x = np.nan
        for d in range(tr + 1, p_next + 1):
            if v[d] >= thr:
                x = d - 1 + (thr - v[d - 1]) / (v[d] - v[d - 1])
                break
        out[10, i] = lo_day + x


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
