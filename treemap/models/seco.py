"""SeCo-Eco: a ResNet-50 over 9 Sentinel-2 channels, pretrained with seasonal contrast (the SSL4Eco recipe).

* Backbone (:class:`SecoResNet`): ResNet-50 (bottleneck blocks 3-4-6-3, stride on the 3x3 convolution) written here,
  with torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so a
  torchvision-layout state dict loads into it. It has no classifier: ``forward`` returns the globally pooled feature
  (2048-d at full size). Input channel count, stage widths and depths come from :class:`SecoConfig` (tiny configs
  for tests).
* Input (:func:`to_input`): seasonal composites (reflectance, 10 bands in ``treemap.phenology.BAND_ORDER``) ->
  9 channels ``B02 B03 B04 B05 B06 B07 B08 B8A NDVI`` (NDVI from B08 and B04), each scaled by the per-channel mean
  and standard deviation kept with the model (:class:`ChannelStats`); missing values become 0 after scaling (the
  channel mean).
* SeCo head (:class:`SecoModel`): one MoCo v2 projection (Linear-ReLU-Linear) per embedding subspace.
  Interpretation of the subspaces used here (SeCo: one subspace invariant to every augmentation plus one per
  augmentation that is sensitive to that augmentation and invariant to the others; SSL4Eco's augmentation is the
  change of phenological season):

  - ``"agnostic"``: season-agnostic. Two images of one location taken in two different seasons are positives.
  - ``"season"``: season-specific, one subspace for the one seasonal augmentation. Two differently augmented
    (flips, rotations, noise) copies of the *same* season image are positives; the other season's image of the same
    location is an extra negative, so this subspace has to keep what distinguishes seasons.

  ``SecoConfig.subspaces`` names the subspaces; every name after the first is treated as a season-specific one.
  Downstream tasks use the backbone feature, not the projections.
* Files: safetensors holding ``model.state_dict()`` (``backbone.*`` in torchvision names, ``heads.<subspace>.*``)
  and JSON metadata under ``"treemap_seco"`` (config, channel order, statistics, notes).
  :func:`import_resnet50` reads a torchvision-layout ResNet-50 (``.pth``/``.pt`` with ``torch.load(weights_only=True)``
  only, or ``.safetensors``), strips the wrappers' prefixes and checks every name and shape.

Every failure to read a model raises ``ModelError`` with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from treemap.errors import ModelError, OutputError
from treemap.models.checkpoint import _one_line, _sniff, load_weights_only, write_safetensors
from treemap.models.config import JsonConfig
from treemap.phenology.tile import BAND_ORDER

SECO_KEY = "treemap_seco"
SECO_VERSION = 1

INPUT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A")
CHANNELS: tuple[str, ...] = INPUT_BANDS + ("NDVI",)
"""The model's 9 input channels, in order."""

_BAND_INDEX = tuple(BAND_ORDER.index(b) for b in INPUT_BANDS)
_RED, _NIR = BAND_ORDER.index("B04"), BAND_ORDER.index("B08")

PREFIXES: tuple[str, ...] = ("module.", "encoder_q.", "backbone.", "model.")
"""Wrapper prefixes stripped (repeatedly, in any order) from imported parameter names."""
IGNORED_ROOTS: tuple[str, ...] = ("fc.", "encoder_k.", "queue", "queue_ptr", "heads.")
"""Imported names (after stripping) that are not backbone parameters and are dropped: a classifier or MoCo MLP
head (``fc``), a MoCo key encoder and queue, SeCo projections."""


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


# -- files ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecoCard:
    """What a SeCo-Eco model file says about its model (JSON metadata)."""

    config: dict[str, Any]
    channels: tuple[str, ...] = CHANNELS
    mean: tuple[float, ...] = ChannelStats().mean
    std: tuple[float, ...] = ChannelStats().std
    notes: str = ""
    version: int = SECO_VERSION

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        for k in ("channels", "mean", "std"):
            d[k] = list(d[k])
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SecoCard":
        data = json.loads(text)
        if not isinstance(data, dict) or "config" not in data:
            raise ValueError("the SeCo card is not a JSON object with a config")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown SeCo card fields {unknown}")
        if int(data.get("version", SECO_VERSION)) > SECO_VERSION:
            raise ValueError(f"SeCo card version {data['version']} is newer than this treemap reads")
        for k in ("channels", "mean", "std"):
            if k in data:
                data[k] = tuple(data[k])
        card = cls(**data)
        if card.channels != CHANNELS:
            raise ValueError(f"channel order {list(card.channels)} is not the one treemap feeds ({list(CHANNELS)})")
        return card


