"""Species lists and the taxonomic hierarchy: load a list, build the text prompts, roll probabilities up.

A species list is a CSV with the GlobalGeoTree columns ``level0`` (leaf type), ``level1_family``,
``level2_genus`` and ``level3_species`` (the short names ``family``, ``genus``, ``species`` are accepted too).
Other columns (occurrences, coordinates) are ignored. Rows that repeat a species with the same taxonomy collapse to
its first row (GlobalGeoTree occurrence lists repeat a species once per occurrence); rows whose every cell is empty
(spreadsheet exports write them) are skipped.

The loader refuses, with one line naming the file, the row (1-based data row, and its line in the file) and the
problem: a row with an empty leaf type, family, genus or species, and a species listed again with another taxonomy.
A species whose name does not begin with its genus (a synonym kept under its accepted genus, or a typo) is only a
warning on the log: real lists hold such names, and hybrids (``Populus x canescens``, ``x Cupressocyparis``) are
read with their hybrid sign left out.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from treemap.documents import read_csv_rows, read_text
from treemap.errors import SpeciesListError

log = logging.getLogger(__name__)

_ALIASES = {
    "level0": ("level0", "leaf_type"),
    "family": ("level1_family", "family"),
    "genus": ("level2_genus", "genus"),
    "species": ("level3_species", "species"),
}
LEVELS = ("level0", "family", "genus", "species")
#: How messages name each level.
LEVEL_WORDS = {"level0": "leaf type", "family": "family", "genus": "genus", "species": "species"}
#: Genus-name warnings logged one by one; the rest are counted on one more line.
_WARN_NAMES = 5


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
    """Read a species list CSV; raises SpeciesListError with a one-line reason on bad input (see the module doc)."""
    path = Path(path)
    header, rows = read_csv_rows(path, what="species list", error=SpeciesListError)
    cols = {k: _column(header, k, path) for k in _ALIASES}
    seen: dict[str, tuple[Taxon, int]] = {}  # species -> its taxon and its first data row (1-based)
    for n, row in enumerate(rows, start=1):
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue  # an empty spreadsheet row
        taxon = Taxon(*(row[cols[k]].strip() for k in LEVELS))
        missing = [k for k in LEVELS if not getattr(taxon, k)]
        if missing:
            raise SpeciesListError(f"species list {path}: {_where(path, n)} has no "
                                   f"{' or '.join(LEVEL_WORDS[k] for k in missing)} (empty "
                                   f"{', '.join(cols[k] for k in missing)}); every species needs its leaf type, "
                                   f"family, genus and species")
        first = seen.get(taxon.species)
        if first is None:
            seen[taxon.species] = (taxon, n)
        elif first[0] != taxon:
            raise SpeciesListError(_conflict(path, cols, taxon, n, *first))
    if not seen:
        raise SpeciesListError(f"species list {path} has no species")
    _warn_genus_names(path, [(taxon, n) for taxon, n in seen.values() if not genus_matches(taxon)])
    return SpeciesList(tuple(taxon for taxon, _ in seen.values()), name=path.stem)


def species_list_from(ref: str | Path) -> SpeciesList:
    """``demo`` (the shipped demo list) or a species list CSV."""
    return demo_species_list() if str(ref) == "demo" else load_species_list(ref)


_HYBRID = re.compile(r"^(?:[x\u00d7]\s+|\u00d7)", re.IGNORECASE)


def genus_matches(taxon: Taxon) -> bool:
    """Whether the species name begins with the genus (case-insensitively; a leading hybrid sign, ``x`` or the
    multiplication sign, is left out of both)."""
    genus = _HYBRID.sub("", taxon.genus.strip())
    words = _HYBRID.sub("", taxon.species.strip()).split()
    return bool(words) and words[0].casefold() == genus.casefold()


def _conflict(path: Path, cols: dict, taxon: Taxon, n: int, first: Taxon, first_n: int) -> str:
    levels = [k for k in LEVELS[:-1] if getattr(taxon, k) != getattr(first, k)]
    here = " and ".join(f"{LEVEL_WORDS[k]} {getattr(taxon, k)!r}" for k in levels)
    there = " and ".join(f"{getattr(first, k)!r}" for k in levels)
    lines = _data_lines(path)
    return (f"species list {path}: {_where(path, n, lines)} lists {taxon.species} again with {here}, but "
            f"{_where(path, first_n, lines)} has {there}; a species listed twice needs the same "
            f"{', '.join(cols[k] for k in levels)}")


def _warn_genus_names(path: Path, odd: list[tuple[Taxon, int]]) -> None:
    if not odd:
        return
    lines = _data_lines(path)
    for taxon, n in odd[:_WARN_NAMES]:
        log.warning("species list %s: %s: species %s does not begin with its genus %s (a synonym or a typo?)",
                    path, _where(path, n, lines), taxon.species, taxon.genus)
    if len(odd) > _WARN_NAMES:
        log.warning("species list %s: %d more species do not begin with their genus", path, len(odd) - _WARN_NAMES)


def _where(path: Path, n: int, lines: list[int] | None = None) -> str:
    """``row N (line L)``, as :func:`treemap.documents.read_csv_rows` names rows."""
    lines = _data_lines(path) if lines is None else lines
    return f"row {n} (line {lines[n - 1]})" if 0 < n <= len(lines) else f"row {n}"


def _data_lines(path: Path) -> list[int]:
    """The file line each data row of a CSV ends on, counted as :func:`treemap.documents.read_csv_rows` counts them
    (same delimiter choice, blank lines skipped). Read again only to name a row in a message."""
    text = read_text(path, what="species list", error=SpeciesListError, kind="CSV")
    first = text.split("\n", 1)[0]
    delimiter = max((",", "\t", ";"), key=first.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    lines = []
    try:
        for _ in reader:
            lines.append(reader.line_num)
    except csv.Error:
        pass
    return lines


def demo_species_list() -> SpeciesList:
    """The ten species planted in the demo world."""
    ref = resources.files("treemap.data") / "species" / "demo.csv"
    with resources.as_file(ref) as path:
        out = load_species_list(path)
    return SpeciesList(out.taxa, name="demo")
