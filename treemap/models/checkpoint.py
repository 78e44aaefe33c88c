"""GeoTreeCLIP checkpoints: treemap's own ``.safetensors`` format with a model card, and import of the official
``.pth`` checkpoint.

* treemap format: a safetensors file whose tensors are ``model.state_dict()`` (official names) and whose metadata
  key ``"treemap_card"`` holds the ``ModelCard`` as JSON (config, band order, auxiliary variables, normalisation and
  its statistics, evaluated species lists, sha256 of the source checkpoint, notes). Written atomically.
* official format (``GGT_6M.pth``): ``{"model_state_dict": {...}}`` read with ``torch.load(weights_only=True)`` only,
  so a file holding anything but tensors and plain containers is refused. Sizes are read from tensor shapes; head
  counts, which shapes do not carry, follow CLIP's 64-wide heads and the official 4 temporal heads unless a config
  is given. The model gets the official per-batch normalisation.

Every failure to read a model raises ``ModelError`` with one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from treemap.durable import sync_dir, sync_file
from treemap.errors import ModelError, OutputError
from treemap.models.config import AUX_VARIABLES, BANDS, GeoTreeCLIPConfig
from treemap.models.geotreeclip import GeoTreeCLIP
from treemap.models.normalise import make_normaliser

CARD_KEY = "treemap_card"
CARD_VERSION = 1

_VISION = "temporal_extractor.clip_vit.model.vision_model."
_TEXT = "text_encoder.text_encoder.text_model."
_POSITION_IDS = (_VISION + "embeddings.position_ids", _TEXT + "embeddings.position_ids")

DEMO_BAND_RANGE = (0.0, 0.6)
"""Reflectance range of every band in the demo model's fixed normalisation."""

DEFAULT_AUX_RANGES: dict[str, tuple[float, float]] = {
    "longitude": (-180.0, 180.0),
    "latitude": (-90.0, 90.0),
    "elevation": (-500.0, 9000.0),  # m
    "slope": (0.0, 90.0),  # degrees
    "aspect": (0.0, 360.0),  # degrees
    "soil_moisture_0_5cm": (0.0, 1000.0),  # SoilGrids wv0033, 10^-3 cm3/cm3
    "soil_moisture_5_15cm": (0.0, 1000.0),
    "soil_moisture_15_30cm": (0.0, 1000.0),
    # WorldClim 1 BIO as distributed (temperatures in 0.1 degC, bio03 in %, bio04 as SD x 100, rain in mm):
    # rounded global ranges, so that typical values land inside [-1, 1] and a missing value (0) is mid-range.
    "bio01": (-300.0, 320.0), "bio02": (0.0, 220.0), "bio03": (0.0, 100.0), "bio04": (0.0, 23000.0),
    "bio05": (-100.0, 500.0), "bio06": (-580.0, 260.0), "bio07": (0.0, 730.0), "bio08": (-300.0, 380.0),
    "bio09": (-530.0, 370.0), "bio10": (-150.0, 390.0), "bio11": (-530.0, 290.0), "bio12": (0.0, 11500.0),
    "bio13": (0.0, 3000.0), "bio14": (0.0, 800.0), "bio15": (0.0, 270.0), "bio16": (0.0, 8100.0),
    "bio17": (0.0, 2500.0), "bio18": (0.0, 6100.0), "bio19": (0.0, 5200.0),
}
"""Fixed-normalisation ranges for the auxiliary variables when no data-derived statistics are available."""


