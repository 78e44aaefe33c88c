"""Land-surface phenology per pixel: MODIS MCD12Q2 transition dates from a clear-sky index time series.

Method (one pass per pixel, compiled with numba; :mod:`treemap.phenology._numpy` is the same method in NumPy):

1. **Gap handling.** Only observations that are clear, finite and inside ``valid_range`` count. The analysis
   window is the year plus ``margin`` days on both sides (so cycles crossing the new year are whole). The smoothed
   curve lives on a regular grid of nodes ``step`` days apart; each observation ties to the curve linearly
   interpolated to its exact date, so irregular dates need no resampling, and gaps are bridged by the smoother.
2. **Smoothing: a weighted Whittaker smoother** (penalised least squares with second differences,
   lambda = (smoothing / step)^4, i.e. ``smoothing`` is its length scale in days), solved exactly per pixel with a
   banded LDL' factorisation, then ``robust_iterations`` re-fits with asymmetric bisquare weights from the residuals
   (scale 1.25 x mean absolute residual): observations more than 2 scales below the curve lose weight and are
   ignored past 4 (residual clouds, shadows and haze pull an index down), above it the band is 3 to 6 scales.
   Chosen over an iterative Savitzky-Golay upper envelope because it needs no gap filling, has one parameter with a
   physical meaning, and is unbiased on symmetric noise (an upper envelope lifts the whole curve, shifting
   dates); on the benchmark it also gave the lower errors at equal cost.
3. **Cycle detection.** Significant extremes by a zig-zag (hysteresis) pass: a peak or trough is confirmed when
   the curve moves away from it by at least max(``min_amplitude``, ``relative_amplitude`` x the curve's range).
   Any number of cycles per year is found (double cropping); the reported cycle is the one whose (sub-node
   refined) peak falls in ``year``, the one with the larger amplitude when there are several (``n_cycles`` says how
   many). Curves whose range is below ``min_amplitude`` (evergreen, flat, constant) have no cycle.
4. **Robust base.** Each side of a cycle gets its own base (as MCD12Q2 does for its green-up and green-down
   segments): the mean of the smoothed values between the neighbouring peak and this peak that lie within
   ``base_fraction`` of the side's amplitude above the trough, i.e. the dormant-season floor rather than its
   single lowest (noise-biased) point. A trough at the very start or end of the series counts only when such a
   floor spans at least ``min_floor_days``; otherwise the cycle is cut (QA 3) and that side's dates are NaN.
5. **Transition dates.** Greenup, MidGreenup, Maturity: first upward crossings of 15/50/90 % of the left amplitude
   after the left trough; Senescence, MidGreendown, Dormancy: last downward crossings of 90/50/15 % of the right
   amplitude before the right trough; crossings interpolated linearly between nodes; Peak: the maximum refined by a
   parabola through the three nodes around it. Minimum = the lower side base, amplitude = peak value - minimum,
   season length = dormancy - greenup.

QA codes: see :data:`QA_CODES` (0 good, 1 too few clear observations, 2 no cycle, 3 cycle cut by the series ends,
4 a date inside a long gap between clear observations). Nothing here raises on bad pixels: NaN values, all-cloudy
pixels, constant series and short series come back as NaN metrics with their QA code.
"""

from __future__ import annotations

import numpy as np

from treemap.phenology._core import (FLOAT_FIELDS, QA_CODES, QA_FEW_OBSERVATIONS, QA_GAP, QA_GOOD, QA_NO_CYCLE,
                                     QA_PARTIAL, TRANSITIONS, Params, PhenologyResult, check_inputs, empty_result,
                                     make_grid, pack, to_days)
from treemap.phenology.indices import evi, ndvi
from treemap.phenology.seasons import SEASONS, seasonal_windows
from treemap.phenology.tile import (BAND_ORDER, COMPOSITE_HALF_WIDTH, METRIC_DESCRIPTIONS, METRIC_NAMES,
                                    TilePhenology, seasonal_composites, tile_phenology)

