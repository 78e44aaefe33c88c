"""Input scaling for GeoTreeCLIP: the official batch min/max rule and a batch-independent fixed-statistics rule.

Both map a value to ``2 (x - min) / (max - min + 1e-6) - 1`` and write 0 wherever the input is missing. They differ
only in where ``min`` and ``max`` come from:

* ``BatchNormaliser`` (the official GeoTreeCLIP code): per band, the min and max over the whole batch, all months and
  all pixels, with missing months counted as zeros; per auxiliary variable, the min and max over the batch's present
  values (a constant variable gets ``max = min + 1``, one without any present value ``min 0, max 1``). The result of
  a sample depends on the other samples of its batch.
* ``FixedNormaliser``: per-band and per-variable statistics fixed in the model's config.

Missing data: a month is missing when all of its values are NaN; an auxiliary value is missing when it is NaN.
One deliberate difference from the official code: a NaN inside an otherwise present month counts as 0 in the batch
min/max (like the values of missing months) and is written as 0, where the official code lets it turn the whole
batch's output into NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from treemap.models.config import GeoTreeCLIPConfig

EPS = 1e-6


def month_mask(images: Tensor) -> Tensor:
    """``(B, T)`` boolean: True where a month has at least one non-NaN value."""
    return ~torch.isnan(images).flatten(2).all(dim=-1)


def _scale(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    # Same operation order as the official code, so the batch rule reproduces it to the last bit.
    return 2.0 * ((x - lo) / (hi - lo + EPS)) - 1.0


def _image_bounds_shape(lo: Tensor) -> Tensor:
    return lo[None, None, :, None, None]


class Normaliser(nn.Module):
    """Strategy interface: scale images ``(B, T, C, H, W)`` and auxiliary values ``(B, V)``; both may hold NaN."""

    mode: str = ""

    def images(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def aux(self, aux: Tensor) -> Tensor:
        raise NotImplementedError


class BatchNormaliser(Normaliser):
    """The official rule: statistics taken from the batch itself."""

    mode = "batch"

    def images(self, images: Tensor) -> Tensor:
        nan = torch.isnan(images)
        filled = images.masked_fill(nan, 0.0)
        per_band = filled.transpose(1, 2).flatten(2)  # (B, C, T*H*W)
        lo = per_band.amin(dim=(0, 2))
        hi = per_band.amax(dim=(0, 2))
        return _scale(filled, _image_bounds_shape(lo), _image_bounds_shape(hi)).masked_fill(nan, 0.0)

    def aux(self, aux: Tensor) -> Tensor:
        present = ~torch.isnan(aux)
        filled = aux.masked_fill(~present, 0.0)
        lo = aux.masked_fill(~present, float("inf")).amin(dim=0)
        hi = aux.masked_fill(~present, float("-inf")).amax(dim=0)
        any_present = present.any(dim=0)
        lo = torch.where(any_present, lo, torch.zeros_like(lo))
        hi = torch.where(any_present, hi, torch.ones_like(hi))
        hi = torch.where((hi - lo).abs() < EPS, lo + 1.0, hi)
        return _scale(filled, lo, hi).masked_fill(~present, 0.0)


class FixedNormaliser(Normaliser):
    """Statistics from the config, kept as non-persistent buffers (they follow ``.to(device)`` but stay out of
    ``state_dict()``, whose names must remain those of the official checkpoint)."""

    mode = "fixed"

    def __init__(self, band_min, band_max, aux_min, aux_max):
        super().__init__()
        aux_lo = torch.as_tensor(aux_min, dtype=torch.float32)
        aux_hi = torch.as_tensor(aux_max, dtype=torch.float32)
        aux_hi = torch.where((aux_hi - aux_lo).abs() < EPS, aux_lo + 1.0, aux_hi)
        self.register_buffer("band_min", torch.as_tensor(band_min, dtype=torch.float32), persistent=False)
        self.register_buffer("band_max", torch.as_tensor(band_max, dtype=torch.float32), persistent=False)
        self.register_buffer("aux_min", aux_lo, persistent=False)
        self.register_buffer("aux_max", aux_hi, persistent=False)

    def images(self, images: Tensor) -> Tensor:
        nan = torch.isnan(images)
        filled = images.masked_fill(nan, 0.0)
        lo = _image_bounds_shape(self.band_min.to(images.dtype))
        hi = _image_bounds_shape(self.band_max.to(images.dtype))
        return _scale(filled, lo, hi).masked_fill(nan, 0.0)

    def aux(self, aux: Tensor) -> Tensor:
        missing = torch.isnan(aux)
        filled = aux.masked_fill(missing, 0.0)
        return _scale(filled, self.aux_min.to(aux.dtype), self.aux_max.to(aux.dtype)).masked_fill(missing, 0.0)


def make_normaliser(config: GeoTreeCLIPConfig) -> Normaliser:
    """The normaliser that ``config.normalisation`` names."""
    if config.normalisation == "batch":
        return BatchNormaliser()
    return FixedNormaliser(config.band_min, config.band_max, config.aux_min, config.aux_max)
