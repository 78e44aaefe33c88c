"""Sizes and input conventions of GeoTreeCLIP: the frozen ``GeoTreeCLIPConfig`` and the band / auxiliary names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B8", "B5", "B6", "B7", "B8A", "B11", "B12")
"""Sentinel-2 bands in the order the model reads them (GlobalGeoTree order, not numeric order)."""

AUX_VARIABLES: tuple[str, ...] = (
    "longitude", "latitude", "elevation",
    "slope", "aspect",
    "soil_moisture_0_5cm", "soil_moisture_5_15cm", "soil_moisture_15_30cm",
    *(f"bio{i:02d}" for i in range(1, 20)),
)
"""The 27 auxiliary variables, in model order: geo (3), terrain (2), soil moisture (3), WorldClim 1 BIO (19)."""

AUX_GROUPS: tuple[str, ...] = ("geo", "terrain", "soil", "bio")
"""Names of the four auxiliary groups; each has its own encoder (``<name>_encoder`` in the checkpoint)."""

NORMALISATIONS = ("batch", "fixed")


def _floats(value, n: int, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    out = tuple(float(v) for v in value)
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} needs {n} finite numbers, got {len(out)}")
    return out


class JsonConfig:
    """``to_dict`` / ``from_dict`` for frozen config dataclasses stored as JSON in model files."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class GeoTreeCLIPConfig(JsonConfig):
    """Architecture sizes plus the input normalisation.

    ``normalisation="batch"`` reproduces the official per-batch min/max scaling; ``"fixed"`` scales with the per-band
    (``band_min``/``band_max``, 10 values) and per-variable (``aux_min``/``aux_max``, 27 values) statistics given here,
    so a sample's result does not depend on the rest of its batch.
    """

    vision_hidden: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    image_size: int = 16
    patch_size: int = 16
    channels: int = 10
    months: int = 12
    temporal_heads: int = 4
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp: int = 2048
    vocab_size: int = 49408
    context_length: int = 77
    embed_dim: int = 512
    aux_hidden: int = 256
    aux_out: int = 256
    aux_groups: tuple[int, ...] = (3, 2, 3, 19)
    layer_norm_eps: float = 1e-5
    normalisation: str = "batch"
    band_min: tuple[float, ...] | None = None
    band_max: tuple[float, ...] | None = None
    aux_min: tuple[float, ...] | None = None
    aux_max: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        sizes = [f.name for f in dataclasses.fields(self) if f.type in ("int", int)]
        bad = [name for name in sizes if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if bad:
            raise ValueError(f"config sizes must be positive integers: {bad}")
        set_("aux_groups", tuple(int(g) for g in self.aux_groups))
        if len(self.aux_groups) != len(AUX_GROUPS) or min(self.aux_groups) < 1:
            raise ValueError(f"aux_groups needs {len(AUX_GROUPS)} positive sizes, got {self.aux_groups}")
        for width, heads, name in (
            (self.vision_hidden, self.vision_heads, "vision"),
            (self.vision_hidden, self.temporal_heads, "temporal"),
            (self.text_width, self.text_heads, "text"),
        ):
            if heads < 1 or width % heads:
                raise ValueError(f"{name} width {width} is not divisible by {heads} heads")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.embed_dim != self.text_width:
            # The official model has no text projection: the text tower's pooled output is the text embedding.
            raise ValueError(f"embed_dim ({self.embed_dim}) must equal text_width ({self.text_width})")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        set_("band_min", _floats(self.band_min, self.channels, "band_min"))
        set_("band_max", _floats(self.band_max, self.channels, "band_max"))
        set_("aux_min", _floats(self.aux_min, self.n_aux, "aux_min"))
        set_("aux_max", _floats(self.aux_max, self.n_aux, "aux_max"))
        if self.normalisation == "fixed":
            stats = (self.band_min, self.band_max, self.aux_min, self.aux_max)
            if any(s is None for s in stats):
                raise ValueError("fixed normalisation needs band_min, band_max, aux_min and aux_max")
            if any(hi < lo for lo, hi in zip(self.band_min + self.aux_min, self.band_max + self.aux_max)):
                raise ValueError("a fixed normalisation maximum is below its minimum")

    @property
    def n_aux(self) -> int:
        return sum(self.aux_groups)

    @property
    def num_positions(self) -> int:
        """Vision tokens per month: the class token plus one per patch."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def full(cls, **overrides: Any) -> "GeoTreeCLIPConfig":
        """The official GeoTreeCLIP sizes (ViT-B/16 vision tower on 16 x 16 inputs, CLIP B/16 text tower)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "GeoTreeCLIPConfig":
        """A small model with the same structure, for tests and the offline demo."""
        sizes = dict(
            vision_hidden=64, vision_layers=2, vision_heads=4, vision_mlp=128, temporal_heads=4,
            text_width=64, text_layers=2, text_heads=4, text_mlp=128, embed_dim=64, aux_hidden=64, aux_out=64,
        )
        sizes.update(overrides)
        return cls(**sizes)

    def with_normalisation(self, mode: str, *, band_min=None, band_max=None, aux_min=None, aux_max=None):
        """A copy with another normalisation; ``"batch"`` drops the statistics."""
        if mode == "batch":
            return dataclasses.replace(self, normalisation="batch", band_min=None, band_max=None,
                                       aux_min=None, aux_max=None)
        return dataclasses.replace(self, normalisation=mode, band_min=band_min, band_max=band_max,
                                   aux_min=aux_min, aux_max=aux_max)

