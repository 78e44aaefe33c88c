"""Species lists and the taxonomic hierarchy: load a list, build the text prompts, roll probabilities up.

A species list is a CSV with the GlobalGeoTree columns ``level0`` (leaf type), ``level1_family``,
``level2_genus`` and ``level3_species`` (the short names ``family``, ``genus``, ``species`` are accepted too).
Other columns (occurrences, coordinates) are ignored and duplicate species collapse to one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from treemap.documents import read_csv_rows
from treemap.errors import SpeciesListError

_ALIASES = {
    "level0": ("level0", "leaf_type"),
    "family": ("level1_family", "family"),
    "genus": ("level2_genus", "genus"),
    "species": ("level3_species", "species"),
}


@dataclass(frozen=True)
class Taxon:
    level0: str
    family: str
    genus: str
    species: str

    @property
    def prompt(self) -> str:
        """The text the GeoTreeCLIP text tower sees: the four levels joined with ' / '."""
        return " / ".join((self.level0, self.family, self.genus, self.species))


@dataclass(frozen=True)
class SpeciesList:
    taxa: tuple[Taxon, ...]
    name: str = "custom"

    def __len__(self) -> int:
        return len(self.taxa)

    @property
    def species(self) -> tuple[str, ...]:
        return tuple(t.species for t in self.taxa)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(t.prompt for t in self.taxa)

    def groups(self, level: str) -> tuple[tuple[str, ...], np.ndarray]:
        """Names of the distinct ``genus`` or ``family`` values (in first-seen order) and each species' group index."""
        if level not in ("genus", "family", "level0"):
            raise ValueError(f"unknown taxonomic level {level!r}")
        names: list[str] = []
        index = np.empty(len(self.taxa), dtype=np.int64)
        for i, taxon in enumerate(self.taxa):
            value = getattr(taxon, level)
            if value not in names:
                names.append(value)
            index[i] = names.index(value)
        return tuple(names), index

    def roll_up(self, probs: np.ndarray, level: str, axis: int = 0) -> tuple[tuple[str, ...], np.ndarray]:
        """Sum species probabilities (species along ``axis``) into genus or family probabilities."""
        names, index = self.groups(level)
        moved = np.moveaxis(probs, axis, 0)
        out = np.zeros((len(names),) + moved.shape[1:], dtype=moved.dtype)
        np.add.at(out, index, moved)
        return names, np.moveaxis(out, 0, axis)


def _column(header: list[str], key: str, path: Path) -> str:
    for alias in _ALIASES[key]:
        if alias in header:
            return alias
    raise SpeciesListError(f"species list {path} has no {_ALIASES[key][0]!r} column; it has "
                           f"{', '.join(header) if header else 'no header'}")


def load_species_list(path: str | Path) -> SpeciesList:
    """Read a species list CSV; raises SpeciesListError with a one-line reason on bad input."""
    path = Path(path)
    header, rows = read_csv_rows(path, what="species list", error=SpeciesListError)
    cols = {k: _column(header, k, path) for k in _ALIASES}
    seen: dict[str, Taxon] = {}
    for row in rows:
        taxon = Taxon(*(row[cols[k]].strip() for k in ("level0", "family", "genus", "species")))
        if taxon.species and taxon.species not in seen:
            seen[taxon.species] = taxon
    if not seen:
        raise SpeciesListError(f"species list {path} has no species")
    return SpeciesList(tuple(seen.values()), name=path.stem)


def demo_species_list() -> SpeciesList:
    """The ten species planted in the demo world."""
    ref = resources.files("treemap.data") / "species" / "demo.csv"
    with resources.as_file(ref) as path:
        out = load_species_list(path)
    return SpeciesList(out.taxa, name="demo")
