"""Land-surface phenology per pixel: MODIS MCD12Q2 transition dates from a clear-sky index time series.

Method (compiled with numba; :mod:`treemap.phenology._numpy` is the same method in plain NumPy and gives the same
numbers):

1. **Gap handling.** Only observations that are clear, finite and inside ``valid_range`` count (see *Input sanity*
   below). The analysis window
   is the year plus ``margin`` days either side, so that cycles crossing the new year are whole. The smoothed curve
   lives on a regular grid of nodes ``step`` days apart starting at the first date in the window; each observation
   is tied to the curve interpolated linearly to its exact date, so irregular and repeated dates need no resampling,
   and gaps are bridged by the smoother.
2. **Smoothing: a weighted Whittaker smoother** (penalised least squares with a second-difference penalty,
   lambda = (``smoothing`` / ``step``)^4, so ``smoothing`` is its length scale in days), solved exactly for every
   pixel with a banded LDL' factorisation (float32). Then ``robust_iterations`` robust steps: the noise scale is
   1.25 x the mean absolute residual, observations more than ``reject_below`` scales under the curve (residual
   clouds, shadows, haze pull an index down) or ``reject_above`` over it are dropped, and the curve is refitted.
   Chosen over an iterative Savitzky-Golay upper envelope: no gap filling is needed, the one smoothing parameter
   has a physical meaning, and it is unbiased for symmetric noise (an upper envelope lifts the curve and shifts
   the dates); on the benchmark it gave the lower errors for the cost. ``smoothing`` = 5 days balances noise
   against the rounding of the curve's corners (which moves greenup earlier, maturity later and, after a sharp
   fall such as a harvest seen through a cloud gap, dormancy later): 6 days does slightly better on the noisy
   synthetic benchmark (sd 0.02) and worse on the demo world's harvests.
3. **Cycle detection.** Significant extremes by a zig-zag (hysteresis) pass: a peak or trough counts once the
   curve has moved away from it by max(``min_amplitude``, ``relative_amplitude`` x the curve's range). Any number of
   cycles per year is found (double cropping); the cycle reported for ``year`` is the one whose peak (refined by a
   parabola through the nodes around it) falls in the year, the one with the larger amplitude when there are
   several (``n_cycles`` says how many). A curve whose range is below ``min_amplitude`` (evergreen, flat,
   constant) has no cycle.
4. **Robust levels.** Each side of a cycle gets its own base, as MCD12Q2 does for its green-up and green-down
   segments: the dormant-season floor, not its single lowest point (on a noisy curve the minimum sits low and
   pulls greenup early and dormancy late). First the mean of the smoothed values between the neighbouring peak
   and this peak that lie within ``base_fraction`` of the side's amplitude above the trough; that band also holds
   the tails of the fall and rise, which lift the mean, so the base is refined twice (``_numba.BASE_PASSES``) as
   the mean of the values in a band reaching as far above the base as the trough lies below it. On a flat, noisy
   floor this narrows to the floor's own spread; on a V-shaped trough it leaves the base unchanged. Likewise the
   peak level is the mean of the cycle's values within ``peak_fraction`` of the amplitude below its maximum. A
   trough at the very start or end of the series counts only when its floor spans ``min_floor_days``, and, where
   the zig-zag confirmed no trough there (the peak is the first or last extreme: the series starts or ends on the
   cycle's top), when that floor also lies ``min_amplitude`` below the peak; a side whose base is not below the
   peak level never counts. Otherwise the cycle is cut there (QA 3) and that side's dates are NaN: a plateau level
   with the top at a series end (a winter cereal green when the series starts or ends) is no dormant floor.
5. **Transition dates.** Greenup, MidGreenup, Maturity: first upward crossings of 15/50/90 % of the left amplitude
   (peak level - left base) after the left trough; Senescence, MidGreendown, Dormancy: last downward crossings of
   90/50/15 % of the right amplitude before the right trough; crossings interpolated linearly between nodes
   (fractional days), never extrapolated beyond the nodes searched. Peak: the centre of the cycle's top, midway
   between the upward and downward crossings of the maximum less 10 % of the amplitude
   (``_jit.PEAK_CENTRE_FRACTION``), kept between maturity and senescence; on a flat top the day of the maximum itself
   is set by the noise; a top cut by the series end or start extends to it. Minimum = the lower side base, amplitude
   = peak level - minimum, season length = dormancy - greenup; ``next_greenup``: greenup of the following cycle by
   the same rules. Only that cycle's green-up side has to be in the series: a curve still rising when the series ends
   counts as the following cycle once its top (the values within ``peak_fraction`` of the rise below the last one)
   spans 10 days (``_jit.MIN_TOP_DAYS``), i.e. the rise has levelled off (it never counts as the year's own cycle).

QA codes (:data:`QA_CODES`): 0 good; 1 fewer than ``min_observations`` clear observations in the year (every metric
NaN); 2 no cycle peaking in the year (flat, evergreen or constant curve; dates NaN, the minimum, peak value and
amplitude of the curve are still given); 3 cycle cut by the start or end of the series (that side's dates NaN; only
the peak is given where the series resolves neither side); 4 all dates defined but one lies in a gap between clear
observations longer than ``max_gap`` days. Bad pixels never raise: NaN values, all-cloudy pixels, constant and short
series come back as NaN metrics with their QA code.

**Dates are never impossible.** Every date of a pixel lies within its observed series: between its first and its
last clear observation in the analysis window, give or take one ``step`` (the outermost nodes of its curve; dates
in the neighbouring years are fine inside the series). The seven transitions are in order (greenup <= midgreenup
<= maturity <= peak <= senescence <= midgreendown <= dormancy), each side's three dates are defined together,
``season_length`` = dormancy - greenup, ``next_greenup`` lies in the series and not before dormancy, and the QA code
agrees with the NaN pattern (QA 0 and 4: all seven dates; 1 and 2: none; 3: not all). The method keeps this by
construction (steps 4 and 5); a final, vectorised guard (:func:`treemap.phenology.sanity.enforce`) enforces it on
every result all the same: a side that breaks it becomes NaN, a peak that does too, and a pixel that loses a date
becomes QA 3. ``PhenologyResult.stats.n_guarded_pixels`` counts what it changed (0 unless a kernel misbehaves).

**Input sanity.** ``valid_range`` lies within +-1.5 (:data:`PLAUSIBLE_LIMIT`): a non-finite value or one with
|value| > 1.5 is never an index of reflectance and is rejected per observation like one outside ``valid_range``.
``PhenologyResult.stats`` (:class:`PhenologyStats`) counts the observations marked clear that were rejected, by
cause. Where more than a quarter of the finite values marked clear in a call lie beyond +-1.5, the input looks
unscaled (an index of reflectance digital numbers, DN up to 10000, or an index stored x 10000): one warning per
process (logger ``treemap.phenology``) says so and how to scale (DN / 10000; (DN - 1000) / 10000 from processing
baseline 04.00 on), since those pixels come back as QA 1 (see :mod:`treemap.phenology.sanity`).

Dates are fractional days of year of ``year`` (1 = 1 January). The demo world's truth rounds MCD12Q2 dates to whole
days (first day at or above a threshold on the way up, last day at or above it on the way down): ``ceil`` of the
green-up side dates and ``floor`` of the green-down side dates give that convention.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from treemap.phenology._core import (FLOAT_FIELDS, QA_CODES, QA_FEW_OBSERVATIONS, QA_GAP, QA_GOOD, QA_NO_CYCLE,
                                     QA_PARTIAL, TRANSITIONS, Params, PhenologyResult, check_inputs, empty_result,
                                     make_grid, pack, to_days)
from treemap.phenology.indices import evi, ndvi
from treemap.phenology.sanity import PLAUSIBLE_LIMIT, PhenologyStats, enforce, scan_inputs, warn_unscaled
from treemap.phenology.seasons import SEASONS, seasonal_windows
from treemap.phenology.tile import (BAND_ORDER, COMPOSITE_HALF_WIDTH, METRIC_DESCRIPTIONS, METRIC_NAMES,
                                    TilePhenology, seasonal_composites, tile_phenology)

__all__ = [
    "BAND_ORDER", "COMPOSITE_HALF_WIDTH", "FLOAT_FIELDS", "METRIC_DESCRIPTIONS", "METRIC_NAMES", "QA_CODES",
    "QA_FEW_OBSERVATIONS", "QA_GAP", "QA_GOOD", "QA_NO_CYCLE", "QA_PARTIAL", "SEASONS", "TRANSITIONS",
    "PLAUSIBLE_LIMIT", "PhenologyResult", "PhenologyStats", "TilePhenology", "evi", "ndvi", "phenology_metrics",
    "seasonal_composites", "seasonal_windows", "smoothed_series", "tile_phenology",
]


def phenology_metrics(dates, values, clear=None, year: int | None = None, *, min_observations: int = 12,
                      min_amplitude: float = 0.05, relative_amplitude: float = 0.35, smoothing: float = 5.0,
                      step: float = 5.0, robust_iterations: int = 1, reject_below: float = 4.0,
                      reject_above: float = 6.0, base_fraction: float = 0.2, peak_fraction: float = 0.15,
                      min_floor_days: float = 30.0, max_gap: float = 45.0, margin: float = 183.0,
                      valid_range: tuple[float, float] = (-1.0, 1.0), engine: str = "numba") -> PhenologyResult:
    """MCD12Q2 phenology metrics of one year for N pixels' index time series.

    Args:
        dates: (T,) acquisition dates: ``datetime64`` (any unit), ``datetime.date``/``datetime`` objects or ISO
            strings. Need not be sorted; repeated dates are fine.
        values: (T, N) (or (T,) for one pixel) vegetation index, EVI by default (see :func:`evi`, :func:`ndvi`).
        clear: (T, N) bool, True where the observation is clear sky. ``None``: every finite value counts.
            Non-finite values and values outside ``valid_range`` never count, whatever ``clear`` says (they are
            counted in ``stats``).
        year: the calendar year to report. The cycle reported is the one whose peak falls in this year (the larger
            one if there are two). Give the series at least ``margin`` days either side for cycles that cross the
            new year.
        min_observations: fewer clear observations dated in ``year`` -> QA 1 and every metric NaN.
        min_amplitude: index units; curves with a smaller range have no cycle (QA 2). Also the least swing that
            confirms a peak or trough.
        relative_amplitude: a peak or trough must also stand out by this fraction of the curve's range.
        smoothing: the Whittaker smoother's length scale in days (lambda = (smoothing / step) ** 4).
        step: grid spacing of the smoothed curve in days.
        robust_iterations: robust steps (outlier rejection and re-fit; 0: plain weighted Whittaker).
        reject_below, reject_above: the robust step drops observations this many noise scales below / above the
            curve.
        base_fraction: the dormant floor is the part of a side within this fraction of its amplitude of the trough.
        peak_fraction: the peak level is the mean of the values within this fraction of the amplitude of the top.
        min_floor_days: a trough at the series' start or end needs a floor this long to count.
        max_gap: days; a date inside a longer gap between clear observations makes an otherwise good pixel QA 4.
        margin: days of data used on either side of the year.
        valid_range: index values outside it are treated as not clear; it must lie within +-1.5
            (:data:`PLAUSIBLE_LIMIT`), else ``ValueError``.
        engine: ``"numba"`` (default) or ``"numpy"`` (the same method in plain NumPy; slower, for checks).

    Returns:
        :class:`PhenologyResult`: (N,) float32 arrays of day of year relative to 1 January of ``year`` (below 1 or
        above 365/366 for transitions in the neighbouring years; fractional) and levels, NaN where undefined, plus
        ``n_clear`` (int32), ``qa`` (uint8, :data:`QA_CODES`) and ``n_cycles`` (uint8); ``stats``
        (:class:`PhenologyStats`): the call's counts of rejected observations and of the guard's changes.
    """
    if year is None:
        raise TypeError("phenology_metrics() needs the year to report")
    params = Params(min_observations=int(min_observations), min_amplitude=float(min_amplitude),
                    relative_amplitude=float(relative_amplitude), step=float(step), smoothing=float(smoothing),
                    robust_iterations=int(robust_iterations), reject_below=float(reject_below),
                    reject_above=float(reject_above), base_fraction=float(base_fraction),
                    peak_fraction=float(peak_fraction), min_floor_days=float(min_floor_days),
                    max_gap=float(max_gap), margin=float(margin),
                    valid_range=(float(valid_range[0]), float(valid_range[1])))
    params.check()
    days = to_days(dates)
    if clear is None:
        clear = np.ones(np.shape(values), dtype=bool)
    values, clear = check_inputs(days, values, clear)
    if engine not in ("numba", "numpy"):
        raise ValueError(f"unknown engine {engine!r} (numba, numpy)")
    n = values.shape[1]
    grid = make_grid(days, int(year), params)
    if grid is None or n == 0:
        rows = np.arange(days.shape[0]) if grid is None else grid.obs_idx
        _, _, stats = scan_inputs(values, clear, rows, np.zeros(rows.shape[0]), params.valid_range)
        warn_unscaled(stats)
        return empty_result(n, int(year), stats=stats)
    # input sanity: counts of the rejected observations, each pixel's first and last used observation
    first, last, stats = scan_inputs(values, clear, grid.obs_idx, grid.doy_a + grid.obs_day, params.valid_range)
    warn_unscaled(stats)
    if engine == "numba":
        from treemap.phenology._numba import run
    else:
        from treemap.phenology._numpy import run
    out, n_clear, qa, n_cycles = run(values, clear, grid, params)
    # the final guard: no impossible date leaves this function (dates within the observed series, in order)
    n_px, n_dates = enforce(out, qa, first, last, params.step)
    stats = dataclasses.replace(stats, n_guarded_pixels=n_px, n_guarded_dates=n_dates)
    return pack(out, n_clear, qa, n_cycles, int(year), stats=stats)


def smoothed_series(dates, values, clear=None, year: int | None = None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The smoothed curves :func:`phenology_metrics` analyses, for inspection and plots (NumPy, not fast).

    Takes the arguments of :func:`phenology_metrics` (the analysis options are ignored). Returns the grid dates
    (K,) ``datetime64[D]`` (fractional days rounded down) and the curves (K, N) float32, NaN for pixels with too
    few clear observations.
    """
    from treemap.phenology._numpy import smooth

    if year is None:
        raise TypeError("smoothed_series() needs the year")
    names = {f.name for f in dataclasses.fields(Params)}
    params = Params(**{k: v for k, v in kwargs.items() if k in names})
    params.check()
    days = to_days(dates)
    if clear is None:
        clear = np.ones(np.shape(values), dtype=bool)
    values, clear = check_inputs(days, values, clear)
    grid = make_grid(days, int(year), params)
    if grid is None:
        return np.empty(0, "datetime64[D]"), np.full((0, values.shape[1]), np.nan, np.float32)
    t0 = int(days[grid.obs_idx[0]])
    node_days = np.floor(t0 + params.step * np.arange(grid.n_nodes)).astype(np.int64)
    return node_days.astype("datetime64[D]"), smooth(values, clear, grid, params)