__all__ = [
    "BAND_ORDER", "COMPOSITE_HALF_WIDTH", "FLOAT_FIELDS", "METRIC_DESCRIPTIONS", "METRIC_NAMES", "QA_CODES",
    "QA_FEW_OBSERVATIONS", "QA_GAP", "QA_GOOD", "QA_NO_CYCLE", "QA_PARTIAL", "SEASONS", "TRANSITIONS",
    "PhenologyResult", "TilePhenology", "evi", "ndvi", "phenology_metrics", "seasonal_composites",
    "seasonal_windows", "tile_phenology",
]


def phenology_metrics(dates, values, clear=None, year: int | None = None, *, min_observations: int = 12,
                      min_amplitude: float = 0.05, relative_amplitude: float = 0.35, smoothing: float = 12.0,
                      step: float = 5.0, robust_iterations: int = 1, base_fraction: float = 0.1,
                      min_floor_days: float = 30.0, max_gap: float = 45.0, margin: float = 183.0,
                      valid_range: tuple[float, float] = (-1.0, 1.0), engine: str = "numba") -> PhenologyResult:
    """MCD12Q2 phenology metrics of one year for N pixels' index time series.

    Args:
        dates: (T,) acquisition dates: ``datetime64`` (any unit), ``datetime.date``/``datetime`` objects or ISO
            strings. Need not be sorted; repeated dates are fine.
        values: (T, N) (or (T,) for one pixel) vegetation index, EVI by default (see :func:`evi`, :func:`ndvi`).
        clear: (T, N) bool, True where the observation is clear sky. ``None``: every finite value counts.
            Non-finite values and values outside ``valid_range`` never count, whatever ``clear`` says.
        year: the calendar year to report. The cycle reported is the one whose peak falls in this year (the larger
            one if there are two). Give the series at least ``margin`` days either side for cycles that cross the
            new year.
        min_observations: fewer clear observations dated in ``year`` -> QA 1 and every metric NaN.
        min_amplitude: index units; curves with a smaller range have no cycle (QA 2). Also the least swing that
            confirms a peak or trough.
        relative_amplitude: a peak or trough must also stand out by this fraction of the curve's range.
        smoothing: the Whittaker smoother's length scale in days (lambda = (smoothing / step) ** 4).
        step: grid spacing of the smoothed curve in days.
        robust_iterations: re-fits with outlier-down-weighting (0: plain weighted Whittaker).
        base_fraction: the dormant floor is the part of a side within this fraction of its amplitude of the trough.
        min_floor_days: a trough at the series' start or end needs a floor this long to count.
        max_gap: days; a date inside a longer gap between clear observations makes an otherwise good pixel QA 4.
        margin: days of data used on either side of the year.
        valid_range: index values outside it are treated as not clear.
        engine: ``"numba"`` (default) or ``"numpy"`` (the same method in plain NumPy; slower, for checks).

    Returns:
        :class:`PhenologyResult`: (N,) float32 arrays of day of year relative to 1 January of ``year`` (below 1 or
        above 365/366 for transitions in the neighbouring years; fractional) and levels, NaN where undefined, plus
        ``n_clear`` (int32), ``qa`` (uint8, :data:`QA_CODES`) and ``n_cycles`` (uint8).
    """
    if year is None:
        raise TypeError("phenology_metrics() needs the year to report")
    params = Params(min_observations=int(min_observations), min_amplitude=float(min_amplitude),
                    relative_amplitude=float(relative_amplitude), step=float(step), smoothing=float(smoothing),
                    robust_iterations=int(robust_iterations), base_fraction=float(base_fraction),
                    min_floor_days=float(min_floor_days), max_gap=float(max_gap), margin=float(margin),
                    valid_range=(float(valid_range[0]), float(valid_range[1])))
    params.check()
    days = to_days(dates)
    if clear is None:
        clear = np.ones(np.shape(values), dtype=bool)
    values, clear = check_inputs(days, values, clear)
    n = values.shape[1]
    grid = make_grid(days, int(year), params)
    if grid is None or n == 0:
        return empty_result(n, int(year))
    if engine == "numba":
        from treemap.phenology._numba import run
    elif engine == "numpy":
        from treemap.phenology._numpy import run
    else:
        raise ValueError(f"unknown engine {engine!r} (numba, numpy)")
    out, n_clear, qa, n_cycles = run(values, clear, grid, params)
    return pack(out, n_clear, qa, n_cycles, int(year))
