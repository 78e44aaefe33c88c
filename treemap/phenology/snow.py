"""Snow screen for the phenology fit: observations with snow on the ground never enter the smoother.

Why: snow lowers a vegetation index (NDVI of snow is near 0, and snow on a tenth of the ground under a leafless
canopy already takes a forest's winter NDVI from about 0.4 to 0.2, because snow is so bright in the red and the
NIR). A handful of such winter dates pull the dormant base of the smoothed curve down, so the 15 % greenup
threshold drops into the winter and is crossed in January to March instead of April to May. The scene
classification flags open snow (SCL 11), and a phenology run drops those observations before this screen runs
(:data:`treemap.phenology_run.PHENOLOGY_CLEAR_SCL`); the screen catches what the classification misses, from the
data themselves. Two tests, on the observations that count as clear:

1. **Open snow**, per observation: NDSI = (B03 - B11) / (B03 + B11) above :attr:`SnowScreen.ndsi` (0.4), with B03
   above :attr:`SnowScreen.min_green` (0.1) and B08 above :attr:`SnowScreen.min_nir` (0.11). Snow is bright in the
   visible and dark at 1.6 um, so its NDSI is high; 0.4 is the threshold of the MODIS snow algorithm (SNOMAP),
   and its two brightness tests are the ones used here. Open water has a high NDSI too but is dark in the visible
   and the NIR, which they exclude (:mod:`treemap.treemask` uses the same NDSI and B03 tests on monthly composites).
2. **Snow under a canopy**, per pixel: in a mixed pixel (snow on the forest floor, between trunks and branches) the
   NDSI stays below 0.4 (for a leafless hornbeam stand of the demo world: -0.59 bare, -0.44 with 3 % snow cover,
   -0.16 with 10 %, -0.01 with 15 %) while its NDVI already falls from 0.42 to 0.33, 0.20 and 0.14 (EVI: 0.19,
   0.18, 0.16, 0.15). So the pixel's own observations are the reference. An observation is snow when all three hold:

   * it is brighter in the visible than the pixel usually is: B03 at least :attr:`SnowScreen.green_rise` (0.03
     reflectance) above the median B03 of the pixel's clear observations (vegetation and soil are dark in the green
     in every season; 3 % snow cover adds 0.025, 5 % 0.04, 10 % 0.09);
   * its NDSI is at least :attr:`SnowScreen.ndsi_rise` (0.2) above the pixel's median NDSI (3 % snow cover: +0.1,
     5 %: +0.2, 10 %: +0.38): snow brightens the green far more than B11. Dry soil, straw and senescent leaves
     brighten both bands (NDSI about unchanged or lower), so a bright bare field is not taken for snow;
   * its index lies at least :attr:`SnowScreen.min_drop` (0.03, 1.5 times the noise of a Sentinel-2 index; the two
     brightness tests already make the case) below the pixel's robust dormant level: the
     :attr:`SnowScreen.dormant_quantile` (25 %) quantile of the index over the pixel's clear observations that pass
     neither brightness test (the snow-free ones). A bright, snowy observation that does not pull the curve down
     (frost, a dusting on an evergreen) is left in: it does no harm.

   The medians need :attr:`SnowScreen.min_observations` (8) clear observations of the pixel, and are robust while
   snow is less than half of them. So the screen finds snow from about 6 % cover under a canopy (NDVI 0.42 -> 0.26;
   the real forest of the issue went from 0.39 to 0.16-0.24 under snow). Lower rises (0.02 and 0.1) would also find
   3-5 % cover, but took the demo world's cherry blossom for snow (white petals brighten the visible and lower the
   index just as the rise to green-up starts): dropping those dates put the greenup of nearly half of the cherry
   pixels more than 5 days off the truth, on a series without any snow. Thick haze that the cloud mask missed can
   pass the three tests in the dormant season as well (it brightens B03 far more than B11 and lowers the index);
   dropping it helps the fit the same way, but it is counted as snow. So can a flooded field (turbid water: bright
   in the green, dark in the SWIR, a low index).

The index test uses the index being fitted (EVI or NDVI), so that an observation is dropped only where it would
pull that curve down: EVI, whose blue term partly cancels the brightening, drops much less than NDVI under a thin
snow cover, and such observations stay in an EVI fit. Open snow makes EVI's denominator small and its value
erratic, which the first test covers. The result is a boolean mask of the screened observations; the phenology
run logs their count per tile and reports the total (``snow`` in the run summary).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from treemap.phenology.indices import evi, ndsi, ndvi

#: Band order of the reflectance taken here (the tile's :data:`treemap.phenology.tile.BAND_ORDER`).
_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
_BLUE, _GREEN, _RED, _NIR, _SWIR = (_BANDS.index(b) for b in ("B02", "B03", "B04", "B08", "B11"))

#: SCL class of snow and ice.
SCL_SNOW = 11

_LANES = 64  # pixels per block of the per-pixel test


@dataclass(frozen=True)
class SnowScreen:
    """Thresholds of the snow screen (see the module documentation for the reasoning)."""

    ndsi: float = 0.4  # open snow: NDSI above this ...
    min_green: float = 0.1  # ... and B03 above this (water: high NDSI, but dark) ...
    min_nir: float = 0.11  # ... and B08 above this (SNOMAP's water test)
    canopy: bool = True  # run the per-pixel test for snow under a canopy
    green_rise: float = 0.03  # B03 at least this above the pixel's median B03 ...
    ndsi_rise: float = 0.2  # ... NDSI at least this above the pixel's median NDSI ...
    min_drop: float = 0.03  # ... and the index at least this below the pixel's dormant level
    dormant_quantile: float = 0.25  # the dormant level: this quantile of the index over snow-free observations
    min_observations: int = 8  # fewer clear observations: only the open-snow test

    def __post_init__(self) -> None:
        if not 0.0 <= self.dormant_quantile <= 1.0:
            raise ValueError("dormant_quantile must be in [0, 1]")
        if self.min_observations < 1:
            raise ValueError("min_observations must be at least 1")
        if self.green_rise < 0 or self.ndsi_rise < 0 or self.min_drop < 0:
            raise ValueError("green_rise, ndsi_rise and min_drop must not be negative")


DEFAULT = SnowScreen()


def open_snow(green, snow_index, nir=None, params: SnowScreen = DEFAULT) -> np.ndarray:
    """Test 1, per observation: NDSI above ``params.ndsi``, B03 above ``params.min_green`` and (where ``nir`` is
    given) B08 above ``params.min_nir``. NaN inputs are not snow."""
    green = np.asarray(green)
    snow_index = np.asarray(snow_index)
    with np.errstate(invalid="ignore"):
        out = (snow_index > params.ndsi) & (green > params.min_green)
        if nir is not None:
            out &= np.asarray(nir) > params.min_nir
    return out


def canopy_snow(index, green, snow_index, usable, params: SnowScreen = DEFAULT) -> np.ndarray:
    """Test 2, per pixel: snow under a canopy among the ``usable`` observations (see the module documentation).

    Args:
        index: (T, ...) the vegetation index being fitted.
        green: (T, ...) B03 reflectance.
        snow_index: (T, ...) NDSI.
        usable: (T, ...) bool, the observations to judge and to take the pixel's references from (clear, not open
            snow); non-finite values never count.
        params: thresholds.

    Returns:
        (T, ...) bool, True for the observations screened as snow under a canopy.
    """
    index = np.asarray(index)
    shape = index.shape
    if np.shape(green) != shape or np.shape(snow_index) != shape or np.shape(usable) != shape:
        raise ValueError("index, green, snow_index and usable must have the same shape")
    t = shape[0] if index.ndim else 0
    n = int(np.prod(shape[1:])) if index.ndim > 1 else 1
    out = np.zeros((t, n), dtype=np.bool_)
    if t == 0 or n == 0:
        return out.reshape(shape)
    f32 = np.float32
    _canopy_kernel(np.ascontiguousarray(index.reshape(t, n), dtype=f32),
                   np.ascontiguousarray(np.asarray(green).reshape(t, n), dtype=f32),
                   np.ascontiguousarray(np.asarray(snow_index).reshape(t, n), dtype=f32),
                   np.ascontiguousarray(np.asarray(usable).reshape(t, n), dtype=np.bool_),
                   int(params.min_observations), f32(params.green_rise), f32(params.ndsi_rise),
                   f32(params.min_drop), float(params.dormant_quantile), _LANES, out)
    return out.reshape(shape)


def screen(index, green, snow_index, clear, nir=None, params: SnowScreen = DEFAULT) -> np.ndarray:
    """Both tests on index and band values: (T, ...) bool, True for the clear observations screened as snow.

    Args:
        index: (T, ...) the vegetation index being fitted.
        green: (T, ...) B03 reflectance.
        snow_index: (T, ...) NDSI (:func:`ndsi`).
        clear: (T, ...) bool, the observations that count (cloud-free, not SCL snow); others are never screened.
        nir: (T, ...) B08 reflectance, or ``None`` to leave out the NIR part of the open-snow test.
        params: thresholds.
    """
    clear = np.asarray(clear, dtype=np.bool_)
    is_open = clear & open_snow(green, snow_index, nir, params)
    if not params.canopy:
        return is_open
    with np.errstate(invalid="ignore"):
        usable = clear & ~is_open & (np.abs(np.asarray(index)) <= 1.0)
    return is_open | canopy_snow(index, green, snow_index, usable, params)


def snow_mask(refl, index="ndvi", clear=None, params: SnowScreen = DEFAULT) -> np.ndarray:
    """The snow screen on reflectance (T, 10, ...) in :data:`treemap.phenology.tile.BAND_ORDER`.

    Args:
        refl: (T, 10, ...) surface reflectance, NaN where not clear.
        index: the index the pixels' curves are fitted to: ``"ndvi"`` or ``"evi"`` (computed here), or its values
            (T, ...).
        clear: (T, ...) bool; ``None``: the observations with every band finite.
        params: thresholds.

    Returns:
        (T, ...) bool: True for the clear observations screened as snow.
    """
    refl = np.asarray(refl)
    if refl.ndim < 2 or refl.shape[1] != len(_BANDS):
        raise ValueError(f"reflectance must be (T, {len(_BANDS)}, ...), got {refl.shape}")
    if isinstance(index, str):
        if index == "ndvi":
            values = ndvi(refl[:, _RED], refl[:, _NIR])
        elif index == "evi":
            values = evi(refl[:, _BLUE], refl[:, _RED], refl[:, _NIR])
        else:
            raise ValueError(f"unknown index {index!r} (evi, ndvi)")
    else:
        values = np.asarray(index)
    if clear is None:
        clear = np.isfinite(refl).all(axis=1)
    green = refl[:, _GREEN]
    return screen(values, green, ndsi(green, refl[:, _SWIR]), clear, refl[:, _NIR], params)


def screen_bands(refl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the screen needs of a reflectance block (T, 10, ...), for a series read in blocks: B03 and NDSI as
    float16 (half the memory of float32; 3 significant digits are plenty for thresholds of 0.03 and 0.2) and the
    open-snow test (bool), all (T, ...)."""
    refl = np.asarray(refl)
    green = refl[:, _GREEN]
    snow_index = ndsi(green, refl[:, _SWIR])
    is_open = open_snow(green, snow_index, refl[:, _NIR])
    return green.astype(np.float16), snow_index.astype(np.float16), is_open


