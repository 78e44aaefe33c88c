"""SeCo-Eco model files: safetensors holding ``model.state_dict()`` (``backbone.*`` in torchvision names,
``heads.<subspace>.*``) and JSON metadata under ``"treemap_seco"`` (:class:`SecoCard`: config, channel order,
statistics, notes); and the import of a torchvision-layout ResNet-50 (``.pth``/``.pt`` read with
``torch.load(weights_only=True)`` only, or ``.safetensors``) whose wrappers' prefixes are stripped and every name and
shape checked. Every failure to read a model raises ``ModelError`` with one line. Part of :mod:`treemap.models.seco`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from treemap.errors import ModelError, OutputError
from treemap.models.checkpoint import _one_line, _sniff, load_weights_only, write_safetensors
from treemap.models.seco_input import CHANNELS, ChannelStats
from treemap.models.seco_net import SecoConfig, SecoModel, random_seco

SECO_KEY = "treemap_seco"
SECO_VERSION = 1

PREFIXES: tuple[str, ...] = ("module.", "encoder_q.", "backbone.", "model.")
"""Wrapper prefixes stripped (repeatedly, in any order) from imported parameter names."""
IGNORED_ROOTS: tuple[str, ...] = ("fc.", "encoder_k.", "queue", "queue_ptr", "heads.")
"""Imported names (after stripping) that are not backbone parameters and are dropped: a classifier or MoCo MLP
head (``fc``), a MoCo key encoder and queue, SeCo projections."""


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
