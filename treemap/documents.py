"""Reading the files users hand to treemap: JSON and GeoJSON, YAML, CSV, and typed recipes.

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

Recipes (:func:`read_recipe`, :func:`validate`) are YAML mappings turned into frozen dataclasses. The dataclass
fields are the schema: their types (``int``, ``float``, ``str``, ``bool``, ``date``, ``Literal``, tuples, dicts,
nested dataclasses, ``X | None``) and constraints (``Annotated[int, Ge(1)]``, ``Interval(ge=0, le=100)``) are
checked with pydantic, and the error names the field: ``recipe r.yaml: field 'train.lr': must be a number > 0
(got -1)``. Unknown keys are errors (with a suggestion when one is close), an empty value (null) means the field's
default unless the field accepts null, and true/false is not a number.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import json
import types
import typing
from datetime import date
from pathlib import Path
from typing import Any, Callable, TypeVar

from annotated_types import Ge, Gt, Interval, Le, Lt  # noqa: F401 (constraints for recipe dataclasses)

from treemap.errors import RecipeError, TreemapError, missing_file_error

T = TypeVar("T")
ErrorClass = type[TreemapError]

#: Field metadata of dataclass fields that are not keys of the document (e.g. where a recipe was read from).
INTERNAL = {"treemap.documents": "internal"}

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


class FieldError(ValueError):
    """A recipe field that is invalid in a way its type cannot say (raised by ``prepare``/``finish`` hooks and
    ``__post_init__`` checks); :func:`validate` turns it into the caller's error naming the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


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
            binary += f"; convert it, e.g. ogr2ogr -f GeoJSON {path.stem}.geojson {path}"
    raise error(f"cannot read {what} {path}: not {kind}: {binary}")


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _expect(doc: object, expect: type | None, path: Path, what: str, error: ErrorClass) -> object:
    if expect is not None and not isinstance(doc, expect):
        raise error(f"{what} {path}: expected {_kind_of(expect())} at the top level, found {_kind_of(doc)}")
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


# -- typed recipes ----------------------------------------------------------------------------------------------
def resolve_path(value: str, base: Path) -> str:
    """A path written in a document, relative to the document's folder ``base``; absolute paths, ``~`` paths and
    URLs (``s3://``, ``https://``) stay as they are."""
    if "://" in str(value):
        return str(value)
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else Path(base) / path)


def read_recipe(path: str | Path, schema: type[T], *, what: str = "recipe", error: ErrorClass = RecipeError,
                prepare: Callable[[dict], dict] | None = None, finish: Callable[[T], T] | None = None) -> T:
    """A YAML mapping validated into the frozen dataclass ``schema`` (see :func:`validate`)."""
    data = read_yaml(path, what=what, error=error, expect=dict)
    return validate(data, schema, source=f"{what} {path}", error=error, prepare=prepare, finish=finish)


def validate(data: Any, schema: type[T], *, source: str, error: ErrorClass = RecipeError,
             prepare: Callable[[dict], dict] | None = None, finish: Callable[[T], T] | None = None) -> T:
    """``data`` (plain YAML/JSON values) as an instance of the dataclass ``schema``, or ``error`` with one line
    ``SOURCE: field 'a.b': must be ...``. ``prepare`` rewrites the plain data first (shorthands), ``finish``
    checks the instance (rules across fields); both may raise :class:`FieldError`."""
    from pydantic import ValidationError

    try:
        if not isinstance(data, dict):
            raise error(f"{source}: expected a mapping at the top level, found {_kind_of(data)}")
        data = _precheck(prepare(dict(data)) if prepare else data, schema, ())
        value = _adapter(schema).validate_python(data)
        return finish(value) if finish else value
    except _Unknown as exc:
        raise error(f"{source}: {exc}") from None
    except FieldError as exc:
        raise error(f"{source}: field '{exc.field}': {exc}") from None
    except ValidationError as exc:
        raise error(f"{source}: {_explain(exc, schema)}") from None


@functools.cache
def _adapter(schema: type):
    from pydantic import TypeAdapter

    return TypeAdapter(schema)


class _Unknown(Exception):
    pass


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> tuple:
    """The members of a union (``X | None``, ``Optional[X]``), or ``(tp,)``."""
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.metadata != INTERNAL}


def _dotted(loc: tuple) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f"{'.' if i else ''}{s}" for i, s in enumerate(loc))


