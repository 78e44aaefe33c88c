"""Input sanity and the final guard of the phenology method: implausible observations are counted, unscaled input is
reported, and no result carries an impossible date.

**Input sanity** (:func:`scan_inputs`). An observation counts only when the caller marks it clear, it is finite and it
lies inside ``valid_range``, which itself must lie within +-:data:`PLAUSIBLE_LIMIT` (1.5; EVI and NDVI of reflectance
stay within +-1 but for rare bright or dark targets). The observations the caller marks clear that do not count are
counted by cause (:class:`PhenologyStats`): not finite, implausible (|value| > 1.5), or plausible but outside
``valid_range``. When more than :data:`UNSCALED_SHARE` of the finite values marked clear in a call lie beyond +-1.5,
the input is not an index of reflectance: most likely an index computed from digital numbers (DN up to 10000: EVI's
constant term no longer fits, and most vegetation lands beyond +-1) or an index stored x 10000 as in an int16
product. :func:`warn_unscaled` then logs one warning per process saying so (those observations are rejected, so
their pixels come back as QA 1). Measured on the Flanders test patches: EVI of reflectance has no clear value beyond
+-1.5 (5 % of all values, clouds included); EVI of DN has 49-69 % of its clear values there (40-50 % of all).

**The guard** (:func:`enforce`), applied to every result, whatever the engine. Its rule:

* *span*: every transition date lies within [first clear observation - ``step``, last clear observation + ``step``]
  of the pixel (its clear, finite, in-range observations in the analysis window; dates in the neighbouring years are
  legal inside it). The smoothed curve lives on nodes ``step`` days apart, and the outermost nodes of a pixel's curve
  lie up to one step outside its observations: dates are interpolated between nodes, never extrapolated;
* *order*: greenup <= midgreenup <= maturity <= peak <= senescence <= midgreendown <= dormancy;
* *whole sides*: the three green-up dates (greenup, midgreenup, maturity) and the three green-down dates (senescence,
  midgreendown, dormancy) are defined together or not at all;
* *QA agrees with the NaN pattern*: QA 0 and 4 have all seven dates; QA 1 and 2 none.

A side with a date outside the span, out of order (within the side, or maturity after senescence) or partly NaN
becomes NaN, as does a peak outside the span or outside [maturity, senescence]; a pixel that had all seven dates (QA
0 or 4) and loses one becomes QA 3 ("cycle cut by the series, that side's dates NaN"): a date beyond the series is a
side the series does not resolve. Dates of a QA 1 or 2 pixel become NaN (every metric of a QA 1 pixel).
``season_length`` (dormancy - greenup) becomes NaN with either date, and ``next_greenup`` must lie in the span and
not before dormancy (else NaN; the QA does not change). The number of pixels and dates the guard changed is kept in
:class:`PhenologyStats`; the kernels are built never to trip it (measured: 0 on the Flanders patches, the synthetic
benchmark series and the property tests), so a non-zero count points at a kernel fault.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import numpy as np
from numba import njit, prange

from treemap.phenology._jit import (DORMANCY, GREENUP, MATURITY, MIDGREENDOWN, MIDGREENUP, NEXT_GREENUP,
                                    PEAK, QA_FEW_OBSERVATIONS, QA_GAP, QA_GOOD, QA_NO_CYCLE, QA_PARTIAL,
                                    SEASON_LENGTH, SENESCENCE)

log = logging.getLogger("treemap.phenology")

#: |index| beyond this is never a vegetation index of reflectance: such observations are rejected and counted
PLAUSIBLE_LIMIT = 1.5
#: more than this share of the finite values marked clear beyond :data:`PLAUSIBLE_LIMIT`: the input looks unscaled
UNSCALED_SHARE = 0.25
#: slack (days) of the span test for float rounding
_SPAN_SLACK = 1e-3

_LEFT = (GREENUP, MIDGREENUP, MATURITY)
_RIGHT = (SENESCENCE, MIDGREENDOWN, DORMANCY)
_COUNTS = ("n_observations", "n_flagged_clear", "n_nonfinite", "n_implausible", "n_out_of_range", "n_used")


@dataclass(frozen=True)
class PhenologyStats:
    """Counts of one :func:`treemap.phenology.phenology_metrics` call (``PhenologyResult.stats``); add them up over
    calls with ``+`` or :meth:`combine`.

    The observation counts are pixel-dates in the analysis window (the year plus ``margin`` days either side).
    """

    n_observations: int = 0  #: pixel-dates in the analysis window
    n_flagged_clear: int = 0  #: marked clear by the caller
    n_nonfinite: int = 0  #: marked clear, but NaN or +-inf: rejected
    n_implausible: int = 0  #: marked clear, finite, |value| > PLAUSIBLE_LIMIT: rejected
    n_out_of_range: int = 0  #: marked clear, |value| <= PLAUSIBLE_LIMIT but outside ``valid_range``: rejected
    n_used: int = 0  #: clear, finite and inside ``valid_range``: the observations the method uses
    max_abs: float = float("nan")  #: largest implausible |value| marked clear (NaN when none)
    n_guarded_pixels: int = 0  #: pixels whose result the final guard changed (0 unless a kernel misbehaves)
    n_guarded_dates: int = 0  #: dates (incl. next_greenup) the guard set to NaN

    @property
    def n_rejected(self) -> int:
        """Observations marked clear that do not count (not finite, implausible, or outside ``valid_range``)."""
        return self.n_nonfinite + self.n_implausible + self.n_out_of_range

    @property
    def share_implausible(self) -> float:
        """Share of the finite values marked clear beyond +-:data:`PLAUSIBLE_LIMIT` (0 when there are none)."""
        n = self.n_flagged_clear - self.n_nonfinite
        return self.n_implausible / n if n else 0.0

    @property
    def looks_unscaled(self) -> bool:
        """More than :data:`UNSCALED_SHARE` of the finite values marked clear beyond +-:data:`PLAUSIBLE_LIMIT`."""
        return self.share_implausible > UNSCALED_SHARE

    def __add__(self, other: PhenologyStats) -> PhenologyStats:
        if not isinstance(other, PhenologyStats):
            return NotImplemented
        merged = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "max_abs"}
        return PhenologyStats(**merged, max_abs=float(np.fmax(self.max_abs, other.max_abs)))

    @classmethod
    def combine(cls, stats) -> PhenologyStats:
        """The sum of an iterable of stats (``None`` entries are skipped)."""
        total = cls()
        for s in stats:
            if s is not None:
                total = total + s
        return total

    def as_dict(self) -> dict:
        """Plain numbers (JSON-ready; ``max_abs`` None when NaN), with ``n_rejected`` and ``looks_unscaled``."""
        d = asdict(self)
        d["max_abs"] = None if not np.isfinite(self.max_abs) else float(self.max_abs)
        d["n_rejected"] = self.n_rejected
        d["looks_unscaled"] = self.looks_unscaled
        return d


# ------------------------------------------------------------------------------------------------------ input scan


@njit(parallel=True, cache=True, error_model="numpy")
def _scan(values, clear, rows, vlo, vhi, limit, fi, la, mx, counts):  # pragma: no cover - compiled
    """One pass over the rows ``rows`` (in time order) of ``values``/``clear`` (T, N): per pixel the position in
    ``rows`` of its first and last used observation (``len(rows)`` / -1 if none) into ``fi[0]``/``la[0]`` and its
    largest implausible |value| marked clear into ``mx[0]`` (0 if none); per chunk of pixels the counts of
    :data:`_COUNTS` into ``counts[c]``. The tests are the kernels' (``valid_range`` on float32 values), so "used"
    is exactly what the kernels use.

    Branch-free, so that the inner loop is a vector loop: the running values alternate between the two rows of
    ``fi``/``la``/``mx`` (a conditional in-place update would be a masked store, slow on some x86 cores), over an
    even number of passes (the last row once more, not counted) so that the result ends in row 0."""
    n = values.shape[1]
    n_rows = rows.shape[0]
    n_chunks = counts.shape[0]
    per = (n + n_chunks - 1) // n_chunks
    none = np.int32(n_rows)
    for c in prange(n_chunks):
        j0 = c * per
        j1 = min(n, j0 + per)
        if j1 <= j0:
            continue
        m = j1 - j0
        f0 = fi[0, j0:j1]
        l0 = la[0, j0:j1]
        x0 = mx[0, j0:j1]
        for j in range(m):
            f0[j] = none
            l0[j] = -1
            x0[j] = 0.0
        n_clr = 0
        n_nf = 0
        n_imp = 0
        n_use = 0
        n_pass = n_rows + (n_rows & 1)
        for q in range(n_pass):
            r = min(q, n_rows - 1)
            w = 1 if q < n_rows else 0
            src = q & 1
            fa = fi[src, j0:j1]
            fb = fi[1 - src, j0:j1]
            la_ = la[src, j0:j1]
            lb = la[1 - src, j0:j1]
            xa = mx[src, j0:j1]
            xb = mx[1 - src, j0:j1]
            vrow = values[rows[r], j0:j1]
            crow = clear[rows[r], j0:j1]
            rr = np.int32(r)
            for j in range(m):
                x = vrow[j]
                cl = crow[j]
                fin = np.isfinite(x)
                v = np.float32(x)
                a = abs(v)
                used = cl & (v >= vlo) & (v <= vhi)
                imp = cl & fin & (a > limit) & ~used
                n_clr += w if cl else 0
                n_nf += w if cl & ~fin else 0
                n_imp += w if imp else 0
                n_use += w if used else 0
                fb[j] = min(fa[j], rr if used else none)
                lb[j] = rr if used else la_[j]
                xb[j] = max(xa[j], a if imp else np.float32(0.0))
        counts[c, 0] = n_rows * m
        counts[c, 1] = n_clr
        counts[c, 2] = n_nf
        counts[c, 3] = n_imp
        counts[c, 4] = n_clr - n_nf - n_imp - n_use
        counts[c, 5] = n_use


def scan_inputs(values: np.ndarray, clear: np.ndarray, rows: np.ndarray, row_doy: np.ndarray,
                valid_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, PhenologyStats]:
    """Input sanity of ``values``/``clear`` (T, N) on the rows ``rows`` (the analysis window, in time order, at day of
    year ``row_doy``): (first, last, stats), where first/last (N,) float64 are the day of year of each pixel's first
    and last used observation (NaN if none). ``stats.max_abs`` is the largest implausible |value| marked clear (NaN
    if none)."""
    n = values.shape[1]
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n_rows = rows.shape[0]
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    if not clear.flags.c_contiguous:
        clear = np.ascontiguousarray(clear)
    n_chunks = max(1, min(64, (n + 4095) // 4096))
    counts = np.zeros((n_chunks, len(_COUNTS)), dtype=np.int64)
    fi = np.empty((2, n), dtype=np.int32)
    la = np.empty((2, n), dtype=np.int32)
    mx = np.empty((2, n), dtype=np.float32)
    if n == 0 or n_rows == 0:
        nan = np.full(n, np.nan)
        return nan, nan.copy(), PhenologyStats(n_observations=0, n_flagged_clear=0)
    _scan(values, clear, rows, np.float32(valid_range[0]), np.float32(valid_range[1]), np.float32(PLAUSIBLE_LIMIT),
          fi, la, mx, counts)
    doy = np.asarray(row_doy, dtype=np.float64)
    has = la[0] >= 0
    first = np.where(has, doy[np.minimum(fi[0], n_rows - 1)], np.nan)
    last = np.where(has, doy[np.maximum(la[0], 0)], np.nan)
    big = float(mx[0].max())
    stats = PhenologyStats(**{name: int(v) for name, v in zip(_COUNTS, counts.sum(axis=0))},
                           max_abs=big if big > 0 else float("nan"))
    return first, last, stats


# ----------------------------------------------------------------------------------------------------- warning

_warned_unscaled = False


def warn_unscaled(stats: PhenologyStats) -> bool:
    """Log, once per process, that the input looks unscaled when ``stats.looks_unscaled``; True if it logged now."""
    global _warned_unscaled
    if not stats.looks_unscaled or _warned_unscaled:
        return False
    _warned_unscaled = True
    log.warning(
        "phenology input looks unscaled: %.0f %% of the finite index values marked clear lie beyond +-%.1f (largest "
        "|value| %.4g), where a vegetation index of surface reflectance lies within +-1. An index of reflectance "
        "digital numbers (DN, up to 10000) or an index stored x 10000 was probably passed: compute the index from "
        "reflectance = DN / 10000, "
        "or (DN - 1000) / 10000 for Sentinel-2 processing baseline 04.00 and later (products from 25 January 2022, "
        "BOA_ADD_OFFSET = -1000). Those observations are rejected, so their pixels come back as QA 1 (too few "
        "observations). (Logged once per process.)",
        100.0 * stats.share_implausible, PLAUSIBLE_LIMIT, stats.max_abs)
    return True


def reset_warnings() -> None:
    """Re-arm the once-per-process warning (e.g. at the start of a run)."""
    global _warned_unscaled
    _warned_unscaled = False


# -------------------------------------------------------------------------------------------------------- guard


def enforce(out: np.ndarray, qa: np.ndarray, first: np.ndarray, last: np.ndarray,
            allowance: float) -> tuple[int, int]:
    """The guard (see the module docstring) on the kernels' output, in place: ``out`` (N_FLOAT, N) float32 in the
    row order of :data:`treemap.phenology.FLOAT_FIELDS`, ``qa`` (N,) uint8, ``first``/``last`` (N,) the day of year
    of each pixel's first and last used observation, ``allowance`` the days a date may lie outside them (the node
    step). Returns (pixels changed, dates set to NaN)."""
    n = qa.shape[0]
    if n == 0:
        return 0, 0
    d = out[:7]
    was_nan = np.isnan(d)
    lo = first - (allowance + _SPAN_SLACK)
    hi = last + (allowance + _SPAN_SLACK)
    with np.errstate(invalid="ignore"):
        outside = ~was_nan & ~((d >= lo) & (d <= hi))  # a NaN span (no observation) holds no date
    left = np.array(_LEFT)
    right = np.array(_RIGHT)

    def side_bad(rows, nan_rows):
        part = nan_rows[rows].any(axis=0) & ~nan_rows[rows].all(axis=0)
        with np.errstate(invalid="ignore"):
            disorder = (d[rows[1]] < d[rows[0]]) | (d[rows[2]] < d[rows[1]])
        return outside[rows].any(axis=0) | part | disorder

    bad_l = side_bad(left, was_nan)
    bad_r = side_bad(right, was_nan)
    with np.errstate(invalid="ignore"):
        crossed = d[MATURITY] > d[SENESCENCE]
    bad_l |= crossed
    bad_r |= crossed
    no_dates = (qa == QA_FEW_OBSERVATIONS) | (qa == QA_NO_CYCLE)
    bad_l |= no_dates
    bad_r |= no_dates
    d[np.ix_(left, np.flatnonzero(bad_l))] = np.nan
    d[np.ix_(right, np.flatnonzero(bad_r))] = np.nan
    with np.errstate(invalid="ignore"):
        bad_p = outside[PEAK] | (d[PEAK] < d[MATURITY]) | (d[PEAK] > d[SENESCENCE]) | no_dates
    d[PEAK, bad_p] = np.nan
    now_nan = np.isnan(d)
    cleared = now_nan & ~was_nan
    full = (qa == QA_GOOD) | (qa == QA_GAP)
    demote = full & now_nan.any(axis=0)
    qa[demote] = QA_PARTIAL
    # derived fields: the season length goes with its two dates (kept as the kernels computed it otherwise)
    out[SEASON_LENGTH, np.isnan(d[GREENUP]) | np.isnan(d[DORMANCY])] = np.nan
    nxt = out[NEXT_GREENUP]
    with np.errstate(invalid="ignore"):
        bad_next = ~np.isnan(nxt) & (~((nxt >= lo) & (nxt <= hi)) | (nxt < d[DORMANCY]) | no_dates)
    nxt[bad_next] = np.nan
    few = qa == QA_FEW_OBSERVATIONS
    if few.any():
        out[:, few] = np.nan
    changed = cleared.any(axis=0) | demote | bad_next
    n_px = int(np.count_nonzero(changed))
    n_dates = int(np.count_nonzero(cleared)) + int(np.count_nonzero(bad_next))
    if n_px:
        log.debug("phenology guard: %d of %d pixels changed (%d dates set to NaN)", n_px, n, n_dates)
    return n_px, n_dates


__all__ = ["PLAUSIBLE_LIMIT", "UNSCALED_SHARE", "PhenologyStats", "scan_inputs", "warn_unscaled", "reset_warnings",
           "enforce"]