# -- model card -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCard:
    """What a treemap model file says about its model, stored as JSON beside the weights."""

    config: dict[str, Any]
    bands: tuple[str, ...] = BANDS
    aux_variables: tuple[str, ...] = AUX_VARIABLES
    normalisation: str = "batch"
    statistics: dict[str, list[float]] | None = None
    species_lists: tuple[str, ...] = ()
    source_sha256: str | None = None
    notes: str = ""
    card_version: int = CARD_VERSION

    @classmethod
    def for_model(cls, model: GeoTreeCLIP, **fields: Any) -> "ModelCard":
        """A card whose config and normalisation are the model's."""
        return cls.for_model_config(model.config, **fields)

    @classmethod
    def for_model_config(cls, c: GeoTreeCLIPConfig, **fields: Any) -> "ModelCard":
        """A card whose config and normalisation are those of config ``c``."""
        stats = None
        if c.normalisation == "fixed":
            stats = {k: list(getattr(c, k)) for k in ("band_min", "band_max", "aux_min", "aux_max")}
        return cls(config=c.to_dict(), normalisation=c.normalisation, statistics=stats, **fields)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["bands"], data["aux_variables"] = list(self.bands), list(self.aux_variables)
        data["species_lists"] = list(self.species_lists)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        """Parse a card; raises ``ValueError`` on malformed JSON or unknown/missing fields."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the model card is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model card fields {unknown}")
        if "config" not in data:
            raise ValueError("the model card has no config")
        if int(data.get("card_version", CARD_VERSION)) > CARD_VERSION:
            raise ValueError(f"model card version {data['card_version']} is newer than this treemap reads")
        for key in ("bands", "aux_variables", "species_lists"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def model_config(self) -> GeoTreeCLIPConfig:
        """The config the card describes; checks that its normalisation fields agree with it."""
        config = GeoTreeCLIPConfig.from_dict(self.config)
        if config.normalisation != self.normalisation:
            raise ValueError(f"card says {self.normalisation!r} normalisation, its config {config.normalisation!r}")
        if self.statistics != ModelCard.for_model_config(config).statistics:
            raise ValueError("the card's normalisation statistics differ from those of its config")
        if tuple(self.bands) != BANDS or tuple(self.aux_variables) != AUX_VARIABLES:
            raise ValueError("the card's band or auxiliary variable order is not the one treemap feeds the model")
        return config


# -- construction -----------------------------------------------------------------------------------------------
def _init_weights(model: GeoTreeCLIP) -> None:
    """CLIP-style initialisation: small normal weights for transformers and embeddings, Kaiming for the ReLU heads."""
    c = model.config
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Linear):
            in_tower = name.startswith(("temporal_extractor.clip_vit", "text_encoder"))
            if in_tower:
                layers = c.text_layers if name.startswith("text_encoder") else c.vision_layers
                std = module.in_features ** -0.5 * ((2 * layers) ** -0.5 if name.endswith(("out_proj", "fc2")) else 1)
                nn.init.normal_(module.weight, std=std)
            elif name.startswith("temporal_extractor.temporal_attention"):
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight)
            nn.init.zeros_(module.bias)
    vision = model.temporal_extractor.clip_vit.model.vision_model
    nn.init.normal_(vision.embeddings.class_embedding, std=c.vision_hidden ** -0.5)
    attn = model.temporal_extractor.temporal_attention.attn
    nn.init.xavier_uniform_(attn.in_proj_weight)
    nn.init.zeros_(attn.in_proj_bias)


def random_model(config: GeoTreeCLIPConfig, seed: int = 0) -> GeoTreeCLIP:
    """A model with seeded random weights: the same config and seed give the same weights (the global RNG is left
    as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GeoTreeCLIP(config)
        _init_weights(model)
    return model.eval()


def demo_config() -> GeoTreeCLIPConfig:
    lo, hi = DEMO_BAND_RANGE
    return GeoTreeCLIPConfig.tiny(
        normalisation="fixed",
        band_min=(lo,) * len(BANDS), band_max=(hi,) * len(BANDS),
        aux_min=tuple(DEFAULT_AUX_RANGES[v][0] for v in AUX_VARIABLES),
        aux_max=tuple(DEFAULT_AUX_RANGES[v][1] for v in AUX_VARIABLES),
    )


def demo_model() -> tuple[GeoTreeCLIP, ModelCard]:
    """The offline demo model: a tiny GeoTreeCLIP trained on the demo world (``python -m train.demo_model``
    rebuilds it), shipped in ``treemap/data/models/demo-tiny.safetensors``."""
    from importlib import resources

    ref = resources.files("treemap.data") / "models" / "demo-tiny.safetensors"
    with resources.as_file(ref) as path:
        return load_model(path)


# -- saving -----------------------------------------------------------------------------------------------------
def save_model(model: GeoTreeCLIP, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write ``model`` and ``card`` to a ``.safetensors`` file atomically (temporary name, then rename).

    The card's config and normalisation are taken from the model, so the two cannot disagree.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise OutputError(f"model files are written as .safetensors, not {path.name}")
    fresh = ModelCard.for_model(model)
    card = dataclasses.replace(card, config=fresh.config, normalisation=fresh.normalisation,
                               statistics=fresh.statistics)
    return write_safetensors(model, path, {CARD_KEY: card.to_json()})


def write_safetensors(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> Path:
    """Write ``model``'s state dict with ``metadata`` to ``path`` under a temporary name, then rename it."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if not path.parent.is_dir():
        raise OutputError(f"cannot write model file {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={**metadata, "format": "pt"})
        sync_file(tmp)
        os.replace(tmp, path)
        sync_dir(path.parent)
    except (OSError, SafetensorError) as exc:
        raise OutputError(f"cannot write model file {path}: {_one_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`ModelError` messages: a file that holds
    objects other than tensors is refused without running any of its code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{path} holds objects other than tensors and was refused (weights-only load): "
                         f"{_one_line(exc)}") from exc
    except Exception as exc:  # torch reports corrupt archives with several exception types
        raise ModelError(f"{path} is not a readable torch checkpoint: {_one_line(exc)}") from exc


# -- loading ----------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sniff(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27):
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive, or a legacy torch pickle
        return "torch"
    return "unknown"


def _blank_model(config: GeoTreeCLIPConfig) -> GeoTreeCLIP:
    """A model with uninitialised weights (skipping the random init, which costs seconds at full size); a strict
    ``load_state_dict`` must fill it. Only the normaliser, whose buffers are not in the state dict, is rebuilt."""
    with torch.device("meta"):
        model = GeoTreeCLIP(config)
    model = model.to_empty(device="cpu")
    model.normaliser = make_normaliser(config)
    return model


def _load_into(model: GeoTreeCLIP, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
            raise ModelError(f"{path} is not a GeoTreeCLIP checkpoint: {len(missing)} tensors missing, "
                             f"{len(unexpected)} unexpected ({detail})") from exc
        raise ModelError(f"{path} does not fit its config: {_one_line(exc)}") from exc


def _load_safetensors(path: Path) -> tuple[GeoTreeCLIP, ModelCard]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors reports bad files with its own exception types
        raise ModelError(f"{path} is not a readable safetensors file: {_one_line(exc)}") from exc
    if CARD_KEY not in metadata:
        raise ModelError(f"{path} is a safetensors file without a treemap model card")
    try:
        card = ModelCard.from_json(metadata[CARD_KEY])
        config = card.model_config()
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path} has an invalid model card: {_one_line(exc)}") from exc
    model = _blank_model(config)
    _load_into(model, state, path)
    return model.eval(), card


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{path} holds no model state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ModelError(f"{path} is not a state dict of tensors")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor]) -> GeoTreeCLIPConfig:
    """Config sizes from an official state dict's tensor shapes (``KeyError``/``ValueError`` if it is not one)."""
    patch = state[_VISION + "embeddings.patch_embedding.weight"]
    vision_hidden, channels, patch_size, _ = patch.shape
    positions = state[_VISION + "embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"{positions} vision positions do not form a square grid")
    vocab_size, text_width = state[_TEXT + "embeddings.token_embedding.weight"].shape
    return GeoTreeCLIPConfig(
        vision_hidden=vision_hidden,
        vision_layers=_count_layers(state, _VISION),
        vision_heads=max(1, vision_hidden // 64),
        vision_mlp=state[_VISION + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        image_size=grid * patch_size,
        patch_size=patch_size,
        channels=channels,
        temporal_heads=4,
        text_width=text_width,
        text_layers=_count_layers(state, _TEXT),
        text_heads=max(1, text_width // 64),
        text_mlp=state[_TEXT + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        vocab_size=vocab_size,
        context_length=state[_TEXT + "embeddings.position_embedding.weight"].shape[0],
        embed_dim=state["image_projection.0.weight"].shape[0],
        aux_hidden=state["auxiliary_encoder.geo_encoder.0.weight"].shape[0],
        aux_out=state["auxiliary_encoder.fusion.0.weight"].shape[0],
        aux_groups=tuple(state[f"auxiliary_encoder.{g}_encoder.0.weight"].shape[1]
                         for g in ("geo", "terrain", "soil", "bio")),
    )


def _load_official(path: Path, config: GeoTreeCLIPConfig | None) -> tuple[GeoTreeCLIP, ModelCard]:
    obj = load_weights_only(path)
    state = _state_dict_of(obj, path)
    if config is None:
        try:
            config = infer_config(state)
        except KeyError as exc:
            raise ModelError(f"{path} is not a GeoTreeCLIP checkpoint: no tensor {exc.args[0]}") from exc
        except (ValueError, IndexError) as exc:
            raise ModelError(f"{path} is not a GeoTreeCLIP checkpoint: {_one_line(exc)}") from exc
    model = _blank_model(config)
    # Checkpoints written with transformers >= 4.31 lack the (constant) position-id buffers; supply them.
    state = dict(state)
    for key, n in zip(_POSITION_IDS, (config.num_positions, config.context_length)):
        state.setdefault(key, torch.arange(n).unsqueeze(0))
    _load_into(model, state, path)
    card = ModelCard.for_model(
        model, source_sha256=_sha256(path),
        notes=f"Imported from the official GeoTreeCLIP checkpoint {path.name}; official per-batch normalisation.",
    )
    return model.eval(), card


def load_model(path: str | os.PathLike, config: GeoTreeCLIPConfig | None = None) -> tuple[GeoTreeCLIP, ModelCard]:
    """Read a treemap ``.safetensors`` model file or an official GeoTreeCLIP ``.pth`` checkpoint.

    The format is recognised from the file's first bytes. ``config`` overrides the sizes inferred from an official
    checkpoint (its head counts cannot be read from shapes); treemap files carry their own config.
    Returns the model in eval mode on the CPU and its card.
    """
    from treemap.documents import check_file

    path = check_file(path, what="model file", error=ModelError)
    try:
        kind = _sniff(path)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind == "torch":
        return _load_official(path, config)
    raise ModelError(f"{path} is not a model checkpoint (expected .safetensors or an official .pth)")
