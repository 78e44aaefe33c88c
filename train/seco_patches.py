"""SeCo-Eco pretraining data: ``seasonal_composites.tif`` cut into patches (a location = a patch) with their usable
seasons, location sampling weights, season pairs, augmentations, and patches -> model input.

Used by ``train.seco_train``; re-exported by ``train.seco_eco`` (whose docstring describes the method).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from treemap.errors import SecoDataError
from treemap.models.seco import ChannelStats, compute_stats, raw_channels, to_input
from treemap.phenology import BAND_ORDER, SEASONS

NODATA = -32768
SCALE = 1e-4
LOW_NDVI = 0.1
LOW_NDVI_WEIGHT = 0.25


# -- data -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeasonalPatches:
    """Locations for pretraining: ``reflectance`` (N, 4, 10, P, P) float32 (NaN = missing) in ``SEASONS`` x
    ``BAND_ORDER`` order, ``valid`` (N, 4) usable seasons, ``origins`` (N, 2) row/column of each patch (grid node
    i/j for a sample folder). Optional: ``weights`` (N,) sampling weights given with the data (a sample folder's;
    NaN = not given), which :func:`location_weights` keeps, and ``ids`` (N,) location names."""

    reflectance: np.ndarray
    valid: np.ndarray
    origins: np.ndarray
    weights: np.ndarray | None = None
    ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.reflectance.shape[0])


def usable_seasons(reflectance: np.ndarray, min_valid: float = 0.5) -> np.ndarray:
    """(N, 4) bool: seasons where at least ``min_valid`` of the pixels have all bands."""
    complete = np.isfinite(reflectance).all(axis=2)  # (N, 4, P, P)
    return complete.reshape(*complete.shape[:2], -1).mean(axis=-1) >= min_valid


def make_patches(reflectance: np.ndarray, origins: np.ndarray | None = None, min_valid: float = 0.5) -> SeasonalPatches:
    """Patches from an in-memory (N, 4, 10, P, P) reflectance array; drops those with fewer than 2 usable seasons."""
    reflectance = np.asarray(reflectance, dtype=np.float32)
    if reflectance.ndim != 5 or reflectance.shape[1:3] != (len(SEASONS), len(BAND_ORDER)):
        raise SecoDataError(f"expected patches shaped (N, {len(SEASONS)}, {len(BAND_ORDER)}, P, P), "
                            f"got {reflectance.shape}")
    if origins is None:
        origins = np.zeros((reflectance.shape[0], 2), dtype=np.int64)
    valid = usable_seasons(reflectance, min_valid)
    keep = valid.sum(axis=1) >= 2
    return SeasonalPatches(reflectance[keep], valid[keep], np.asarray(origins)[keep])


def read_patches(path: str | os.PathLike, patch_size: int = 64, stride: int | None = None,
                 min_valid: float = 0.5) -> SeasonalPatches:
    """Cut ``seasonal_composites.tif`` into ``patch_size`` patches every ``stride`` pixels (default: no overlap)."""
    import rasterio

    path = Path(path)
    stride = stride or patch_size
    expected = [f"{s} {b}" for s in SEASONS for b in BAND_ORDER]
    try:
        ds = rasterio.open(path)
    except Exception as exc:
        raise SecoDataError(f"cannot read seasonal composites {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
                            ) from exc
    with ds:
        if ds.count != len(expected):
            raise SecoDataError(f"{path} has {ds.count} bands; seasonal composites have {len(expected)} "
                                f"({len(SEASONS)} seasons x {len(BAND_ORDER)} bands)")
        names = list(ds.descriptions)
        if any(names) and names != expected:
            raise SecoDataError(f"{path} band {next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b) + 1}"
                                f" is not in the seasonal composites order (expected '<season> <band>')")
        nodata = NODATA if ds.nodata is None else ds.nodata
        scale = float(ds.scales[0] or SCALE) if ds.scales and ds.scales[0] not in (None, 1.0) else SCALE
        chunks, origins = [], []
        for row in range(0, ds.height - patch_size + 1, stride):
            window = rasterio.windows.Window(0, row, ds.width, patch_size)
            raw = ds.read(window=window)  # (40, P, W)
            data = np.where(raw == nodata, np.nan, raw.astype(np.float32) * np.float32(scale))
            data = data.reshape(len(SEASONS), len(BAND_ORDER), patch_size, ds.width)
            for col in range(0, ds.width - patch_size + 1, stride):
                chunks.append(data[..., col:col + patch_size])
                origins.append((row, col))
    if not chunks:
        raise SecoDataError(f"{path} is smaller than one {patch_size} x {patch_size} patch")
    patches = make_patches(np.stack(chunks), np.array(origins, dtype=np.int64), min_valid)
    if len(patches) == 0:
        raise SecoDataError(f"no patch of {path} has 2 seasons with at least {min_valid:.0%} valid pixels")
    return patches


def season_mean_ndvi(patches: SeasonalPatches) -> np.ndarray:
    """(N, 4) mean NDVI per location and season over valid pixels (NaN for an unusable season)."""
    ndvi = raw_channels(torch.from_numpy(patches.reflectance), band_axis=2)[:, :, -1].numpy()
    with warnings.catch_warnings():  # an all-missing season gives NaN, masked below
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(ndvi.reshape(*ndvi.shape[:2], -1), axis=-1)
    return np.where(patches.valid, out, np.nan)


def location_weights(patches: SeasonalPatches) -> np.ndarray:
    """Sampling weight per location: 1/4 where mean NDVI < 0.1 in all usable seasons, else 1; where the patches
    carry their own weight (``patches.weights``, e.g. the sampler's, finite), that weight wins."""
    ndvi = season_mean_ndvi(patches)
    low = np.where(patches.valid, ndvi < LOW_NDVI, True).all(axis=1)
    computed = np.where(low, LOW_NDVI_WEIGHT, 1.0)
    if patches.weights is None:
        return computed
    given = np.asarray(patches.weights, dtype=np.float64)
    if given.shape != computed.shape:
        raise SecoDataError(f"{given.shape[0] if given.ndim else 0} location weights for {len(patches)} locations")
    if bool((given[np.isfinite(given)] <= 0).any()):
        raise SecoDataError("location weights must be positive")
    return np.where(np.isfinite(given), given, computed)


def season_pairs(valid: Tensor, generator: torch.Generator) -> Tensor:
    """(B, 4) usable seasons -> (B, 2) two different usable seasons per row, drawn without replacement."""
    if bool((valid.sum(dim=1) < 2).any()):
        raise SecoDataError("a location with fewer than 2 usable seasons cannot give a pair")
    scores = torch.rand(valid.shape, generator=generator).masked_fill(~valid, -1.0)
    return scores.topk(2, dim=1).indices


def augment(x: Tensor, generator: torch.Generator, noise: float = 0.0) -> Tensor:
    """Random horizontal/vertical flips, 90-degree rotation (square patches) and Gaussian noise, per sample."""
    b = x.shape[0]
    flips = torch.rand(b, 3, generator=generator) < 0.5
    sel = flips[:, 0].view(b, 1, 1, 1)
    x = torch.where(sel, x.flip(-1), x)
    x = torch.where(flips[:, 1].view(b, 1, 1, 1), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(flips[:, 2].view(b, 1, 1, 1), x.transpose(-1, -2), x)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator)
    return x


def prepare_inputs(patches: SeasonalPatches, stats: ChannelStats | None = None) -> tuple[Tensor, ChannelStats]:
    """Patches -> model input (N, 4, 9, P, P) and the statistics used (computed from usable seasons if not given)."""
    reflectance = torch.from_numpy(patches.reflectance)
    if stats is None:
        raw = raw_channels(reflectance[torch.from_numpy(patches.valid)], band_axis=1)
        stats = compute_stats(raw, band_axis=1)
    return to_input(reflectance, stats, band_axis=2), stats
