"""Reading the files users hand to treemap: JSON and GeoJSON, YAML, CSV, and recipe files.

Every failure becomes one line naming the file, raised as the error class the caller passes (``AOIError`` for an
AOI, ``SpeciesListError`` for a species list, ``RecipeError`` for a recipe, ...):

* a missing file: ``WHAT not found: PATH does not exist``, as the class's ``FileNotFoundError`` flavour
  (:func:`treemap.errors.missing_file_error`, e.g. ``AOINotFoundError``);
* a folder, no permission, another read error: ``WHAT PATH is a folder, ...``, ``cannot read WHAT PATH: ...``;
* bytes that are not UTF-8 text: ``cannot read WHAT PATH: not GeoJSON: it looks like a shapefile ...`` (a few
  binary formats users mix up are recognised by their first bytes; a byte-order mark is skipped);
* syntax errors, with line and column: ``cannot read WHAT PATH: invalid JSON at line 3 column 7: ...``; YAML
  mappings that repeat a key are a syntax error too;
* the wrong kind of document: ``WHAT PATH: expected a mapping at the top level, found a list``;
* a CSV row with more or fewer values than the header has columns: ``WHAT PATH: row 3 (line 4) has 2 values ...``.

A recipe file (:func:`read_recipe`) is a YAML mapping validated into a frozen dataclass by
:func:`treemap.recipes.validate`; the names of :mod:`treemap.recipes` (``validate``, ``describe``, ``FieldError``,
``INTERNAL``, the constraints ``Ge``, ``Gt``, ``Interval``, ``Le``, ``Lt``) are importable from here too.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from treemap.errors import RecipeError, TreemapError, missing_file_error
from treemap.recipes import INTERNAL, FieldError, Ge, Gt, Interval, Le, Lt, describe, kind_of, validate

__all__ = [
    "check_file", "read_csv_rows", "read_json", "read_recipe", "read_text", "read_yaml", "resolve_path", "row_width",
    # re-exported from treemap.recipes
    "INTERNAL", "FieldError", "Ge", "Gt", "Interval", "Le", "Lt", "describe", "validate",
]

T = TypeVar("T")
ErrorClass = type[TreemapError]

# First bytes of binary files people hand over by mistake.
_MAGIC = (
    (b"\x00\x00\x27\x0a", "a shapefile (.shp)"),
    (b"PK\x03\x04", "a ZIP archive (a zipped shapefile, .kmz, .xlsx?)"),
    (b"SQLite format 3\x00", "an SQLite database (a GeoPackage?)"),
    (b"\xd0\xcf\x11\xe0", "an Office document (.xls?)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"PAR1", "a Parquet file"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\xff\xfe", "UTF-16 text (save it as UTF-8)"),
    (b"\xfe\xff", "UTF-16 text (save it as UTF-8)"),
)
_GEO_BINARY = ("a shapefile", "a ZIP archive", "an SQLite")
# Vector formats known by their name, named before their bytes are read (a .shp of any content is not GeoJSON).
_GEO_SUFFIXES = {".shp": "a shapefile", ".shx": "a shapefile's index", ".dbf": "a shapefile's table",
                 ".gpkg": "a GeoPackage", ".kml": "a KML file", ".kmz": "a KMZ file", ".gml": "a GML file",
                 ".fgb": "a FlatGeobuf file", ".parquet": "a (Geo)Parquet file", ".zip": "a ZIP archive"}


def _convert_hint(path: Path) -> str:
    clash = path.suffix.lower() in (".geojson", ".json")
    target = f"{path.stem}-wgs84.geojson" if clash else f"{path.stem}.geojson"
    return f"convert it, e.g. ogr2ogr -f GeoJSON -t_srs EPSG:4326 {target} {path}"


# -- files ------------------------------------------------------------------------------------------------------
def check_file(path: str | Path, *, what: str, error: ErrorClass, kind: str = "") -> Path:
    """``path`` as a Path when it is an existing file; otherwise the one-line error (missing, a folder)."""
    path = Path(path)
    if not path.exists():
        raise missing_file_error(error)(f"{what} not found: {path} does not exist")
    if path.is_dir():
        raise error(_folder(path, what, kind))
    return path


def _folder(path: Path, what: str, kind: str) -> str:
    return f"{what} {path} is a folder, not a {kind} file" if kind else f"{what} {path} is a folder, not a file"


def read_text(path: str | Path, *, what: str, error: ErrorClass, kind: str = "text") -> str:
    """The file's text (UTF-8, a byte-order mark skipped); every failure is ``error`` with one line naming it."""
    path = Path(path)
    named = _GEO_SUFFIXES.get(path.suffix.lower()) if kind == "GeoJSON" else None
    if named is not None and path.is_file():
        raise error(f"cannot read {what} {path}: not GeoJSON: {named} (by its name); {_convert_hint(path)}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise missing_file_error(error)(f"{what} not found: {path} does not exist") from None
    except IsADirectoryError:
        raise error(_folder(path, what, kind)) from None
    except PermissionError:
        raise error(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    binary = next((name for magic, name in _MAGIC if data.startswith(magic)), None)
    if binary is None and b"\x00" in data[:65536]:
        binary = "binary data"
    if binary is None:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            binary = f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; save it as UTF-8)"
    else:
        binary = f"it looks like {binary}"
        if kind == "GeoJSON" and binary.startswith(tuple(f"it looks like {g}" for g in _GEO_BINARY)):
            binary += f"; {_convert_hint(path)}"
    raise error(f"cannot read {what} {path}: not {kind}: {binary}")


def _expect(doc: object, expect: type | None, path: Path, what: str, error: ErrorClass) -> object:
    if expect is not None and not isinstance(doc, expect):
        raise error(f"{what} {path}: expected {kind_of(expect())} at the top level, found {kind_of(doc)}")
    return doc


def read_json(path: str | Path, *, what: str, error: ErrorClass, kind: str = "JSON",
              expect: type | None = None) -> Any:
    """A JSON document (``kind`` names it in messages, e.g. "GeoJSON"); ``expect``: dict or list at the top."""
    path = Path(path)
    text = read_text(path, what=what, error=error, kind=kind)
    if not text.strip():
        raise error(f"cannot read {what} {path}: the file is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"cannot read {what} {path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                    f"{exc.msg}") from None
    except RecursionError:
        raise error(f"cannot read {what} {path}: the JSON is nested too deeply") from None
    return _expect(doc, expect, path, what, error)


@functools.cache
def _yaml_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """PyYAML's safe loader, except that a mapping that repeats a key is an error (PyYAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice",
                                                            key_node.start_mark)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml(path: str | Path, *, what: str, error: ErrorClass, expect: type | None = dict) -> Any:
    """A YAML document; ``expect`` (default: a mapping) is checked at the top level. An empty file is an empty
    document of the expected kind."""
    import yaml

    path = Path(path)
    text = read_text(path, what=what, error=error, kind="YAML")
    try:
        doc = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise error(f"cannot read {what} {path}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise error(f"cannot read {what} {path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if doc is None and expect is not None:
        return expect()
    return _expect(doc, expect, path, what, error)


def read_csv_rows(path: str | Path, *, what: str, error: ErrorClass, ragged: str = "error"
                  ) -> tuple[list[str], list[dict]]:
    """The header and the data rows (dicts by column name) of a CSV file; blank lines are skipped.

    The delimiter is the one of ``,``, tab and ``;`` the header line has most of (GBIF downloads are
    tab-separated, spreadsheets in many locales write ``;``). A row with more or fewer values than the header has
    columns is an error naming the row (``ragged="error"``), or kept as :class:`csv.DictReader` gives it
    (``ragged="keep"``: missing values None, extra values in a list under the key None).
    """
    path = Path(path)
    text = read_text(path, what=what, error=error, kind="CSV")
    first = text.split("\n", 1)[0]
    delimiter = max((",", "\t", ";"), key=first.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        header = list(reader.fieldnames or [])
        for n, row in enumerate(reader, start=1):
            found = row_width(row)
            if ragged == "error" and found != len(header):
                raise error(f"{what} {path}: row {n} (line {reader.line_num}) has {found} value"
                            f"{'' if found == 1 else 's'}, the header has {len(header)} column"
                            f"{'' if len(header) == 1 else 's'}")
            rows.append(row)
    except csv.Error as exc:
        raise error(f"cannot read {what} {path}: line {reader.reader.line_num}: {exc}") from None
    return header, rows


def row_width(row: dict) -> int:
    """How many values a row of :func:`read_csv_rows` had in the file (with ``ragged="keep"``, short rows hold
    None for their missing values and long rows their extra values under the key None)."""
    return sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())


# -- paths and recipe files -------------------------------------------------------------------------------------
def resolve_path(value: str, base: Path) -> str:
    """A path written in a document, relative to the document's folder ``base``; absolute paths, ``~`` paths and
    URLs (``s3://``, ``https://``) stay as they are."""
    if "://" in str(value):
        return str(value)
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else Path(base) / path)


def read_recipe(path: str | Path, schema: type[T], *, what: str = "recipe", error: ErrorClass = RecipeError,
                prepare: Callable[[dict], dict] | None = None, finish: Callable[[T], T] | None = None) -> T:
    """A YAML mapping validated into the frozen dataclass ``schema`` (see :func:`treemap.recipes.validate`)."""
    data = read_yaml(path, what=what, error=error, expect=dict)
    return validate(data, schema, source=f"{what} {path}", error=error, prepare=prepare, finish=finish)
