"""Phenology of a tile from its harmonised, cloud-masked reflectance cube, and phenology-based seasonal composites.

The cube is the pipeline's: ``dates`` (T,), reflectance (T, 10, H, W) float32 in Sentinel-2 band order
(:data:`BAND_ORDER`) with NaN where the observation is not clear (for phenology, snow-classified observations, SCL
11, count as not clear). Observations with snow on the ground that the classification missed are screened out before
the fit (:mod:`treemap.phenology.snow`), for EVI and NDVI alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from treemap.phenology._core import PhenologyResult, jan1, to_days
from treemap.phenology.indices import evi, ndvi
from treemap.phenology.seasons import seasonal_windows
from treemap.phenology.snow import SnowScreen, snow_mask

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
    "Peak: day of year of the centre of the index top",
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


def _screen_params(snow_screen: bool | SnowScreen) -> SnowScreen | None:
    if isinstance(snow_screen, SnowScreen):
        return snow_screen
    return SnowScreen() if snow_screen else None


def vegetation_index(refl: np.ndarray, index: str = "evi",
                     snow_screen: bool | SnowScreen = False) -> tuple[np.ndarray, np.ndarray]:
    """The index of a reflectance block (T, 10, ...) in :data:`BAND_ORDER`: values (T, ...) float32 and the clear
    mask (T, ...) bool (every band finite: the cube's NaN marks cloud, shadow and nodata).

    ``snow_screen`` (``True`` or a :class:`~treemap.phenology.snow.SnowScreen`): the clear mask also leaves out the
    observations the snow screen finds. Its second test compares each observation with the pixel's others, so give
    the pixels' whole series (all dates), not a block of a few acquisitions.
    """
    refl = np.asarray(refl)
    if refl.ndim < 2 or refl.shape[1] != len(BAND_ORDER):
        raise ValueError(f"reflectance must be (T, {len(BAND_ORDER)}, ...), got {refl.shape}")
    if index == "evi":
        vi = evi(refl[:, _BLUE], refl[:, _RED], refl[:, _NIR])
    elif index == "ndvi":
        vi = ndvi(refl[:, _RED], refl[:, _NIR])
    else:
        raise ValueError(f"unknown index {index!r} (evi, ndvi)")
    clear = np.isfinite(refl).all(axis=1)
    params = _screen_params(snow_screen)
    if params is not None:
        clear &= ~snow_mask(refl, vi, clear, params)
    return vi, clear


def metric_stack(result: PhenologyResult, shape: tuple[int, int]) -> np.ndarray:
    """(len(METRIC_NAMES), H, W) float32 of a flat (row-major) result."""
    h, w = shape
    data = np.empty((len(METRIC_NAMES), h, w), dtype=np.float32)
    for i, name in enumerate(METRIC_NAMES):
        data[i] = getattr(result, name).reshape(h, w)
    return data


@dataclass(frozen=True)
class TilePhenology:
    data: np.ndarray  # (len(METRIC_NAMES), H, W) float32, NaN where undefined
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    result: PhenologyResult  # the full per-pixel result, flattened row-major (N = H * W)
    shape: tuple[int, int]
    n_snow: int = 0  # clear observations the snow screen left out of the fit


def tile_phenology(dates, refl: np.ndarray, year: int, *, index: str = "evi",
                   snow_screen: bool | SnowScreen = True, **kwargs) -> TilePhenology:
    """Phenology metrics of every pixel of a reflectance cube.

    Args:
        dates: (T,) acquisition dates.
        refl: (T, 10, H, W) float32 surface reflectance in :data:`BAND_ORDER`, NaN where not clear (snow-classified
            observations included: SCL 11 does not count as clear for phenology).
        year: the year to report.
        index: ``"evi"`` (default) or ``"ndvi"``.
        snow_screen: leave out the observations with snow on the ground that the cloud mask missed
            (:mod:`treemap.phenology.snow`; ``True`` by default, or a :class:`~treemap.phenology.snow.SnowScreen`
            with other thresholds; ``False`` for none). ``n_snow`` of the result counts them.
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
    params = _screen_params(snow_screen)
    rows = max(1, _CHUNK // max(w, 1))
    parts = []
    n_snow = 0
    for r0 in range(0, h, rows):
        block = refl[:, :, r0:r0 + rows]
        vi, clear = vegetation_index(block, index)
        if params is not None:  # whole series of these rows: the screen compares each pixel's observations
            snow = snow_mask(block, vi, clear, params)
            n_snow += int(snow.sum())
            clear &= ~snow
        parts.append(phenology_metrics(dates, vi.reshape(t, -1), clear.reshape(t, -1), year, **kwargs))
    if parts:
        from treemap.phenology.sanity import PhenologyStats

        res = PhenologyResult(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in parts[0].as_dict()},
                              year=int(year), stats=PhenologyStats.combine(p.stats for p in parts))
    else:
        res = phenology_metrics(dates, np.empty((t, 0), np.float32), np.empty((t, 0), bool), year, **kwargs)
    data = metric_stack(res, (h, w))
    return TilePhenology(data=data, names=METRIC_NAMES, descriptions=METRIC_DESCRIPTIONS, result=res, shape=(h, w),
                         n_snow=n_snow)


def seasonal_composites(dates, refl: np.ndarray, result, *, half_width: float = COMPOSITE_HALF_WIDTH) -> np.ndarray:
    """Clear-sky median composites of the four phenological seasons, (4, 10, H, W) float32.

    For each pixel and season (:data:`treemap.phenology.SEASONS`, intervals from :func:`seasonal_windows`), the
    per-band median (the mean of the two middle values for an even count) of the clear observations (all bands
    finite) dated within ``half_width`` days of the season's middle and inside the season. NaN where there is no
    such observation or the season is undefined. (:class:`SeasonalCompositor` does the same over a series read in
    blocks.)

    Args:
        dates: (T,) acquisition dates of ``refl``.
        refl: (T, 10, H, W) float32 reflectance, NaN where not clear.
        result: the :class:`PhenologyResult` of the same pixels (N = H * W, row-major) or a :class:`TilePhenology`.
        half_width: days either side of the season's middle (default :data:`COMPOSITE_HALF_WIDTH`).
    """
    refl = np.asarray(refl, dtype=np.float32)
    if refl.ndim != 4:
        raise ValueError(f"reflectance must be (T, B, H, W), got {refl.shape}")
    t, nb, h, w = refl.shape
    comp = SeasonalCompositor(dates, result, (h, w), nb, half_width=half_width)
    comp.add(dates, refl)
    return comp.result()


class SeasonalCompositor:
    """Seasonal median composites over a time series that arrives in blocks (bounded memory).

    Holds, per pixel and season, up to ``capacity`` clear observations (the most dates any window can hold), so
    memory is 4 x bands x H x W x capacity float32 whatever the length of the series.

    Args:
        all_dates: every acquisition date the blocks will bring (sets the capacity).
        result: the :class:`PhenologyResult` of the H x W pixels (row-major) or a :class:`TilePhenology`.
        shape: (H, W).
        bands: number of bands of the blocks.
        half_width: days either side of a season's middle.
    """

    def __init__(self, all_dates, result, shape: tuple[int, int], bands: int, *,
                 half_width: float = COMPOSITE_HALF_WIDTH):
        if isinstance(result, TilePhenology):
            result = result.result
        h, w = shape
        if len(result) != h * w:
            raise ValueError(f"result has {len(result)} pixels, the cube {h * w}")
        self.year = int(result.year)
        self.shape = (h, w)
        self.bands = int(bands)
        doy = np.sort(self._doy(all_dates))
        n = doy.shape[0]
        # most dates any window can hold: dates within 2 * half_width days of each other
        self.capacity = max(1, int(np.max(np.searchsorted(doy, doy + 2 * half_width, side="right")
                                          - np.arange(n)))) if n else 1
        win = seasonal_windows(result).reshape(4, 2, h, w).astype(np.float64)
        mid = 0.5 * (win[:, 0] + win[:, 1])
        self._lo = np.maximum(win[:, 0], mid - half_width)
        self._hi = np.minimum(win[:, 1], mid + half_width)
        self._buf = np.empty((4, self.bands, h, w, self.capacity), dtype=np.float32)
        self._count = np.zeros((4, h, w), dtype=np.int64)

    def _doy(self, dates) -> np.ndarray:
        return (to_days(dates) - jan1(self.year) + 1).astype(np.float64)

    def add(self, dates, refl: np.ndarray) -> None:
        """A block of the series: ``dates`` (T,), ``refl`` (T, bands, H, W) float32, NaN where not clear."""
        refl = np.ascontiguousarray(refl, dtype=np.float32)
        doy = self._doy(dates)
        if refl.ndim != 4 or refl.shape[1:] != (self.bands, *self.shape) or doy.shape != (refl.shape[0],):
            raise ValueError(f"block must be (T, {self.bands}, {self.shape[0]}, {self.shape[1]}) with T dates, "
                             f"got {refl.shape} and {doy.shape[0]} dates")
        if refl.shape[0]:
            _accumulate(refl, doy, self._lo, self._hi, self._buf, self._count)

    def result(self) -> np.ndarray:
        """(4, bands, H, W) float32 medians, NaN where a season got no clear observation."""
        out = np.full((4, self.bands, *self.shape), np.nan, dtype=np.float32)
        _medians(self._buf, self._count, out)
        return out


@njit(parallel=True, cache=True)
def _accumulate(refl, doy, lo, hi, buf, cnt):  # pragma: no cover - compiled
    t, nb, h, w = refl.shape
    cap = buf.shape[4]
    for y in prange(h):
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
                    if d >= lo[s, y, x] and d <= hi[s, y, x] and cnt[s, y, x] < cap:
                        c = cnt[s, y, x]
                        for b in range(nb):
                            buf[s, b, y, x, c] = refl[i, b, y, x]
                        cnt[s, y, x] = c + 1


@njit(parallel=True, cache=True)
def _medians(buf, cnt, out):  # pragma: no cover - compiled
    _, nb, h, w, _ = buf.shape
    for y in prange(h):
        for s in range(4):
            for x in range(w):
                c = cnt[s, y, x]
                if c == 0:
                    continue
                for b in range(nb):
                    v = np.sort(buf[s, b, y, x, :c])
                    out[s, b, y, x] = 0.5 * (v[(c - 1) // 2] + v[c // 2])
