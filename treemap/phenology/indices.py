"""Vegetation indices on surface reflectance (0..1)."""

from __future__ import annotations

import numpy as np


def evi(blue, red, nir) -> np.ndarray:
    """Enhanced Vegetation Index, 2.5 (NIR - Red) / (NIR + 6 Red - 7.5 Blue + 1), float32.

    NaN where any input is NaN or the denominator is zero; no clipping (implausible values are the
    ``valid_range`` check's job in :func:`treemap.phenology.phenology_metrics`).
    """
    blue = np.asarray(blue, dtype=np.float32)
    red = np.asarray(red, dtype=np.float32)
    nir = np.asarray(nir, dtype=np.float32)
    den = nir + np.float32(6.0) * red - np.float32(7.5) * blue + np.float32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.float32(2.5) * (nir - red) / den
    return np.where(den != 0, out, np.float32(np.nan)).astype(np.float32, copy=False)


def normalised_difference(a, b) -> np.ndarray:
    """(a - b) / (a + b), float32; NaN where a + b is 0 or an input is NaN."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    den = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / den
    return np.where(den != 0, out, np.float32(np.nan)).astype(np.float32, copy=False)


def ndvi(red, nir) -> np.ndarray:
    """Normalised Difference Vegetation Index, (NIR - Red) / (NIR + Red), float32; NaN where NIR + Red is 0."""
    return normalised_difference(nir, red)


def ndsi(green, swir) -> np.ndarray:
    """Normalised Difference Snow Index (B03 - B11) / (B03 + B11), float32; NaN where the sum is 0 or an input is
    NaN."""
    return normalised_difference(green, swir)
