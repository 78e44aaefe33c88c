from __future__ import annotations

import pytest
import torch

from treemap.models import GeoTreeCLIPConfig, random_model


def _make_inputs(batch: int, seed: int = 0, months: int = 12, size: int = 5):
    """Reflectance-like images (B, 12, 10, 5, 5) and plausible auxiliary values (B, 27)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, months, 10, size, size, generator=g) * 0.5
    lon = torch.rand(batch, 1, generator=g) * 360 - 180
    lat = torch.rand(batch, 1, generator=g) * 180 - 90
    rest = torch.rand(batch, 25, generator=g) * 400
    return images, torch.cat([lon, lat, rest], dim=1)


@pytest.fixture(scope="session")
def make_inputs():
    """``make_inputs(batch, seed=0)`` -> (images, aux)."""
    return _make_inputs


@pytest.fixture(scope="session")
def tiny_model():
    return random_model(GeoTreeCLIPConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def full_model():
    """The official sizes (about 154 M parameters), built once per session."""
    return random_model(GeoTreeCLIPConfig.full(), seed=0)
