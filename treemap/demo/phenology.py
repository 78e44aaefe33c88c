"""Truth phenology: MODIS MCD12Q2 transition dates of each pixel's clean daily EVI curve."""

from __future__ import annotations

import numpy as np

from treemap.demo.layout import Fields, surface

METRICS: tuple[str, ...] = ("Greenup", "MidGreenup", "Maturity", "Peak", "Senescence", "MidGreendown", "Dormancy")
NODATA = -32767
MIN_AMPLITUDE = 0.05  # EVI; below it the cycle counts as undefined


def evi(blue: np.ndarray, red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    return 2.5 * (nir - red) / (nir + 6.0 * red - 7.5 * blue + 1.0)


def transition_dates(curve: np.ndarray, min_amplitude: float = MIN_AMPLITUDE) -> np.ndarray:
    """MCD12Q2 dates of daily curves ``curve`` (T days, n pixels) as 1-based day indices, (7, n) int16.

    Amplitude = maximum minus minimum. Greenup/MidGreenup/Maturity: first upward crossing (first day at or above)
    of 15/50/90 % of the amplitude, at or before the peak; Peak: the maximum; Senescence/MidGreendown/Dormancy: the
    last day at or above 90/50/15 % before a downward crossing, at or after the peak. Pixels with an amplitude below
    ``min_amplitude`` or a missing crossing get :data:`NODATA` in all seven.
    """
    n_days, n = curve.shape
    peak = np.argmax(curve, axis=0)
    hi = curve[peak, np.arange(n)]
    lo = curve.min(axis=0)
    amp = hi - lo
    day = np.arange(n_days)[:, None]
    out = np.empty((7, n), dtype=np.int64)
    out[3] = peak
    ok = amp >= min_amplitude
    for k, frac in enumerate((0.15, 0.5, 0.9)):
        above = curve >= lo + frac * amp
        up = above[1:] & ~above[:-1] & (day[1:] <= peak)
        down = above[:-1] & ~above[1:] & (day[:-1] >= peak)
        ok &= up.any(axis=0) & down.any(axis=0)
        out[k] = np.argmax(up, axis=0) + 1
        out[6 - k] = n_days - 2 - np.argmax(down[::-1], axis=0)
    ok &= np.all(np.diff(out, axis=0) >= 0, axis=0)  # multi-dip curves can break the order: undefined
    out += 1
    out[:, ~ok] = NODATA
    return out.astype(np.int16)


def phenology_chunk(f: Fields, idx: np.ndarray, n_days: int) -> np.ndarray:
    """Truth dates for the pixels ``idx`` (flat indices): (7, len(idx)) int16."""
    t = np.arange(1, n_days + 1, dtype=np.float32)[:, None]
    b, r, nr = surface(f, t, idx, bands=(0, 2, 6))
    out = transition_dates(evi(b, r, nr))
    out[:, ~f.has_cycle[idx]] = NODATA
    return out
