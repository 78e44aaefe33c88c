"""Helpers of the SeCo-Eco tests: a tiny model with input statistics other than the defaults, and random
reflectance in ``BAND_ORDER``."""

from __future__ import annotations

import torch

from treemap.models.seco_input import ChannelStats
from treemap.models.seco_net import SecoConfig, SecoModel, random_seco
from treemap.phenology import BAND_ORDER


def tiny_seco() -> SecoModel:
    stats = ChannelStats(tuple(0.1 * i for i in range(9)), tuple(0.5 + 0.1 * i for i in range(9)))
    return random_seco(SecoConfig.tiny(), stats, seed=3)


def reflectance(batch=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, len(BAND_ORDER), size, size, generator=g) * 0.4
