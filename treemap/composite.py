"""Clear-sky masking, harmonised reflectance and monthly median composites (pure NumPy on loaded blocks).

The cube is read month by month, so memory stays at one month of one tile.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from treemap.cube import CLEAR_SCL, MODEL_BANDS, Acquisition, TileCube, acquisitions
from treemap.stac.scene import BANDS

log = logging.getLogger("treemap.composite")

_MODEL_ORDER = np.array([BANDS.index(b) for b in MODEL_BANDS])


def harmonise(dn: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """DN (T, B, H, W) -> float32 reflectance with per-scene scale/offset; DN 0 (nodata) -> NaN."""
    # in place: the same float32 multiply then add as ``dn * scale + offset``, without two full-size temporaries
    out = dn.astype(np.float32)
    out *= scale.astype(np.float32, copy=False)[:, None, None, None]
    out += offset.astype(np.float32, copy=False)[:, None, None, None]
    out[dn == 0] = np.nan
    return out


def clear_mask(scl: np.ndarray, clear: tuple[int, ...] = CLEAR_SCL) -> np.ndarray:
    """True where the scene classification says clear sky."""
    return np.isin(scl, np.asarray(clear, dtype=scl.dtype))


def mask_reflectance(refl: np.ndarray, scl: np.ndarray, clear: tuple[int, ...] = CLEAR_SCL) -> np.ndarray:
    """Set non-clear pixels (all bands) to NaN, in place; returns ``refl``."""
    refl[~np.broadcast_to(clear_mask(scl, clear)[:, None], refl.shape)] = np.nan
    return refl


def mosaic_first_valid(stack: np.ndarray) -> np.ndarray:
    """Combine scenes of one acquisition (S, B, H, W): per pixel, the first scene with all bands valid."""
    out = stack[0].copy()
    for other in stack[1:]:
        fill = np.isnan(out).any(axis=0) & ~np.isnan(other).any(axis=0)
        out[:, fill] = other[:, fill]
    return out


def nanmedian_time(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (the mean of the two middle values for an even count); all-NaN -> NaN.

    Sorts once (NaN sorts last) and picks the middle of each pixel's valid prefix: several times faster than
    ``np.nanmedian`` on (time, band, y, x) stacks with few dates.
    """
    ordered = np.sort(stack, axis=0)
    n = (~np.isnan(stack)).sum(axis=0)
    lo = np.maximum((n - 1) // 2, 0)[None]
    hi = (n // 2)[None]
    hi = np.minimum(hi, stack.shape[0] - 1)
    low = np.take_along_axis(ordered, lo, axis=0)[0]
    high = np.take_along_axis(ordered, hi, axis=0)[0]
    out = ((low + high) / 2).astype(np.float32)
    out[n == 0] = np.nan
    return out


def clear_acquisitions(cube: TileCube, groups: list[Acquisition], clear: tuple[int, ...] = CLEAR_SCL) -> np.ndarray:
    """Harmonised, SCL-masked reflectance (A, 10, H, W) in Sentinel-2 band order, one slice per acquisition (the
    scenes of overlapping MGRS tiles mosaicked); reads the scenes of these acquisitions only."""
    flat = [i for g in groups for i in g.indices]
    dn, scl = cube.load(flat)
    refl = harmonise(dn, cube.scale[flat], cube.offset[flat])
    del dn
    mask_reflectance(refl, scl, clear)
    if all(len(g.indices) == 1 for g in groups):  # one scene per acquisition: refl is the answer, in order
        return refl
    position = {scene_index: k for k, scene_index in enumerate(flat)}
    return np.stack([mosaic_first_valid(refl[[position[i] for i in g.indices]]) for g in groups])


def acquisition_blocks(cube: TileCube, clear: tuple[int, ...] = CLEAR_SCL,
                       block: int = 8) -> Iterator[tuple[list[Acquisition], np.ndarray]]:
    """The tile's clear-sky time series in time order, ``block`` acquisitions at a time (bounded memory)."""
    groups = acquisitions(cube.scenes)
    for start in range(0, len(groups), block):
        chunk = groups[start:start + block]
        yield chunk, clear_acquisitions(cube, chunk, clear)


def monthly_composites(cube: TileCube, clear: tuple[int, ...] = CLEAR_SCL,
                       year: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """12 monthly median composites (12, 10, H, W) in GeoTreeCLIP band order, NaN where a month has no clear
    observation; and the count of clear acquisitions per month and pixel (12, H, W) uint16.

    Scenes from several years pool into the month of year they were acquired in, unless ``year`` keeps only the
    acquisitions of that calendar year.
    """
    h, w = cube.tile.read_shape
    comps = np.full((12, len(MODEL_BANDS), h, w), np.nan, dtype=np.float32)
    counts = np.zeros((12, h, w), dtype=np.uint16)
    groups = acquisitions(cube.scenes)
    if year is not None:
        groups = [g for g in groups if g.key[1].year == year]
    for month in range(1, 13):
        month_groups = [g for g in groups if g.key[1].month == month]
        if not month_groups:
            continue
        per_acq = clear_acquisitions(cube, month_groups, clear)
        comps[month - 1] = nanmedian_time(per_acq)[_MODEL_ORDER]
        counts[month - 1] = (~np.isnan(per_acq).any(axis=1)).sum(axis=0)
        log.debug("tile %s month %02d: %d acquisitions", cube.tile.id, month, len(month_groups))
    return comps, counts
