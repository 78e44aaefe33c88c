"""SeCo-Eco input (treemap.models.seco_input): channel order, NDVI, scaling and nodata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from treemap.models.seco_input import CHANNELS, ChannelStats, raw_channels, to_input
from treemap.phenology import BAND_ORDER


def test_to_input_channel_order_ndvi_and_nodata():
    x = torch.zeros(1, len(BAND_ORDER), 2, 2)
    for i in range(len(BAND_ORDER)):
        x[:, i] = 0.01 * (i + 1)
    out = to_input(x)
    expected = [0.01 * (BAND_ORDER.index(b) + 1) for b in CHANNELS[:-1]]
    assert torch.allclose(out[0, :8, 0, 0], torch.tensor(expected))
    red, nir = 0.01 * (BAND_ORDER.index("B04") + 1), 0.01 * (BAND_ORDER.index("B08") + 1)
    assert out[0, 8, 0, 0].item() == pytest.approx((nir - red) / (nir + red), rel=1e-5)
    assert "B11" not in CHANNELS and "B12" not in CHANNELS
    # nodata: a missing red band gives NaN NDVI in raw channels and 0 (the mean) in the model input
    x[0, BAND_ORDER.index("B04"), 1, 1] = float("nan")
    raw = raw_channels(x)
    assert torch.isnan(raw[0, 8, 1, 1]) and torch.isnan(raw[0, 2, 1, 1]) and not torch.isnan(raw[0, 0, 1, 1])
    stats = ChannelStats((0.5,) * 9, (2.0,) * 9)
    scaled = to_input(x, stats)
    assert torch.isfinite(scaled).all()
    assert scaled[0, 8, 1, 1] == 0 and scaled[0, 2, 1, 1] == 0
    assert scaled[0, 0, 0, 0].item() == pytest.approx((0.01 - 0.5) / 2.0)
    # numpy input with the band axis elsewhere
    season_first = np.random.default_rng(0).random((4, 10, 3, 3)).astype(np.float32)
    assert to_input(season_first, band_axis=1).shape == (4, 9, 3, 3)
    with pytest.raises(ValueError, match="10 bands"):
        to_input(torch.zeros(1, 9, 2, 2))
