"""Truth phenology: MODIS MCD12Q2 transition dates of each pixel's clean daily EVI curve."""

from __future__ import annotations

import numpy as np
from numba import njit

from treemap.demo.classes import AUTUMN_SD, BLOSSOM, BLOSSOM_SD
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


@njit(nogil=True, cache=True)
def _kernel(off, dv, aut, sos, eos, rup, rdn, blossom, bdoy, blossom_spec, autumn_sd, blossom_sd, n_days,
            min_amp, out):  # pragma: no cover - compiled
    n = sos.shape[0]
    curve = np.empty(n_days)
    for i in range(n):
        for d in range(n_days):
            t = d + 1.0
            z1 = min(max((t - sos[i]) / rup[i], -60.0), 60.0)
            z2 = min(max((t - eos[i]) / rdn[i], -60.0), 60.0)
            v = 1.0 / (1.0 + np.exp(-z1)) - 1.0 / (1.0 + np.exp(-z2))
            v = min(max(v, 0.0), 1.0)
            za = (t - eos[i]) / autumn_sd
            ga = np.exp(-0.5 * za * za) if abs(za) < 9.0 else 0.0
            gb = 0.0
            if blossom[i] != 0.0:
                zb = (t - bdoy[i]) / blossom_sd
                gb = blossom[i] * np.exp(-0.5 * zb * zb) if abs(zb) < 9.0 else 0.0
            b = off[0, i] + dv[0, i] * v + aut[0, i] * ga + blossom_spec[0] * gb
            r = off[1, i] + dv[1, i] * v + aut[1, i] * ga + blossom_spec[1] * gb
            nr = off[2, i] + dv[2, i] * v + aut[2, i] * ga + blossom_spec[2] * gb
            curve[d] = 2.5 * (nr - r) / (nr + 6.0 * r - 7.5 * b + 1.0)
        peak = 0
        lo = curve[0]
        for d in range(1, n_days):
            if curve[d] > curve[peak]:
                peak = d
            if curve[d] < lo:
                lo = curve[d]
        amp = curve[peak] - lo
        ok = amp >= min_amp
        out[3, i] = peak + 1
        for k in range(3):
            thr = lo + (0.15, 0.5, 0.9)[k] * amp
            first = -1
            for d in range(1, peak + 1):
                if curve[d] >= thr and curve[d - 1] < thr:
                    first = d
                    break
            last = -1
            for d in range(n_days - 2, peak - 1, -1):
                if curve[d] >= thr and curve[d + 1] < thr:
                    last = d
                    break
            if first < 0 or last < 0:
                ok = False
            out[k, i] = first + 1
            out[6 - k, i] = last + 1
        for k in range(6):
            if out[k, i] > out[k + 1, i]:
                ok = False
        if not ok:
            for k in range(7):
                out[k, i] = NODATA


def phenology_chunk(f: Fields, idx: np.ndarray, n_days: int) -> np.ndarray:
    """Truth dates (1-based DOY) for the pixels ``idx`` (flat indices): (7, len(idx)) int16."""
    bands = [0, 2, 6]  # B02, B04, B08
    out = np.empty((7, len(idx)), dtype=np.int16)
    _kernel(np.ascontiguousarray(f.off[bands][:, idx], dtype=np.float64),
            np.ascontiguousarray(f.dv[bands][:, idx], dtype=np.float64),
            np.ascontiguousarray(f.autumn[bands][:, idx], dtype=np.float64),
            f.sos[idx].astype(np.float64), f.eos[idx].astype(np.float64), f.rup[idx].astype(np.float64),
            f.rdn[idx].astype(np.float64), f.blossom[idx].astype(np.float64),
            f.blossom_doy[idx].astype(np.float64), BLOSSOM[bands].astype(np.float64), AUTUMN_SD, BLOSSOM_SD,
            n_days, MIN_AMPLITUDE, out)
    out[:, ~f.has_cycle[idx]] = NODATA
    return out


def phenology_chunk_numpy(f: Fields, idx: np.ndarray, n_days: int) -> np.ndarray:
    """Reference implementation of :func:`phenology_chunk` in plain numpy (float32; slow, for tests)."""
    t = np.arange(1, n_days + 1, dtype=np.float32)[:, None]
    b, r, nr = surface(f, t, idx, bands=(0, 2, 6))
    out = transition_dates(evi(b, r, nr))
    out[:, ~f.has_cycle[idx]] = NODATA
    return out
