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

**Snow variant** (``snow_fraction`` > 0): a share ``snow_fraction`` of the clear dormant-season observations (where the
clean curve lies within :data:`WINTER_LEVEL` of the pixel's base) is replaced by snow, and a share ``snow_flagged`` of
those is flagged not clear, as the scene classification's snow class (SCL 11) would; the others stay clear for the
snow screen to find. The series then also carries the two bands the screen needs, ``green`` (B03 reflectance) and
``ndsi``, for every observation, and ``snow`` marks the replaced ones. Snow-free observations: a per-pixel B03 (0.03 to
0.08) and NDSI (-0.6 to -0.35, a canopy or soil: B11 well above B03), flat through the year, with 5 % noise on each
band (a simplification: a canopy's B03 changes by about 0.01 through the year, below the screen's 0.03). A snowy
observation mixes snow (B03 0.9, B11 0.08) into an area fraction ``a`` of the pixel (0.13 to 0.33: snow under a
canopy, on the ground between the trees) and moves the index towards the index of snow (-0.1 to 0.05) with the
weight ``3 a`` (0.4 to 1): snow is so bright in the red and NIR that it weighs far more in a ratio index than its
area, as with NDVI, where 15 % snow cover takes a forest from 0.4 to about 0.17. Its B03 rises by 0.1 to 0.3 and its
NDSI to about -0.2 to 0.55, so both tests of :mod:`treemap.phenology.snow` have cases. The snow draws come from a
stream of their own: the values of the snow-free variant of the same seed are unchanged.

:func:`sparse_clear`: a clear mask with 10-25 clear dates a year and gaps of one to three months (a cloudy
temperate winter), for measuring the method on sparse years.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from treemap.phenology._core import TRANSITIONS, jan1


#: The dormant season of the snow variant: observations where the clean curve is within this of the pixel's base
#: (index units; 10 % of the smallest amplitude).
WINTER_LEVEL = 0.02
#: Snow's B03 and B11 reflectance, and the range of its index, in the snow variant.
SNOW_GREEN, SNOW_SWIR, SNOW_INDEX = 0.9, 0.08, (-0.1, 0.05)


@dataclass(frozen=True)
class SyntheticSeries:
    dates: np.ndarray  # (T,) datetime64[D]
    values: np.ndarray  # (T, N) float32
    clear: np.ndarray  # (T, N) bool
    truth: dict[str, np.ndarray]  # transition name -> (N,) float64 day of year of ``year``; plus "minimum",
    # "peak_value", "amplitude"
    year: int
    # the snow variant only (None otherwise), all (T, N):
    green: np.ndarray | None = None  # float32 B03 reflectance
    ndsi: np.ndarray | None = None  # float32 NDSI
    snow: np.ndarray | None = None  # bool: observations replaced by snow (the flagged ones are also not clear)


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
                     amp_range=(0.2, 0.6), shift: float = 0.0, snow_fraction: float = 0.0,
                     snow_flagged: float = 0.5) -> SyntheticSeries:
    """``n`` pixels of a synthetic EVI-like series for ``year`` with truth (see the module docstring).

    Timing per cycle: sos uniform in ``sos_range`` (day of its year), eos = sos + a length uniform in
    ``length_range``, capped at ``latest_eos``; widths (days) uniform in ``width_range``; amplitude uniform in
    ``amp_range``; one base per pixel. ``shift`` (days) moves every cycle, e.g. 182 for a southern-hemisphere
    calendar whose cycles cross the new year. ``snow_fraction`` > 0: the snow variant (module docstring), with a
    share ``snow_flagged`` of the snowy observations flagged not clear.
    """
    if not 0.0 <= snow_fraction <= 1.0 or not 0.0 <= snow_flagged <= 1.0:
        raise ValueError("snow_fraction and snow_flagged must be in [0, 1]")
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
    snowy = snow_fraction > 0
    if snowy:
        srng = np.random.default_rng([seed, 1])  # the snow's own stream: the snow-free draws stay as they were
        green = np.empty((len(days), n), dtype=np.float32)
        ndsi = np.empty((len(days), n), dtype=np.float32)
        snow = np.zeros((len(days), n), dtype=bool)
        clear = clear.copy()
    truth = {}
    for i0 in range(0, n, _CHUNK):
        sl = slice(i0, min(n, i0 + _CHUNK))
        part = [tuple(a[sl] for a in c) for c in cycles]
        clean = _curve(t, base[sl], part)
        values[:, sl] = np.where(clear[:, sl], clean + noise * noise_draw[:, sl], cloudy_value[:, sl])
        if snowy:
            _add_snow(srng, clean, base[sl], clear[:, sl], values[:, sl], green[:, sl], ndsi[:, sl], snow[:, sl],
                      noise * noise_draw[:, sl], snow_fraction, snow_flagged)
        for k, v in _truth(base[sl], part, year, shift).items():
            truth.setdefault(k, []).append(v)
    truth = {k: np.concatenate(v) for k, v in truth.items()}
    extra = dict(green=green, ndsi=ndsi, snow=snow) if snowy else {}
    return SyntheticSeries(dates=days.astype("datetime64[D]"), values=values, clear=clear, truth=truth, year=year,
                           **extra)


