"""Typed recipes: plain YAML/JSON values validated into frozen dataclasses, every mistake one line naming the field.

The dataclass fields are the schema: their types (``int``, ``float``, ``str``, ``bool``, ``date``, ``Literal``,
tuples, dicts, nested dataclasses, ``X | None``) and constraints (``Annotated[int, Ge(1)]``,
``Interval(ge=0, le=100)``) are checked with pydantic, and the error names the field: ``recipe r.yaml: field
'train.lr': must be a number > 0 (got -1)``. Unknown keys are errors (with a suggestion when one is close), an empty
value (null) means the field's default unless the field accepts null, and true/false is not a number.

This module holds :func:`validate` and the words of its messages (:func:`describe`, :func:`kind_of`); reading a
recipe file is :func:`treemap.documents.read_recipe` (which also re-exports these names).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from datetime import date
from pathlib import Path
from typing import Any, Callable, TypeVar

from annotated_types import Ge, Gt, Interval, Le, Lt  # constraints for recipe dataclasses

from treemap.errors import RecipeError, TreemapError

__all__ = ["INTERNAL", "FieldError", "Ge", "Gt", "Interval", "Le", "Lt", "describe", "kind_of", "validate"]

T = TypeVar("T")
ErrorClass = type[TreemapError]

#: Field metadata of dataclass fields that are not keys of the document (e.g. where a recipe was read from).
INTERNAL = {"treemap.documents": "internal"}


class FieldError(ValueError):
    """A recipe field that is invalid in a way its type cannot say (raised by ``prepare``/``finish`` hooks and
    ``__post_init__`` checks); :func:`validate` turns it into the caller's error naming the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def kind_of(value: object) -> str:
    """A plain value's kind in words: "a mapping", "a list", "true/false", "nothing (null)" ..."""
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


# -- validation -------------------------------------------------------------------------------------------------
def validate(data: Any, schema: type[T], *, source: str, error: ErrorClass = RecipeError,
             prepare: Callable[[dict], dict] | None = None, finish: Callable[[T], T] | None = None) -> T:
    """``data`` (plain YAML/JSON values) as an instance of the dataclass ``schema``, or ``error`` with one line
    ``SOURCE: field 'a.b': must be ...``. ``prepare`` rewrites the plain data first (shorthands), ``finish``
    checks the instance (rules across fields); both may raise :class:`FieldError`."""
    from pydantic import ValidationError

    try:
        if not isinstance(data, dict):
            raise error(f"{source}: expected a mapping at the top level, found {kind_of(data)}")
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
