"""SeCo-Eco network (treemap.models.seco_net): sizes and torchvision names of the ResNet-50, forward shapes."""

from __future__ import annotations

import pytest
import torch

from seco_helpers import reflectance, tiny_seco
from treemap.models.seco_input import to_input
from treemap.models.seco_net import SecoConfig, SecoResNet, parameter_count

# torchvision resnet50: 25,557,032 parameters; minus fc (2048 x 1000 + 1000), plus 6 more input channels on conv1
# (64 x 6 x 7 x 7).
EXPECTED_RESNET50_9CH = 25_557_032 - (2048 * 1000 + 1000) + 64 * 6 * 7 * 7  # 23,526,848


@pytest.fixture(scope="module")
def tiny():
    return tiny_seco()


def test_tiny_forward_shapes(tiny):
    x = to_input(reflectance(), tiny.stats)
    assert x.shape == (3, 9, 32, 32)
    with torch.no_grad():
        out = tiny(x)
        feats = tiny.features(reflectance())
    assert set(out) == {"agnostic", "season"}
    assert all(v.shape == (3, tiny.config.projection_dim) for v in out.values())
    assert feats.shape == (3, tiny.config.feature_dim)


def test_full_resnet50_matches_torchvision_sizes_and_names():
    backbone = SecoResNet(SecoConfig())
    assert parameter_count(backbone) == EXPECTED_RESNET50_9CH == 23_526_848
    state = backbone.state_dict()
    assert len(state) == 320 - 2  # torchvision resnet50's 320 entries without fc.weight / fc.bias
    assert tuple(state["conv1.weight"].shape) == (64, 9, 7, 7)
    for key in ("bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer3.5.conv3.weight", "layer4.2.bn3.num_batches_tracked"):
        assert key in state
    assert not any(k.startswith("fc.") for k in state)
    assert SecoConfig().feature_dim == 2048
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(1, 9, 64, 64)).shape == (1, 2048)
