"""SeCo-Eco input: seasonal composites (reflectance, 10 bands in ``treemap.phenology.BAND_ORDER``) -> the model's
9 channels ``B02 B03 B04 B05 B06 B07 B08 B8A NDVI`` (NDVI from B08 and B04), each scaled by the per-channel mean and
standard deviation kept with the model (:class:`ChannelStats`); missing values become 0 after scaling (the channel
mean). Part of :mod:`treemap.models.seco`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from treemap.phenology.tile import BAND_ORDER

INPUT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A")
CHANNELS: tuple[str, ...] = INPUT_BANDS + ("NDVI",)
"""The model's 9 input channels, in order."""

_BAND_INDEX = tuple(BAND_ORDER.index(b) for b in INPUT_BANDS)
_RED, _NIR = BAND_ORDER.index("B04"), BAND_ORDER.index("B08")


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of the 9 input channels (reflectance, NDVI)."""

    mean: tuple[float, ...] = (0.0,) * len(CHANNELS)
    std: tuple[float, ...] = (1.0,) * len(CHANNELS)

    def __post_init__(self):
        if len(self.mean) != len(CHANNELS) or len(self.std) != len(CHANNELS):
            raise ValueError(f"channel statistics need {len(CHANNELS)} means and standard deviations")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or min(self.std) <= 0:
            raise ValueError("channel statistics must be finite with positive standard deviations")


# -- input ------------------------------------------------------------------------------------------------------
def raw_channels(seasonal: np.ndarray | Tensor, band_axis: int = -3) -> Tensor:
    """Reflectance in ``BAND_ORDER`` (``band_axis`` of length 10, NaN = missing) -> the 9 unscaled channels
    (float32, NaN where a band, or for NDVI B04 or B08, is missing), channels on the same axis."""
    x = torch.as_tensor(seasonal).float()
    if x.shape[band_axis] != len(BAND_ORDER):
        raise ValueError(f"expected {len(BAND_ORDER)} bands ({' '.join(BAND_ORDER)}) on axis {band_axis}, "
                         f"got {x.shape[band_axis]}")
    x = x.movedim(band_axis, 0)
    red, nir = x[_RED], x[_NIR]
    total = nir + red
    ndvi = torch.where(total.abs() > 1e-6, (nir - red) / total.where(total.abs() > 1e-6, torch.ones_like(total)),
                       torch.zeros_like(total))
    ndvi = torch.where(torch.isnan(total), torch.full_like(total, float("nan")), ndvi.clamp(-1, 1))
    out = torch.cat([x[list(_BAND_INDEX)], ndvi[None]], dim=0)
    return out.movedim(0, band_axis)


def to_input(seasonal: np.ndarray | Tensor, stats: ChannelStats | None = None, band_axis: int = -3) -> Tensor:
    """Seasonal composites (reflectance, 10 bands in ``BAND_ORDER`` on ``band_axis``, NaN = nodata) -> the model
    input: 9 channels (:data:`CHANNELS`) scaled by ``stats`` ((x - mean) / std), missing values set to 0."""
    x = raw_channels(seasonal, band_axis)
    stats = stats or ChannelStats()
    shape = [1] * x.dim()
    shape[band_axis] = len(CHANNELS)
    mean = torch.tensor(stats.mean, dtype=torch.float32).reshape(shape)
    std = torch.tensor(stats.std, dtype=torch.float32).reshape(shape)
    return torch.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)


def compute_stats(raw: Tensor, band_axis: int = -3) -> ChannelStats:
    """Mean and standard deviation of every channel of ``raw`` (output of :func:`raw_channels`) over its finite
    values; a channel without values (or constant) gets mean 0 / std 1."""
    x = raw.movedim(band_axis, 0).reshape(len(CHANNELS), -1).double()
    means, stds = [], []
    for row in x:
        v = row[torch.isfinite(row)]
        m = float(v.mean()) if v.numel() else 0.0
        s = float(v.std(unbiased=False)) if v.numel() > 1 else 1.0
        means.append(m)
        stds.append(s if s > 1e-6 else 1.0)
    return ChannelStats(tuple(means), tuple(stds))
