"""Offline validation of a run's STAC item (:mod:`treemap.run_item`): :class:`OfflineSTACValidator` is pystac's own
JSON-schema validator with its schema lookup pointed at local files (pystac's bundled core and GeoJSON schemas, and
a folder of extension schemas laid out as ``<host>/<path>``; the tests' copy is ``tests/data/stac-schemas``), so no
schema is ever fetched; :func:`validate_run_item` checks an item against the core schemas and every extension it
lists, and that its hrefs are relative and present beside it."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import pystac
from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

from treemap.run_item import RunItemValidationError, _is_relative, item_dict

__all__ = ["OfflineSTACValidator", "offline_validation", "validate_run_item"]

# -- validation --------------------------------------------------------------------------------------------------------
class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator that reads every schema from local files and never from the network.

    Schemas come from pystac's bundled copies (core STAC item/catalog/collection and their parts, GeoJSON Feature
    and Geometry) and from ``schema_dir``, where the document at ``https://<host>/<path>`` is the file
    ``schema_dir/<host>/<path>``. Any other schema (``$ref`` or extension) fails with :class:`GetSchemaError`.
    Use it as ``item.validate(validator=...)``, ``pystac.validation.validate_dict(d, validator=...)``, or register
    it for everything with :func:`offline_validation`."""

    def __init__(self, schema_dir: Path | str | None = None):
        super().__init__()
        self.schema_dir = Path(schema_dir) if schema_dir is not None else None

    def local_path(self, uri: str) -> Path | None:
        """Where the copy of ``uri`` is in ``schema_dir`` (None: not a URL it could hold)."""
        parts = urlsplit(uri)
        if self.schema_dir is None or parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        relative = PurePosixPath(parts.netloc.lower(), parts.path.lstrip("/"))
        if ".." in relative.parts:
            return None
        return self.schema_dir.joinpath(*relative.parts)

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        uri = schema_uri.split("#", 1)[0]
        if uri in self.schema_cache:
            return self.schema_cache[uri]
        path = self.local_path(uri)
        if path is None or not path.is_file():
            raise GetSchemaError(uri, FileNotFoundError(
                f"schema not available offline (no copy at {path}; schemas are never downloaded)"
                if path is not None else "schema not available offline"))
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GetSchemaError(uri, exc) from exc
        self.schema_cache[uri] = schema
        return schema


@contextmanager
def offline_validation(schema_dir: Path | str | None = None) -> Iterator[OfflineSTACValidator]:
    """Register an :class:`OfflineSTACValidator` as pystac's validator (``item.validate()``,
    ``pystac.validation.validate``) for the duration of the block; the previous one is restored after."""
    from pystac.validation import RegisteredValidator, set_validator

    previous = RegisteredValidator.get_validator()
    validator = OfflineSTACValidator(schema_dir)
    set_validator(validator)
    try:
        yield validator
    finally:
        set_validator(previous)


def _leaves(error: Any) -> list[Any]:
    """The specific errors under a jsonschema error. The extension schemas are ``oneOf`` an Item branch and a
    Collection (or Catalog) branch; the branches for another object type (those that fail on ``type``) are left out,
    so what remains is why the item fails its own branch."""
    if not error.context:
        return [error]
    branches: dict[Any, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0] if sub.relative_schema_path else None, []).append(sub)

    def other_type(errors: list[Any]) -> bool:
        return any(e.validator == "const" and list(e.absolute_path) == ["type"] for e in errors)

    kept = [errors for errors in branches.values() if not other_type(errors)] or list(branches.values())
    return [leaf for errors in kept for sub in errors for leaf in _leaves(sub)]


def _describe(error: Any) -> list[str]:
    """Lines for a jsonschema error: where in the item, and the most specific reasons."""
    return [f"{'/'.join(str(p) for p in leaf.absolute_path) or '(item)'}: {leaf.message}" for leaf in _leaves(error)]


def _schema_failures(payload: dict, validator: OfflineSTACValidator) -> list[str]:
    from pystac.errors import STACValidationError

    failures: list[str] = []
    version = payload.get("stac_version")
    if not isinstance(version, str):
        failures.append("stac_version: missing")
        version = pystac.get_stac_version()
    checks = [("core", None)]
    extensions = payload.get("stac_extensions", [])
    if isinstance(extensions, list):
        checks += [(str(uri), str(uri)) for uri in extensions]
    for label, uri in checks:
        try:  # a schema that is not here: said once, without pystac logging a traceback for it
            validator._get_schema(uri or validator.schema_uri_map.get_object_schema_uri(
                pystac.STACObjectType.ITEM, version) or "")
        except GetSchemaError as exc:
            failures.append(f"{label} schema: {exc}")
            continue
        try:
            if uri is None:
                validator.validate_core(payload, pystac.STACObjectType.ITEM, version)
            else:
                validator.validate_extension(payload, pystac.STACObjectType.ITEM, version, uri)
        except STACValidationError as exc:
            errors = exc.source if isinstance(exc.source, list) and exc.source else None
            lines = sorted({line for e in errors for line in _describe(e)}) if errors else [str(exc).splitlines()[-1]]
            failures.extend(f"{label} schema: {line}" for line in lines)
        except GetSchemaError as exc:
            failures.append(f"{label} schema: {exc}")
        except Exception as exc:  # noqa: BLE001 - an unresolvable $ref inside a schema, a broken schema file
            failures.append(f"{label} schema: {type(exc).__name__}: {exc}")
    return failures


def _portability_failures(payload: dict, base: Path | None) -> list[str]:
    failures = []
    for link in payload.get("links", []) if isinstance(payload.get("links"), list) else []:
        href = str(link.get("href", "")) if isinstance(link, dict) else ""
        if isinstance(link, dict) and link.get("rel") in ("self", "root", "parent", "collection") and \
                urlsplit(href).scheme in ("", "file") and not _is_relative(href):
            failures.append(f"links: {link.get('rel')} link {href} is an absolute path: moving the folder breaks it")
    assets = payload.get("assets") if isinstance(payload.get("assets"), dict) else {}
    for key, asset in assets.items():
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or not href:
            continue  # the core schema reports it
        if not _is_relative(href):
            failures.append(f"assets/{key}: href {href} is not relative to the item")
        elif base is not None and not (base / href).is_file():
            failures.append(f"assets/{key}: {href} does not exist beside the item")
    return failures


def validate_run_item(item: pystac.Item | Mapping[str, Any] | Path | str, schema_dir: Path | str | None = None,
                      check_files: bool = True) -> None:
    """Validate a run item offline; :class:`RunItemValidationError` lists every failure.

    ``item`` is an item file (its assets are also checked to exist beside it when ``check_files``), a JSON dict or a
    :class:`pystac.Item`. Checks: the core STAC item schema and the schema of every extension in
    ``stac_extensions`` (with :class:`OfflineSTACValidator`: schemas from pystac and ``schema_dir`` only), and that
    every asset href is relative and no ``self``/``root``/``parent`` link is an absolute path."""
    base: Path | None = None
    if isinstance(item, (str, Path)):
        path = Path(item)
        where = str(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunItemValidationError(where, [f"cannot read it: {exc}"]) from None
        base = path.parent if check_files else None
    else:
        payload = item_dict(item)
        where = str(payload.get("id", "<item>")) if isinstance(payload, dict) else "<item>"
    if not isinstance(payload, dict):
        raise RunItemValidationError(where, ["not a JSON object"])
    failures = _schema_failures(payload, OfflineSTACValidator(schema_dir))
    failures += _portability_failures(payload, base)
    if failures:
        raise RunItemValidationError(where, failures)