def save_seco(model: SecoModel, path: str | os.PathLike, notes: str = "") -> Path:
    """Write ``model`` (weights, config, channel order, statistics) to a ``.safetensors`` file atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise OutputError(f"SeCo models are written as .safetensors, not {path.name}")
    card = SecoCard(config=model.config.to_dict(), mean=model.stats.mean, std=model.stats.std, notes=notes)
    return write_safetensors(model, path, {SECO_KEY: card.to_json()})


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:  # safetensors reports bad files with its own exception types
        raise ModelError(f"{path} is not a readable safetensors file: {_one_line(exc)}") from exc


def _check_file(path: Path) -> None:
    from treemap.documents import check_file

    check_file(path, what="model file", error=ModelError)


def load_seco(path: str | os.PathLike) -> SecoModel:
    """Read a model written by :func:`save_seco`; returns it in eval mode on the CPU."""
    path = Path(path)
    _check_file(path)
    state, metadata = _read_safetensors(path)
    if SECO_KEY not in metadata:
        raise ModelError(f"{path} is a safetensors file without a SeCo-Eco card")
    try:
        card = SecoCard.from_json(metadata[SECO_KEY])
        config = SecoConfig.from_dict(card.config)
        stats = ChannelStats(card.mean, card.std)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path} has an invalid SeCo-Eco card: {_one_line(exc)}") from exc
    model = SecoModel(config, stats)
    _load_strict(model, state, path, "SeCo-Eco model")
    return model.eval()


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise ModelError(f"{path} is not a {what}: {len(missing)} tensors missing, {len(unexpected)} unexpected "
                         f"({detail})")
    if "conv1.weight" in state and "conv1.weight" in expected:
        found, want = state["conv1.weight"].shape, expected["conv1.weight"].shape
        if len(found) == 4 and found[1] != want[1]:
            needs = f" ({' '.join(CHANNELS)})" if want[1] == len(CHANNELS) else ""
            raise ModelError(f"{path}: the first convolution (conv1) takes {found[1]} input channels, this model "
                             f"needs {want[1]}{needs}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{path} does not fit the {what}: {len(wrong)} tensors of the wrong shape, first {k} "
                         f"{list(state[k].shape)} instead of {list(expected[k].shape)}")
    module.load_state_dict(state, strict=True)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def backbone_state(state: dict[str, Any], path: Path | str = "state dict") -> dict[str, Tensor]:
    """The backbone tensors of a torchvision-layout ResNet state dict: unwraps ``state_dict``/``model_state_dict``,
    strips :data:`PREFIXES`, drops :data:`IGNORED_ROOTS`; raises ``ModelError`` on non-tensors or duplicates."""
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path} holds no state dict")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ModelError(f"{path} is not a state dict of tensors (entry {key!r})")
        name = _strip(key)
        if name.startswith(IGNORED_ROOTS):
            continue
        if name in out:
            raise ModelError(f"{path} holds two tensors for {name} after stripping prefixes (e.g. {key})")
        out[name] = value
    return out


def import_resnet50(path: str | os.PathLike, config: SecoConfig = SecoConfig(), stats: ChannelStats | None = None,
                    seed: int = 0) -> SecoModel:
    """A :class:`SecoModel` whose backbone comes from a torchvision-layout ResNet state dict (``.pth``/``.pt``
    read with ``weights_only=True``, or ``.safetensors``); the projection heads are random (seeded)."""
    path = Path(path)
    _check_file(path)
    if _sniff(path) == "safetensors":
        state, _ = _read_safetensors(path)
    else:
        state = load_weights_only(path)
    backbone = backbone_state(state, path)
    model = random_seco(config, stats, seed)
    _load_strict(model.backbone, backbone, path, "torchvision-layout ResNet backbone")
    return model.eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "CHANNELS", "ChannelStats", "INPUT_BANDS", "SecoCard", "SecoConfig", "SecoModel", "SecoResNet",
    "backbone_state", "compute_stats", "import_resnet50", "load_seco", "parameter_count", "random_seco",
    "raw_channels", "save_seco", "to_input",
]
