"""Occurrence points files: GlobalGeoTree or GBIF columns -> :class:`Point` records, and the rows that cannot be
used, each with a reason (see :mod:`treemap.extract` for the columns accepted)."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from treemap.dates import in_era, year_range
from treemap.documents import read_csv_rows, row_width
from treemap.errors import PointsError, TreemapError  # noqa: F401 (PointsError: re-exported)

COLUMNS: dict[str, tuple[str, ...]] = {
    "longitude": ("longitude", "decimalLongitude", "lon", "lng"),
    "latitude": ("latitude", "decimalLatitude", "lat"),
    "year": ("year",),
    "level0": ("level0", "leaf_type"),
    "family": ("level1_family", "family"),
    "genus": ("level2_genus", "genus"),
    "species": ("level3_species", "species"),
}
KEY_COLUMNS = ("sample_id", "gbifID", "id", "key")
TEXT_OF = {"level0": "level0", "family": "level1_family", "genus": "level2_genus", "species": "level3_species"}


@dataclass(frozen=True)
class Point:
    row: int  # data row number in the file, from 1
    key: str
    lon: float
    lat: float
    year: int
    text: tuple[tuple[str, str], ...]  # (level name, value) in shard order


@dataclass(frozen=True)
class Skipped:
    row: int
    key: str | None
    reason: str  # bad_row, no_scenes, outside_scenes, no_clear_data
    message: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _column(header: list[str], name: str) -> str | None:
    lower = {h.lower(): h for h in header}
    for alias in COLUMNS[name]:
        if alias in header:
            return alias
        if alias.lower() in lower:
            return lower[alias.lower()]
    return None


_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _taxonomy(path: str | None) -> dict[str, tuple[str, str, str]]:
    if not path:
        return {}
    from treemap.taxonomy import load_species_list

    try:
        taxa = load_species_list(path).taxa
    except TreemapError as exc:
        raise PointsError(f"taxonomy list: {exc}") from None
    return {t.species: (t.level0, t.family, t.genus) for t in taxa}


def read_points(path: str | Path, *, taxonomy: str | None = None,
                default_year: int | None = None) -> tuple[list[Point], list[Skipped]]:
    """Parse a points file: good points, and the rows that cannot be used (with a reason).

    ``taxonomy``: a species list whose level0, family and genus fill in the rows' missing ones; ``default_year``:
    the year of rows without one. Raises :class:`PointsError` when the file is missing or unreadable, or lacks a
    required column.
    """
    path = Path(path)
    taxonomy = _taxonomy(taxonomy)
    header, rows = read_csv_rows(path, what="points file", error=PointsError, ragged="keep")
    cols = {name: _column(header, name) for name in COLUMNS}
    required = ["longitude", "latitude", "species"]
    if default_year is None:
        required.append("year")
    if not taxonomy:  # a taxonomy list fills in level0, family and genus per species
        required.extend(["level0", "family", "genus"])
    missing = [COLUMNS[n][0] for n in required if cols[n] is None]
    if missing:
        extra = " (or give a taxonomy list with level0 per species)" if "level0" in missing else ""
        raise PointsError(f"points file {path} lacks column(s) {', '.join(missing)}{extra}; "
                          f"it has {', '.join(header) if header else 'no header'}")
    key_col = next((k for k in KEY_COLUMNS if k in header), None)

    points, skipped = [], []
    keys: Counter = Counter()
    for n, row in enumerate(rows, start=1):
        raw_key = (row.get(key_col) or "").strip() if key_col else ""
        key = _KEY_SAFE.sub("-", raw_key.split(".")[0] if re.fullmatch(r"\d+\.0+", raw_key) else raw_key)
        key = key.strip("-_") or f"row{n:09d}"
        try:
            if row_width(row) != len(header):
                raise ValueError(f"{row_width(row)} values for the {len(header)} columns of the header")
            lon = float(row[cols["longitude"]])
            lat = float(row[cols["latitude"]])
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                raise ValueError(f"coordinates {lon}, {lat} out of range")
            year_text = (row.get(cols["year"]) or "").strip() if cols["year"] else ""
            year = int(float(year_text)) if year_text else default_year
            if year is None:
                raise ValueError("no year")
            if not in_era(year):
                first, last = year_range()
                raise ValueError(f"year {year} is outside {first}..{last} (the Sentinel-2 era to next year)")
            species = (row.get(cols["species"]) or "").strip()
            family = (row.get(cols["family"]) or "").strip() if cols["family"] else ""
            genus = (row.get(cols["genus"]) or "").strip() if cols["genus"] else ""
            level0 = (row.get(cols["level0"]) or "").strip() if cols["level0"] else ""
            if species in taxonomy:
                known = taxonomy[species]
                level0, family, genus = level0 or known[0], family or known[1], genus or known[2]
            labels = {"level0": level0, "family": family, "genus": genus, "species": species}
            empty = [TEXT_OF[k] for k, v in labels.items() if not v]
            if empty:
                raise ValueError(f"empty {', '.join(empty)}")
        except (TypeError, ValueError) as exc:
            skipped.append(Skipped(n, key, "bad_row", str(exc)))
            continue
        keys[key] += 1
        points.append(Point(n, key, lon, lat, year, tuple((TEXT_OF[k], v) for k, v in labels.items())))
    dupes = {k for k, c in keys.items() if c > 1}
    if dupes:  # keys must be unique: disambiguate with the row number
        points = [dataclasses.replace(p, key=f"{p.key}-r{p.row}") if p.key in dupes else p for p in points]
    return points, skipped