def _add_snow(rng, clean, base, clear, values, green, ndsi, snow, noise, fraction, flagged):
    """The snow variant on one chunk of pixels, in place (see the module docstring)."""
    t, n = clean.shape
    g0 = rng.uniform(0.03, 0.08, n)
    nd0 = rng.uniform(-0.6, -0.35, n)
    s0 = g0 * (1.0 - nd0) / (1.0 + nd0)  # the B11 of that NDSI
    g = g0 * (1.0 + 0.05 * rng.standard_normal((t, n)))
    sw = s0 * (1.0 + 0.05 * rng.standard_normal((t, n)))
    hit = clear & (clean - base < WINTER_LEVEL) & (rng.random((t, n)) < fraction)
    a = rng.uniform(0.4, 1.0, (t, n)) / 3.0  # snow cover fraction; its weight in the index is 3 a
    v_snow = rng.uniform(*SNOW_INDEX, (t, n))
    g = np.where(hit, (1.0 - a) * g + a * SNOW_GREEN, g)
    sw = np.where(hit, (1.0 - a) * sw + a * SNOW_SWIR, sw)
    values[:] = np.where(hit, (1.0 - 3.0 * a) * clean + 3.0 * a * v_snow + noise, values)
    green[:] = g
    ndsi[:] = (g - sw) / (g + sw)
    snow[:] = hit
    clear &= ~(hit & (rng.random((t, n)) < flagged))  # flagged as the scene classification's snow class would


def sparse_clear(dates, year: int, n: int, *, seed: int = 0, per_year=(10, 25), gaps=(1, 3),
                 gap_days=(30.0, 92.0)) -> np.ndarray:
    """A (T, N) clear mask of sparse years: per pixel and calendar year, ``gaps`` (uniform count) gaps without a clear
    observation, each uniform in ``gap_days`` long and starting anywhere from ``gap_days[1]`` days before the year
    (so a winter gap can span the new year; gaps may overlap), and ``per_year`` (uniform count) clear dates drawn
    at random among the dates outside the gaps (fewer in a year the series covers only in part: in proportion to
    its dates, against a 5-day cadence). Combine with a series' own mask (``&``) or use it instead of it."""
    rng = np.random.default_rng(seed)
    days = (np.asarray(dates, dtype="datetime64[D]") - np.datetime64(f"{int(year):04d}-01-01", "D")).astype(np.int64)
    clear = np.zeros((days.shape[0], n), dtype=bool)
    ylab = np.floor_divide(days, 365)
    for y in np.unique(ylab):
        rows = np.flatnonzero(ylab == y)
        d = days[rows].astype(np.float64)[:, None, None]
        count = rng.integers(gaps[0], gaps[1] + 1, n)
        start = rng.uniform(365.0 * y - gap_days[1], 365.0 * (y + 1), (gaps[1], n))
        length = rng.uniform(gap_days[0], gap_days[1], (gaps[1], n))
        used = np.arange(gaps[1])[:, None] < count[None, :]
        in_gap = ((d >= start[None]) & (d < (start + length)[None]) & used[None]).any(axis=1)
        keys = np.where(in_gap, 2.0, rng.random((rows.shape[0], n)))
        rank = np.argsort(np.argsort(keys, axis=0, kind="stable"), axis=0, kind="stable")
        k = np.rint(rng.integers(per_year[0], per_year[1] + 1, n) * min(1.0, rows.shape[0] / 73.0))
        clear[rows] = (rank < k[None, :]) & ~in_gap
    return clear


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