def _precheck(value: Any, tp: Any, loc: tuple) -> Any:
    """What pydantic does not check the way a recipe wants: unknown keys, null for the default, booleans and
    timestamps passed as numbers or dates."""
    members = _members(tp)
    accepts_none = type(None) in members or Any in members
    real = [_strip(m) for m in members if m is not type(None)]
    if len(real) != 1:
        return value
    declared, tp = tp, real[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = _hints(tp)
        out = {}
        for key, item in value.items():
            if key not in hints:
                near = difflib.get_close_matches(str(key), list(hints), n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(hints)}"
                raise _Unknown(f"unknown key '{_dotted(loc + (key,))}' ({hint})")
            if item is None and not (type(None) in _members(hints[key]) or Any in _members(hints[key])):
                continue  # an empty value: the field's default
            out[key] = _precheck(item, hints[key], loc + (key,))
        return out
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _precheck(v, args[1], loc + (k,)) for k, v in value.items()}
    if origin in (tuple, list) and isinstance(value, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return [_precheck(v, args[i], loc + (i,)) if i < len(args) else v for i, v in enumerate(value)]
        return [_precheck(v, args[0], loc + (i,)) for i, v in enumerate(value)] if args else value
    wrong = ((tp in (int, float) and isinstance(value, bool))
             or (tp is date and not isinstance(value, (str, date)) and not (value is None and accepts_none)))
    if wrong:
        raise FieldError(_dotted(loc), f"must be {describe(declared)} (got {_short(value)})")
    return value


# -- messages ---------------------------------------------------------------------------------------------------
_PLURAL = {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "true/false values",
           "a mapping": "mappings", "a path": "paths", "a date": "dates", "a value": "values"}


def _plural(item: str) -> str:
    """"a number between 0 and 1" -> "numbers between 0 and 1"."""
    for one, many in _PLURAL.items():
        if item.startswith(one):
            return many + item[len(one):]
    return f"values ({item})"


def _bounds(meta: tuple) -> str:
    lo = hi = None
    for m in meta:
        for name in ("gt", "ge", "lt", "le"):
            if getattr(m, name, None) is not None:
                bound = (name, getattr(m, name))
                if name in ("gt", "ge"):
                    lo = bound
                else:
                    hi = bound
    if lo and hi and lo[0] == "ge" and hi[0] == "le":
        return f" between {lo[1]} and {hi[1]}"
    parts = [f"{'>' if lo[0] == 'gt' else '>='} {lo[1]}"] if lo else []
    parts += [f"{'<' if hi[0] == 'lt' else '<='} {hi[1]}"] if hi else []
    return (" " + " and ".join(parts)) if parts else ""


def describe(tp: Any) -> str:
    """What a value of type ``tp`` is, in words: "an integer >= 16", "one of 'evi', 'ndvi'", "a list of strings"."""
    meta: tuple = ()
    if typing.get_origin(tp) is typing.Annotated:
        tp, *rest = typing.get_args(tp)
        meta = tuple(rest)
    members = _members(tp)
    if len(members) > 1:
        words = [describe(m) for m in members if m is not type(None)]
        return " or ".join(words + (["null"] if type(None) in members else []))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args) if len(args) > 1 else repr(args[0])
    if origin in (tuple, list):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            inner = {describe(a) for a in args}
            return f"a list of {len(args)} {_plural(inner.pop()) if len(inner) == 1 else 'values'}"
        return f"a list of {_plural(describe(args[0]) if args else 'a value')}"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    base = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            date: "a date (YYYY-MM-DD)", Path: "a path", Any: "a value"}.get(tp, getattr(tp, "__name__", str(tp)))
    return base + _bounds(meta)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _locate(schema: type, loc: tuple) -> tuple[tuple, Any]:
    """The part of a pydantic error location that names fields, and the type found there."""
    names: list = []
    tp: Any = schema
    steps = list(loc)
    while steps:
        step = steps[0]
        real = [m for m in _members(tp) if m is not type(None)]
        if len(real) != 1:
            break
        plain = _strip(real[0])
        origin, args = typing.get_origin(plain), typing.get_args(plain)
        if dataclasses.is_dataclass(plain) and step in _hints(plain):
            tp = _hints(plain)[step]
        elif origin in (tuple, list) and isinstance(step, int) and args:
            fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
            if fixed and step >= len(args):
                break
            tp = args[step] if fixed else args[0]
        elif origin is dict and len(args) == 2:
            if len(steps) > 1 and steps[1] == "[key]":
                return tuple(names + [step]), args[0]
            tp = args[1]
        else:
            break
        names.append(step)
        steps.pop(0)
    return tuple(names), tp


def _problem(err: dict, schema: type) -> tuple[str, str]:
    """(field, message) of one pydantic error."""
    loc, kind = tuple(err["loc"]), err["type"]
    if kind in ("missing", "too_short", "too_long") and loc and isinstance(loc[-1], int):
        loc = loc[:-1]  # an item missing from a fixed-length list: describe the list
        kind = "wrong"
    names, tp = _locate(schema, loc)
    field = _dotted(names)
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return _dotted(names + (cause.field,)) if field else cause.field, str(cause)
    if kind in ("value_error", "assertion_error"):
        return field, str(cause) if cause is not None else err["msg"]
    if kind == "missing":
        return field, "is required"
    got = "" if kind == "wrong" and "input" not in err else f" (got {_short(err.get('input'))})"
    return field, f"must be {describe(tp)}{got}"


def _explain(exc, schema: type) -> str:
    problems: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        field, message = _problem(err, schema)
        problems.setdefault(field, message)
    field, message = next(iter(problems.items()))
    text = f"field '{field}': {message}" if field else message
    more = len(problems) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