def screen_series(values, green, snow_index, is_open, clear, params: SnowScreen = DEFAULT,
                  chunk: int = 1 << 16) -> np.ndarray:
    """The screen of a whole (T, N) series whose per-observation parts came from :func:`screen_bands`: True for
    the clear observations screened as snow. Works on ``chunk`` pixels at a time (bounds the float32 copies)."""
    clear = np.asarray(clear, dtype=np.bool_)
    out = clear & np.asarray(is_open, dtype=np.bool_)
    if not params.canopy:
        return out
    n = clear.shape[1] if clear.ndim == 2 else 0
    for i0 in range(0, n, chunk):
        sl = slice(i0, min(n, i0 + chunk))
        v = np.asarray(values[:, sl], dtype=np.float32)
        with np.errstate(invalid="ignore"):
            usable = clear[:, sl] & ~out[:, sl] & (np.abs(v) <= 1.0)
        out[:, sl] |= canopy_snow(v, green[:, sl], snow_index[:, sl], usable, params)
    return out


# ---------------------------------------------------------------------------------------------------- kernel


@njit(cache=True)
def _quantile(a, m, q):  # pragma: no cover - compiled
    """The ``q`` quantile of the first ``m`` values of ``a`` (sorted in place), interpolated linearly between order
    statistics as NumPy's default does."""
    s = np.sort(a[:m])
    pos = q * (m - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, m - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


@njit(parallel=True, cache=True)
def _canopy_kernel(index, green, snow_index, usable, min_obs, green_rise, ndsi_rise, min_drop, quantile, lanes,
                   out):  # pragma: no cover - compiled
    """Test 2 for every pixel of (T, N) arrays; sets ``out`` True for the screened observations. Pixels go in blocks
    of ``lanes``: a block's usable observations are gathered row by row (contiguous reads), then each pixel is
    judged on its own. A pixel whose B03 or NDSI never varies by the rise (no observation can stand out from its
    median) is done after the gather: most snow-free pixels; the medians and the quantile are computed only for
    the others, the quantile only where an observation is bright."""
    t, n = index.shape
    n_blocks = (n + lanes - 1) // lanes
    for b in prange(n_blocks):
        j0 = b * lanes
        nl = min(lanes, n - j0)
        cnt = np.zeros(lanes, dtype=np.int64)
        g_lo = np.full(lanes, np.inf, dtype=np.float32)
        g_hi = np.full(lanes, -np.inf, dtype=np.float32)
        s_lo = np.full(lanes, np.inf, dtype=np.float32)
        s_hi = np.full(lanes, -np.inf, dtype=np.float32)
        rows = np.empty((lanes, t), dtype=np.int64)
        gv = np.empty((lanes, t), dtype=np.float32)
        sv = np.empty((lanes, t), dtype=np.float32)
        vv = np.empty((lanes, t), dtype=np.float32)
        for i in range(t):
            for q in range(nl):
                j = j0 + q
                if usable[i, j]:
                    g = green[i, j]
                    s = snow_index[i, j]
                    v = index[i, j]
                    if np.isfinite(g) and np.isfinite(s) and np.isfinite(v):
                        c = cnt[q]
                        rows[q, c] = i
                        gv[q, c] = g
                        sv[q, c] = s
                        vv[q, c] = v
                        cnt[q] = c + 1
                        g_lo[q] = min(g_lo[q], g)
                        g_hi[q] = max(g_hi[q], g)
                        s_lo[q] = min(s_lo[q], s)
                        s_hi[q] = max(s_hi[q], s)
        work = np.empty(t, dtype=np.float32)
        bright = np.empty(t, dtype=np.bool_)
        for q in range(nl):
            m = cnt[q]
            if m < min_obs or g_hi[q] - g_lo[q] < green_rise or s_hi[q] - s_lo[q] < ndsi_rise:
                continue
            g_med = np.median(gv[q, :m])
            s_med = np.median(sv[q, :m])
            k = 0
            nb = 0
            for c in range(m):
                br = (gv[q, c] - g_med >= green_rise) and (sv[q, c] - s_med >= ndsi_rise)
                bright[c] = br
                nb += 1 if br else 0
                if not br:
                    work[k] = vv[q, c]
                    k += 1
            if nb == 0 or k == 0:
                continue
            level = _quantile(work, k, quantile)
            for c in range(m):
                if bright[c] and vv[q, c] <= level - min_drop:
                    out[rows[q, c], j0 + q] = True
