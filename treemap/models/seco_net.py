"""SeCo-Eco network: a ResNet-50 backbone with torchvision's parameter names and one MoCo v2 projection head per
embedding subspace (see :mod:`treemap.models.seco` for the subspaces). Part of :mod:`treemap.models.seco`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from treemap.models.config import JsonConfig
from treemap.models.seco_input import CHANNELS, ChannelStats, to_input


# -- config -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecoConfig(JsonConfig):
    """Sizes of a SeCo-Eco model. The defaults are ResNet-50 with 9 input channels and MoCo v2 projections."""

    in_channels: int = len(CHANNELS)
    stem_width: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x wider
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    projection_hidden: int = 2048
    projection_dim: int = 128
    subspaces: tuple[str, ...] = ("agnostic", "season")

    EXPANSION = 4

    def __post_init__(self):
        if self.in_channels < 1 or self.stem_width < 1 or self.projection_dim < 1 or self.projection_hidden < 1:
            raise ValueError("SecoConfig sizes must be positive")
        if len(self.widths) != len(self.blocks) or not self.widths or min(self.widths) < 1 or min(self.blocks) < 1:
            raise ValueError("SecoConfig needs one positive width and block count per stage")
        if not self.subspaces or len(set(self.subspaces)) != len(self.subspaces):
            raise ValueError("SecoConfig needs at least one subspace and unique subspace names")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1] * self.EXPANSION

    @classmethod
    def tiny(cls, **overrides: Any) -> "SecoConfig":
        """A few-thousand-parameter model for tests and CPU smoke runs."""
        base = dict(stem_width=8, widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), projection_hidden=64,
                    projection_dim=32)
        return cls(**{**base, **overrides})


# -- backbone ---------------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5): 1x1 -> 3x3 (stride) -> 1x1 (x4), identity or projected shortcut."""

    def __init__(self, inplanes: int, width: int, stride: int = 1):
        super().__init__()
        out = width * SecoConfig.EXPANSION
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class SecoResNet(nn.Module):
    """ResNet backbone with torchvision parameter names and no ``fc``: ``(B, C, H, W)`` -> ``(B, feature_dim)``."""

    def __init__(self, config: SecoConfig = SecoConfig()):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.in_channels, config.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = config.stem_width
        for i, (width, n) in enumerate(zip(config.widths, config.blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(inplanes, width, stride if j == 0 else 1))
                inplanes = width * SecoConfig.EXPANSION
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.config.blocks))]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)


def projection_head(config: SecoConfig) -> nn.Sequential:
    """MoCo v2 projection: Linear - ReLU - Linear."""
    return nn.Sequential(nn.Linear(config.feature_dim, config.projection_hidden), nn.ReLU(inplace=True),
                         nn.Linear(config.projection_hidden, config.projection_dim))


class SecoModel(nn.Module):
    """Backbone + one projection head per subspace; ``stats`` are the input statistics :func:`to_input` uses."""

    def __init__(self, config: SecoConfig = SecoConfig(), stats: ChannelStats | None = None):
        super().__init__()
        self.config = config
        self.stats = stats or ChannelStats()
        self.backbone = SecoResNet(config)
        self.heads = nn.ModuleDict({name: projection_head(config) for name in config.subspaces})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Model input ``(B, 9, H, W)`` -> ``{subspace: (B, projection_dim)}`` (not normalised)."""
        feature = self.backbone(x)
        return {name: head(feature) for name, head in self.heads.items()}

    def features(self, seasonal: np.ndarray | Tensor) -> Tensor:
        """Reflectance ``(B, 10, H, W)`` in ``BAND_ORDER`` -> frozen backbone features ``(B, feature_dim)``."""
        return self.backbone(to_input(seasonal, self.stats))


def random_seco(config: SecoConfig = SecoConfig(), stats: ChannelStats | None = None, seed: int = 0) -> SecoModel:
    """A model with seeded random weights (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SecoModel(config, stats).eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
