"""A pixel's encoder input cut from a tile's monthly composites, on the host: its 5 x 5 neighbourhood in each of the
12 months (12, 10, 5, 5).

A month counts as present for a pixel when its centre pixel has a clear observation (all bands); gaps inside a
present month's patch take the patch mean per band, and a month whose centre is missing is all missing.
:mod:`treemap.feed` does the same on the device."""

from __future__ import annotations

import warnings

import numpy as np

PATCH = 5


def pixel_patches(composites: np.ndarray, halo: int, rows: slice) -> np.ndarray:
    """Patches (N, 12, 10, 5, 5) for the core pixels of the given core rows, row-major.

    ``composites`` is (12, 10, H + 2 halo, W + 2 halo); requires halo >= 2.
    """
    if halo < PATCH // 2:
        raise ValueError("the halo must be at least 2 pixels for 5 x 5 patches")
    r = PATCH // 2
    start, stop = rows.start, rows.stop
    width = composites.shape[-1] - 2 * halo
    block = composites[:, :, start + halo - r: stop + halo + r, halo - r: halo + width + r]
    windows = np.lib.stride_tricks.sliding_window_view(block, (PATCH, PATCH), axis=(2, 3))
    # windows: (12, 10, rows, width, 5, 5) -> (rows*width, 12, 10, 5, 5)
    # copy(): a writable C-ordered array even where the transposed view happens to be contiguous (1-px-wide cores)
    out = windows.transpose(2, 3, 0, 1, 4, 5).copy().reshape(-1, 12, composites.shape[1], PATCH, PATCH)
    return fill_present_months(out)


def kept_patches(composites: np.ndarray, halo: int, rows: slice, keep: np.ndarray,
                 gaps: np.ndarray | None = None) -> np.ndarray:
    """``pixel_patches(composites, halo, rows)[keep]``, made without the patches of the other pixels.

    ``keep`` is a boolean mask over the block's pixels or their flat indices (row-major, ascending). The patches of
    the kept pixels are copied straight out of the sliding-window view (one copy), and only those with a missing
    value anywhere in their window go through :func:`fill_present_months` (a per-patch operation, so the values are
    the same to the bit); a window is found gap-free from the composites' NaN map (a 5 x 5 box test on a 2-D
    array, :func:`window_gaps`, which a caller cutting one block in several parts passes as ``gaps``) instead of
    testing 25 copies of every value."""
    if halo < PATCH // 2:
        raise ValueError("the halo must be at least 2 pixels for 5 x 5 patches")
    r = PATCH // 2
    width = composites.shape[-1] - 2 * halo
    block = composites[:, :, rows.start + halo - r: rows.stop + halo + r, halo - r: halo + width + r]
    picked = np.flatnonzero(keep) if keep.dtype == bool else keep
    ri, ci = np.divmod(picked, width)
    windows = np.lib.stride_tricks.sliding_window_view(block, (PATCH, PATCH), axis=(2, 3))
    out = windows.transpose(2, 3, 0, 1, 4, 5)[ri, ci]  # (K, 12, bands, 5, 5), a fresh C-ordered array
    if gaps is None:
        gaps = window_gaps(composites, halo, rows)
    gappy = gaps[ri, ci]
    if gappy.any():
        out[gappy] = fill_present_months(out[gappy])
    return out


def window_gaps(composites: np.ndarray, halo: int, rows: slice) -> np.ndarray:
    """(rows, W) whether the 5 x 5 window of each core pixel of ``rows`` misses a value in any month or band."""
    r = PATCH // 2
    width = composites.shape[-1] - 2 * halo
    block = composites[:, :, rows.start + halo - r: rows.stop + halo + r, halo - r: halo + width + r]
    holes = np.isnan(block).any(axis=(0, 1))
    return np.lib.stride_tricks.sliding_window_view(holes, (PATCH, PATCH)).any(axis=(2, 3))


def scale_composites_host(composites: np.ndarray, band_min: np.ndarray, band_max: np.ndarray) -> np.ndarray:
    """:func:`treemap.feed.scale_composites` in numpy (the same float32 operations in the same order), NaN kept."""
    lo = band_min.astype(np.float32)[None, :, None, None]
    hi = band_max.astype(np.float32)[None, :, None, None]
    scaled = (composites - lo) / (hi - lo + np.float32(1e-6))
    scaled *= np.float32(2.0)
    scaled -= np.float32(1.0)
    return scaled


def scaled_patches(scaled: np.ndarray, halo: int, rows: slice, keep: np.ndarray,
                   gaps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(patches, present)`` of the kept pixels from composites already scaled (:func:`scale_composites_host`):
    gaps filled as :func:`kept_patches` fills them, then missing months written as 0, as the normaliser writes
    them; ``present`` (K, 12) the months whose centre pixel is clear."""
    patches = kept_patches(scaled, halo, rows, keep, gaps)
    present = ~np.isnan(patches[:, :, :, PATCH // 2, PATCH // 2]).any(axis=2)
    patches[np.isnan(patches)] = 0.0
    return patches, present


def present_months(composites: np.ndarray, halo: int, rows: slice) -> np.ndarray:
    """(N, 12) whether each month is present (clear centre pixel, all bands) for the core pixels of ``rows``, as
    :func:`pixel_patches` decides it."""
    width = composites.shape[-1] - 2 * halo
    centre = composites[:, :, rows.start + halo: rows.stop + halo, halo: halo + width]
    return (~np.isnan(centre).any(axis=1)).reshape(12, -1).T


def fill_present_months(patches: np.ndarray) -> np.ndarray:
    """Months whose centre pixel is missing become all-NaN (missing); other gaps take the patch mean per band."""
    c = PATCH // 2
    centre_missing = np.isnan(patches[:, :, :, c, c]).any(axis=2)  # (N, 12)
    patches[centre_missing] = np.nan
    gaps = np.isnan(patches) & ~centre_missing[:, :, None, None, None]
    if gaps.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(patches, axis=(3, 4), keepdims=True)
        patches[gaps] = np.broadcast_to(means, patches.shape)[gaps]
    return patches
