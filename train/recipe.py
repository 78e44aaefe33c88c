"""Pretraining recipes: a YAML file read into frozen dataclasses, validated before anything runs.

Sections (every key optional except ``data.shards``)::

    model:   {size: tiny|full, overrides: {...GeoTreeCLIPConfig fields}, init: path/to/checkpoint, seed: 0}
    data:    {shards: [dir | glob | file, ...], streams: 2, shuffle_buffer: 1000, workers: 0,
              exclude_species: [...], include_species: [...],
              normalisation: {samples: 20000, band_quantiles: [0.001, 0.999],
                              aux_ranges: {longitude: [-180, 180], ...}}}
    train:   {epochs: 25 | steps: 1000, batch_size: 256, accumulation: 1, lr: 1e-4, min_lr_ratio: 0.01,
              weight_decay: 0.01, warmup_steps: 100 | warmup_fraction: 0.05, temperature: 0.07,
              positives: sample|label, grad_clip: 1.0, precision: auto|fp32|bf16,
              checkpoint_every: 500, keep_checkpoints: 2, log_every: 10, month_dropout: 0.0}
    output:  {dir: runs/NAME, model: model.safetensors, dtype: float32|float16, notes: "...",
              species_lists: [...]}

Relative paths are resolved against the recipe's folder. ``batch_size`` is the global batch of one loss
computation (all ranks together); it is split evenly over ``streams`` (the unit of data parallelism: the data order
depends on the number of streams, never on the number of processes, so a run gives the same batches on one process
or on several). ``streams`` must be a multiple of the number of processes (times DataLoader workers per process).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treemap.errors import TreemapError


class RecipeError(TreemapError):
    """A training recipe is missing, unreadable or invalid."""


@dataclass(frozen=True)
class ModelSection:
    size: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class NormalisationSection:
    samples: int = 20000
    band_quantiles: tuple[float, float] = (0.001, 0.999)
    aux_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSection:
    shards: tuple[str, ...] = ()
    streams: int = 1
    shuffle_buffer: int = 1000
    workers: int = 0
    exclude_species: tuple[str, ...] = ()
    include_species: tuple[str, ...] = ()
    normalisation: NormalisationSection = NormalisationSection()


@dataclass(frozen=True)
class TrainSection:
    epochs: float | None = None
    steps: int | None = None
    batch_size: int = 256
    accumulation: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    warmup_fraction: float = 0.05
    temperature: float = 0.07
    positives: str = "sample"
    grad_clip: float | None = 1.0
    precision: str = "auto"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    month_dropout: float = 0.0


@dataclass(frozen=True)
class OutputSection:
    dir: str = "runs/geotreeclip"
    model: str = "model.safetensors"
    dtype: str = "float32"
    notes: str = ""
    species_lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    output: OutputSection = OutputSection()
    source: str | None = None  # the file it was read from

    def validate(self) -> "Recipe":
        t, d = self.train, self.data
        if self.model.size not in ("tiny", "full"):
            raise RecipeError(f"model.size must be tiny or full, not {self.model.size!r}")
        if not d.shards:
            raise RecipeError("data.shards is empty: name the training shards (folders, files or glob patterns)")
        if (t.epochs is None) == (t.steps is None):
            raise RecipeError("give exactly one of train.epochs and train.steps")
        if d.streams < 1 or t.batch_size < 1 or t.accumulation < 1:
            raise RecipeError("data.streams, train.batch_size and train.accumulation must be positive")
        if t.batch_size % d.streams:
            raise RecipeError(f"train.batch_size ({t.batch_size}) must be a multiple of data.streams ({d.streams})")
        if t.positives not in ("sample", "label"):
            raise RecipeError("train.positives must be 'sample' (the paper) or 'label'")
        if t.precision not in ("auto", "fp32", "bf16"):
            raise RecipeError("train.precision must be auto, fp32 or bf16")
        if self.output.dtype not in ("float32", "float16", "bfloat16"):
            raise RecipeError("output.dtype must be float32, float16 or bfloat16")
        if not 0 <= t.month_dropout < 1:
            raise RecipeError("train.month_dropout must be within [0, 1)")
        if t.temperature <= 0 or t.lr <= 0:
            raise RecipeError("train.temperature and train.lr must be positive")
        lo, hi = d.normalisation.band_quantiles
        if not 0 <= lo < hi <= 1:
            raise RecipeError("data.normalisation.band_quantiles must be two numbers 0 <= lo < hi <= 1")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _section(cls, data: Any, name: str, convert=None):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RecipeError(f"recipe section {name} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"recipe section {name}: unknown keys {unknown}")
    values = dict(data)
    if convert:
        values = convert(values)
    try:
        return cls(**values)
    except TypeError as exc:
        raise RecipeError(f"recipe section {name}: {exc}") from None


def recipe_from_dict(data: dict, base: Path | None = None, source: str | None = None) -> Recipe:
    """Build a :class:`Recipe` from plain data (relative paths resolved against ``base``)."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a mapping with model, data, train and output sections")
    unknown = sorted(set(data) - {"model", "data", "train", "output"})
    if unknown:
        raise RecipeError(f"unknown recipe sections {unknown}")
    base = base or Path.cwd()

    def resolve(p: str) -> str:
        q = Path(str(p)).expanduser()
        return str(q if q.is_absolute() or "://" in str(p) else base / q)

    def data_conv(v):
        if "shards" in v:
            shards = v["shards"]
            v["shards"] = tuple(resolve(s) for s in ([shards] if isinstance(shards, str) else shards))
        for key in ("exclude_species", "include_species"):
            if key in v:
                v[key] = tuple(v[key] or ())
        v["normalisation"] = _section(NormalisationSection, v.get("normalisation"), "data.normalisation",
                                      _norm_conv)
        return v

    def model_conv(v):
        if v.get("init"):
            v["init"] = resolve(v["init"])
        return v

    def output_conv(v):
        if "dir" in v:
            v["dir"] = resolve(v["dir"])
        if "species_lists" in v:
            v["species_lists"] = tuple(v["species_lists"] or ())
        return v

    def train_conv(v):
        for key in ("lr", "min_lr_ratio", "weight_decay", "warmup_fraction", "temperature", "month_dropout"):
            if key in v and v[key] is not None:
                v[key] = float(v[key])
        return v

    return Recipe(
        model=_section(ModelSection, data.get("model"), "model", model_conv),
        data=_section(DataSection, data.get("data"), "data", data_conv),
        train=_section(TrainSection, data.get("train"), "train", train_conv),
        output=_section(OutputSection, data.get("output"), "output", output_conv),
        source=source,
    ).validate()


def _norm_conv(v):
    if "band_quantiles" in v:
        v["band_quantiles"] = tuple(float(q) for q in v["band_quantiles"])
    if "aux_ranges" in v:
        v["aux_ranges"] = {k: (float(r[0]), float(r[1])) for k, r in (v["aux_ranges"] or {}).items()}
    return v


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe; ``overrides`` ({"train.steps": 10, "data.shards": [...]}) replace keys after reading."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise RecipeError(f"override {dotted!r} must name section.key")
        node = data.setdefault(section, {})
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[key.split(".")[-1]] = value
    return recipe_from_dict(data, base=path.parent.resolve(), source=str(path))
