"""Phenology of a tile from its harmonised, cloud-masked reflectance cube, and phenology-based seasonal composites.

The cube is the pipeline's: ``dates`` (T,), reflectance (T, 10, H, W) float32 in Sentinel-2 band order
(:data:`BAND_ORDER`) with NaN where the observation is not clear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from treemap.phenology._core import PhenologyResult, jan1, to_days
from treemap.phenology.indices import evi, ndvi
from treemap.phenology.seasons import seasonal_windows

#: Band order of the reflectance cubes taken here (Sentinel-2 order).
BAND_ORDER: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
_BLUE, _RED, _NIR = BAND_ORDER.index("B02"), BAND_ORDER.index("B04"), BAND_ORDER.index("B08")

#: Bands of :attr:`TilePhenology.data`.
METRIC_NAMES: tuple[str, ...] = ("greenup", "midgreenup", "maturity", "peak", "senescence", "midgreendown",
                                 "dormancy", "minimum", "peak_value", "amplitude", "season_length", "n_clear", "qa")
METRIC_DESCRIPTIONS: tuple[str, ...] = (
    "Greenup: day of year the index first crosses 15 % of the cycle amplitude",
    "MidGreenup: day of year the index first crosses 50 % of the cycle amplitude",
    "Maturity: day of year the index first crosses 90 % of the cycle amplitude",
    "Peak: day of year of the index maximum",
    "Senescence: day of year the index last crosses 90 % of the cycle amplitude",
    "MidGreendown: day of year the index last crosses 50 % of the cycle amplitude",
    "Dormancy: day of year the index last crosses 15 % of the cycle amplitude",
    "Minimum: the cycle's base index value",
    "Peak value: the index at the peak",
    "Amplitude: peak value minus minimum",
    "Season length: dormancy minus greenup, days",
    "Number of clear observations in the year",
    "QA: 0 good, 1 too few observations, 2 no cycle, 3 cycle cut by the series ends, 4 date in a long gap",
)

#: Half width (days) of the window around each season's middle that a seasonal composite draws from: about three
#: clear-sky chances at Sentinel-2's 5-day revisit under typical cloud cover, while staying within one season.
COMPOSITE_HALF_WIDTH = 15.0

_CHUNK = 1 << 18  # pixels per call of the phenology kernel: bounds the (T, pixels) index array


@dataclass(frozen=True)
class TilePhenology:
    data: np.ndarray  # (len(METRIC_NAMES), H, W) float32, NaN where undefined
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    result: PhenologyResult  # the full per-pixel result, flattened row-major (N = H * W)
    shape: tuple[int, int]


def tile_phenology(dates, refl: np.ndarray, year: int, *, index: str = "evi", **kwargs) -> TilePhenology:
    """Phenology metrics of every pixel of a reflectance cube.

    Args:
        dates: (T,) acquisition dates.
        refl: (T, 10, H, W) float32 surface reflectance in :data:`BAND_ORDER`, NaN where not clear.
        year: the year to report.
        index: ``"evi"`` (default) or ``"ndvi"``.
        **kwargs: passed to :func:`treemap.phenology.phenology_metrics`.

    Returns:
        :class:`TilePhenology` with ``data`` (13, H, W) float32 in :data:`METRIC_NAMES` order (dates as day of year
        of ``year``, fractional; ``n_clear`` and ``qa`` as floats), band names and descriptions, and the flat
        :class:`PhenologyResult` (for :func:`seasonal_composites`).
    """
    from treemap.phenology import phenology_metrics

    refl = np.asarray(refl)
    if refl.ndim != 4 or refl.shape[1] != len(BAND_ORDER):
        raise ValueError(f"reflectance must be (T, {len(BAND_ORDER)}, H, W), got {refl.shape}")
    if index not in ("evi", "ndvi"):
        raise ValueError(f"unknown index {index!r} (evi, ndvi)")
    t, _, h, w = refl.shape
    n = h * w
    rows = max(1, _CHUNK // max(w, 1))
    parts = []
    for r0 in range(0, h, rows):
        sub = refl[:, :, r0:r0 + rows]
        m = sub.shape[2] * w
        if index == "evi":
            vi = evi(sub[:, _BLUE], sub[:, _RED], sub[:, _NIR])
        else:
            vi = ndvi(sub[:, _RED], sub[:, _NIR])
        vi = vi.reshape(t, m)
        clear = np.isfinite(sub).all(axis=1).reshape(t, m)
        parts.append(phenology_metrics(dates, vi, clear, year, **kwargs))
    if parts:
        res = PhenologyResult(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in parts[0].as_dict()},
                              year=int(year))
    else:
        res = phenology_metrics(dates, np.empty((t, 0), np.float32), np.empty((t, 0), bool), year, **kwargs)
    data = np.empty((len(METRIC_NAMES), h, w), dtype=np.float32)
    for i, name in enumerate(METRIC_NAMES):
        data[i] = getattr(res, name).reshape(h, w)
    return TilePhenology(data=data, names=METRIC_NAMES, descriptions=METRIC_DESCRIPTIONS, result=res, shape=(h, w))


def seasonal_composites(dates, refl: np.ndarray, result, *, half_width: float = COMPOSITE_HALF_WIDTH) -> np.ndarray:
    """Clear-sky median composites of the four phenological seasons, (4, 10, H, W) float32.

    For each pixel and season (:data:`treemap.phenology.SEASONS`, intervals from :func:`seasonal_windows`), the
    per-band median (the mean of the two middle values for an even count) of the clear observations (all bands
    finite) dated within ``half_width`` days of the season's middle and inside the season. NaN where there is no
    such observation or the season is undefined.

    Args:
        dates: (T,) acquisition dates of ``refl``.
        refl: (T, 10, H, W) float32 reflectance, NaN where not clear.
        result: the :class:`PhenologyResult` of the same pixels (N = H * W, row-major) or a :class:`TilePhenology`.
        half_width: days either side of the season's middle (default :data:`COMPOSITE_HALF_WIDTH`).
    """
    if isinstance(result, TilePhenology):
        result = result.result
    refl = np.asarray(refl, dtype=np.float32)
    if refl.ndim != 4:
        raise ValueError(f"reflectance must be (T, B, H, W), got {refl.shape}")
    t, nb, h, w = refl.shape
    if len(result) != h * w:
        raise ValueError(f"result has {len(result)} pixels, the cube {h * w}")
    doy = (to_days(dates) - jan1(result.year) + 1).astype(np.float64)
    if doy.shape != (t,):
        raise ValueError("dates must be (T,) matching the cube")
    win = seasonal_windows(result).reshape(4, 2, h, w).astype(np.float64)
    mid = 0.5 * (win[:, 0] + win[:, 1])
    lo = np.maximum(win[:, 0], mid - half_width)
    hi = np.minimum(win[:, 1], mid + half_width)
    order = np.argsort(doy, kind="stable")
    srt = doy[order]
    # most dates any window can hold: dates within 2 * half_width + 1 days of each other
    cap = int(np.max(np.searchsorted(srt, srt + 2 * half_width, side="right") - np.arange(t))) if t else 0
    out = np.full((4, nb, h, w), np.nan, dtype=np.float32)
    if t and cap:
        _composite_kernel(refl, doy, lo, hi, max(cap, 1), out)
    return out


@njit(parallel=True, cache=True)
def _composite_kernel(refl, doy, lo, hi, cap, out):  # pragma: no cover - compiled
    t, nb, h, w = refl.shape
    for y in prange(h):
        buf = np.empty((4, nb, w, cap), dtype=np.float32)
        cnt = np.zeros((4, w), dtype=np.int64)
        for i in range(t):
            d = doy[i]
            for x in range(w):
                ok = True
                for b in range(nb):
                    if not np.isfinite(refl[i, b, y, x]):
                        ok = False
                        break
                if not ok:
                    continue
                for s in range(4):
                    if d >= lo[s, y, x] and d <= hi[s, y, x] and cnt[s, x] < cap:
                        c = cnt[s, x]
                        for b in range(nb):
                            buf[s, b, x, c] = refl[i, b, y, x]
                        cnt[s, x] = c + 1
        for s in range(4):
            for x in range(w):
                c = cnt[s, x]
                if c == 0:
                    continue
                for b in range(nb):
                    v = np.sort(buf[s, b, x, :c])
                    out[s, b, y, x] = 0.5 * (v[(c - 1) // 2] + v[c // 2])
