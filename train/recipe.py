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
              checkpoint_every: 500, keep_checkpoints: 2, log_every: 10, month_dropout: 0.0, aux_dropout: 0.0}
    output:  {dir: runs/NAME, model: model.safetensors, dtype: float32|float16, notes: "...",
              species_lists: [...]}

Relative paths are resolved against the recipe's folder. Every field is typed (see the dataclasses below): a wrong
type, a value out of range or an unknown key is a :class:`RecipeError` naming the field
(``recipe r.yaml: field 'train.lr': must be a number > 0 (got -1)``); an empty value means the default. ``batch_size`` is the global batch of one loss
computation (all ranks together); it is split evenly over ``streams`` (the unit of data parallelism: the data order
depends on the number of streams, never on the number of processes, so a run gives the same batches on one process
or on several). ``streams`` must be a multiple of the number of processes (times DataLoader workers per process).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from treemap.documents import INTERNAL, FieldError, Ge, Gt, Interval, read_yaml, resolve_path, validate
from treemap.errors import RecipeError  # noqa: F401 (re-exported: train.recipe.RecipeError)

Count = Annotated[int, Ge(1)]
Fraction = Annotated[float, Interval(ge=0, le=1)]
PositiveNumber = Annotated[float, Gt(0)]


@dataclass(frozen=True)
class ModelSection:
    size: Literal["tiny", "full"] = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class NormalisationSection:
    samples: Count = 20000
    band_quantiles: tuple[Fraction, Fraction] = (0.001, 0.999)
    aux_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSection:
    shards: tuple[str, ...] = ()
    streams: Count = 1
    shuffle_buffer: Annotated[int, Ge(0)] = 1000
    workers: Annotated[int, Ge(0)] = 0
    exclude_species: tuple[str, ...] = ()
    include_species: tuple[str, ...] = ()
    normalisation: NormalisationSection = NormalisationSection()


@dataclass(frozen=True)
class TrainSection:
    epochs: PositiveNumber | None = None
    steps: Count | None = None
    batch_size: Count = 256
    accumulation: Count = 1
    lr: PositiveNumber = 1e-4
    min_lr_ratio: Fraction = 0.01
    weight_decay: Annotated[float, Ge(0)] = 0.01
    warmup_steps: Annotated[int, Ge(0)] | None = None
    warmup_fraction: Fraction = 0.05
    temperature: PositiveNumber = 0.07
    positives: Literal["sample", "label"] = "sample"  # sample: the paper's InfoNCE
    grad_clip: PositiveNumber | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: Count = 500
    keep_checkpoints: Count = 2
    log_every: Count = 10
    month_dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    # each present auxiliary variable but longitude and latitude is marked missing with this probability, per
    # sample: the model learns to map without any one of them (a layer set may lack it) and cannot lean on them alone
    aux_dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0


@dataclass(frozen=True)
class OutputSection:
    dir: str = "runs/geotreeclip"
    model: str = "model.safetensors"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    notes: str = ""
    species_lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    output: OutputSection = OutputSection()
    source: str | None = field(default=None, metadata=INTERNAL)  # the file it was read from

    def validate(self) -> "Recipe":
        """The rules that tie fields together (each field's own type and range are checked when it is read);
        raises :class:`~treemap.documents.FieldError`."""
        t, d = self.train, self.data
        if not d.shards:
            raise FieldError("data.shards", "is empty: name the training shards (folders, files or glob patterns)")
        if (t.epochs is None) == (t.steps is None):
            raise FieldError("train.steps", "give exactly one of train.epochs and train.steps")
        if t.batch_size % d.streams:
            raise FieldError("train.batch_size", f"must be a multiple of data.streams ({d.streams}), "
                                                 f"not {t.batch_size}")
        lo, hi = d.normalisation.band_quantiles
        if not lo < hi:
            raise FieldError("data.normalisation.band_quantiles", f"must be [low, high] with low < high, not "
                                                                  f"[{lo}, {hi}]")
        for name, (lo, hi) in d.normalisation.aux_ranges.items():
            if not lo < hi:
                raise FieldError(f"data.normalisation.aux_ranges.{name}", f"must be [min, max] with min < max, "
                                                                         f"not [{lo}, {hi}]")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def recipe_from_dict(data: dict, base: Path | None = None, source: str | None = None) -> Recipe:
    """Build a :class:`Recipe` from plain data (relative paths resolved against ``base``)."""
    base = base or Path.cwd()
    recipe = validate(data, Recipe, source=f"recipe {source}" if source else "recipe", error=RecipeError,
                      prepare=_shorthands, finish=Recipe.validate)
    m, d, o = recipe.model, recipe.data, recipe.output
    return dataclasses.replace(
        recipe, source=source,
        model=dataclasses.replace(m, init=resolve_path(m.init, base) if m.init else None),
        data=dataclasses.replace(d, shards=tuple(resolve_path(s, base) for s in d.shards)),
        output=dataclasses.replace(o, dir=resolve_path(o.dir, base)))


def _shorthands(data: dict) -> dict:
    """``data.shards`` may be one string instead of a list."""
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("shards"), str):
        data["data"] = {**section, "shards": [section["shards"]]}
    return data


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe; ``overrides`` ({"train.steps": 10, "data.shards": [...]}) replace keys after reading."""
    path = Path(path)
    data = read_yaml(path, what="recipe", error=RecipeError)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise RecipeError(f"override {dotted!r} must name section.key")
        node = data
        for part in [section] + key.split(".")[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise RecipeError(f"override {dotted!r}: {part} in recipe {path} is not a mapping")
            node = node[part]
        node[key.split(".")[-1]] = value
    return recipe_from_dict(data, base=path.parent.resolve(), source=str(path))
