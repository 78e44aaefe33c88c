"""The options of ``treemap extract`` (see :mod:`treemap.extract`): how composites are made, shard size, window size,
auxiliary rasters, taxonomy list and default year; read from an extraction recipe and/or the command line.

Compositing (:class:`Compositing`):

* ``treemap`` (the default): every scene, pixel-level SCL cloud/shadow masking, then the median -- the composites
  ``treemap predict`` computes, so a model trained on these shards sees at training time what it sees when mapping.
* ``paper``: the GlobalGeoTree recipe -- scenes with at most 30 % cloud, no pixel masking, median.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from treemap.documents import read_recipe, resolve_path
from treemap.errors import ExtractError
from treemap.models.config import AUX_VARIABLES
from treemap.recipes import FieldError, Ge, Interval


@dataclass(frozen=True)
class Compositing:
    """How monthly composites are made. ``scl_mask``: drop cloud/shadow pixels by the scene classification;
    ``max_cloud``: leave out scenes whose cloud cover (metadata, percent) is above it."""

    scl_mask: bool = True
    max_cloud: Annotated[float, Interval(ge=0, le=100)] = 100.0

    @classmethod
    def preset(cls, name: str) -> "Compositing":
        if name == "treemap":
            return cls(scl_mask=True, max_cloud=100.0)
        if name == "paper":
            return cls(scl_mask=False, max_cloud=30.0)
        raise ExtractError(f"unknown compositing {name!r}: use 'treemap' or 'paper'")


@dataclass(frozen=True)
class AuxSource:
    """One auxiliary variable read from band ``band`` of a raster, as ``value * scale + offset`` (the layer-set
    entries of :mod:`treemap.auxiliary`; ``units`` is for people)."""

    path: str
    band: Annotated[int, Ge(1)] = 1
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""


@dataclass(frozen=True)
class ExtractOptions:
    compositing: Compositing = Compositing()
    shard_size: Annotated[int, Ge(1)] = 1000
    window_px: Annotated[int, Ge(1)] = 512
    auxiliary: dict[str, AuxSource] = field(default_factory=dict)
    taxonomy: str | None = None  # species-list CSV giving level0 (and family/genus) per species
    default_year: Annotated[int, Interval(ge=2015, le=2100)] | None = None  # for rows without a year

    def __post_init__(self):
        if self.shard_size < 1 or self.window_px < 1:
            raise ExtractError("shard_size and window_px must be positive")
        bad = sorted(set(self.auxiliary) - set(AUX_VARIABLES[2:]))
        if bad:
            raise ExtractError(f"unknown auxiliary variables {bad} (longitude/latitude come from the points; "
                               f"known: {', '.join(AUX_VARIABLES[2:])})")

    def fingerprint(self) -> dict:
        return {
            "compositing": dataclasses.asdict(self.compositing),
            "shard_size": self.shard_size,
            "window_px": self.window_px,
            "auxiliary": {k: dataclasses.asdict(v) for k, v in sorted(self.auxiliary.items())},
            "default_year": self.default_year,
        }


def load_recipe(path: str | Path) -> ExtractOptions:
    """Extraction options from a YAML recipe (the mapping itself, or its ``extract`` section)::

        compositing: treemap          # or paper, or {scl_mask: false, max_cloud: 30}
        shard_size: 1000
        window_px: 512
        taxonomy: species.csv         # level0 per species, for GBIF input
        default_year: 2022
        auxiliary:                    # variable -> raster (paths relative to the recipe)
          elevation: srtm.tif
          bio01: {path: wc_bio.tif, band: 1, scale: 1.0}

    A missing or invalid recipe raises :class:`~treemap.errors.RecipeError` naming the field.
    """
    path = Path(path)
    options = read_recipe(path, ExtractOptions, prepare=_recipe_shorthands)
    base = path.parent
    return dataclasses.replace(
        options, taxonomy=resolve_path(options.taxonomy, base) if options.taxonomy else None,
        auxiliary={k: dataclasses.replace(v, path=resolve_path(v.path, base)) for k, v in options.auxiliary.items()})


def _recipe_shorthands(data: dict) -> dict:
    """An ``extract`` section, a compositing preset name and a bare raster path as their mappings."""
    data = data.get("extract", data)
    if not isinstance(data, dict):
        raise FieldError("extract", "must be a mapping of extraction options")
    data = dict(data)
    comp = data.get("compositing")
    if comp is not None and not isinstance(comp, dict):
        if comp not in ("treemap", "paper"):
            raise FieldError("compositing", f"must be 'treemap', 'paper' or a mapping {{scl_mask, max_cloud}} "
                                            f"(got {comp!r})")
        data["compositing"] = dataclasses.asdict(Compositing.preset(comp))
    if isinstance(data.get("auxiliary"), dict):
        data["auxiliary"] = {k: {"path": v} if isinstance(v, str) else v for k, v in data["auxiliary"].items()}
    return data


def resolve_options(recipe: str | Path | None = None, *, compositing: str | None = None,
                    max_cloud: float | None = None, scl_mask: bool | None = None, shard_size: int | None = None,
                    window_px: int | None = None, taxonomy: str | Path | None = None,
                    default_year: int | None = None) -> ExtractOptions:
    """Options for ``treemap extract``: the recipe (if any), then each command-line value that is given.

    ``compositing`` picks a preset (``treemap`` or ``paper``); ``max_cloud`` and ``scl_mask`` then adjust it.
    """
    options = load_recipe(recipe) if recipe is not None else ExtractOptions()
    comp = Compositing.preset(compositing) if compositing is not None else options.compositing
    if max_cloud is not None:
        if not 0 <= max_cloud <= 100:
            raise ExtractError(f"--max-cloud must be within 0..100, got {max_cloud:g}")
        comp = dataclasses.replace(comp, max_cloud=float(max_cloud))
    if scl_mask is not None:
        comp = dataclasses.replace(comp, scl_mask=bool(scl_mask))
    changes = {"compositing": comp}
    for name, value in (("shard_size", shard_size), ("window_px", window_px), ("default_year", default_year)):
        if value is not None:
            changes[name] = int(value)
    if taxonomy is not None:
        changes["taxonomy"] = str(taxonomy)
    return dataclasses.replace(options, **changes)
