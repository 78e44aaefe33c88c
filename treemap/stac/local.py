"""Local catalogs: a static STAC catalog (``catalog.json``, collections, items, linked by relative or absolute
hrefs) or an item file (a GeoJSON FeatureCollection / STAC ItemCollection, or a single item).

pystac-client cannot search a static catalog, so treemap reads it with pystac (``pystac.read_dict`` for catalogs
and collections, ``pystac.Item`` for items, pystac's link and href resolution) and filters the items in-process by
footprint, date and cloud cover like a STAC API would (:func:`treemap.stac.query.select`).

Every file is read here, so a missing or broken one is a one-line CatalogError naming it. An item that pystac
cannot parse or that is not a usable Sentinel-2 L2A scene is skipped with a warning naming it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import pystac

from treemap.errors import CatalogError
from treemap.stac.query import Entry, Query, normalise_all, select
from treemap.stac.scene import ItemError, Scene, parse_item


def read_json(path: Path) -> object:
    """The JSON document at ``path``; any failure is a one-line CatalogError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"catalog file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def _local_path(href: str) -> Path:
    """A filesystem path for a link target (a path or a ``file://`` URL)."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https", "s3", "gs", "az"):
        raise CatalogError(f"a local catalog links to {href}: remote documents in a local catalog are not read")
    return Path(href)


def _read_container(path: Path, doc: dict) -> pystac.Catalog:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            container = pystac.read_dict(doc, href=str(path))
    except Exception as exc:  # noqa: BLE001 - pystac raises KeyError, STACTypeError, ... for a broken document
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CatalogError(f"{path}: not a valid STAC catalog or collection "
                           f"({type(exc).__name__}{': ' + first if first else ''})") from None
    if not isinstance(container, pystac.Catalog):
        raise CatalogError(f"{path}: not a STAC catalog or collection")
    return container


class LocalCatalog:
    """A static STAC catalog (``catalog.json``) or an item file (FeatureCollection / ItemCollection JSON)."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path).resolve()
        self.name = name or str(path)
        self._entries: list[Entry] | None = None

    def _items(self) -> Iterator[tuple[dict | pystac.Item, str | None]]:
        """(item, base href for its relative asset hrefs) of every item the file holds or links to."""
        doc = read_json(self.path)
        if not isinstance(doc, dict):
            raise CatalogError(f"{self.path}: not a STAC document")
        kind = doc.get("type")
        if kind == "FeatureCollection" or "features" in doc:
            features = doc.get("features") or []
            if not isinstance(features, list):
                raise CatalogError(f"{self.path}: 'features' is not a list")
            for feature in features:  # parsed one by one: a broken feature is skipped, not the whole file
                yield feature, str(self.path)
            return
        if kind == "Feature":
            yield doc, str(self.path)
            return
        if kind not in ("Catalog", "Collection"):
            raise CatalogError(f"{self.path}: not a STAC catalog, collection or item file (type={kind!r})")
        yield from self._walk(_read_container(self.path, doc), set())

    def _walk(self, container: pystac.Catalog, seen: set[str]) -> Iterator[tuple[pystac.Item, None]]:
        """Items of a catalog or collection and of its children, through pystac's links (hrefs resolved against
        the document that holds them); each file is read once, so cyclic links end."""
        seen.add(str(container.get_self_href()))
        for link in container.get_links(pystac.RelType.ITEM):
            path = _local_path(link.get_absolute_href())
            if str(path) in seen:
                continue
            seen.add(str(path))
            yield self._item(path), None
        for link in container.get_links(pystac.RelType.CHILD):
            path = _local_path(link.get_absolute_href())
            if str(path) in seen:
                continue
            child = read_json(path)
            if not isinstance(child, dict):
                raise CatalogError(f"{path}: not a STAC document")
            yield from self._walk(_read_container(path, child), seen)

    @staticmethod
    def _item(path: Path) -> dict | pystac.Item:
        """The item at ``path``, its self href set to the file (relative asset hrefs resolve against it); the
        raw document when pystac cannot parse it (normalise_all then skips it with a warning)."""
        doc = read_json(path)
        if not isinstance(doc, dict):
            return {"id": str(path)}
        try:
            return parse_item(doc, href=str(path), owned=True)
        except ItemError:
            return read_json(path)  # pystac may have changed it: the warning names what is wrong with the file

    def entries(self) -> list[Entry]:
        if self._entries is None:
            self._entries = normalise_all(self._items())
            if not self._entries:
                raise CatalogError(f"{self.path}: no Sentinel-2 L2A items in the catalog")
        return self._entries

    def scenes(self) -> list[Scene]:
        return [scene for scene, _ in self.entries()]

    def search(self, query: Query) -> list[Scene]:
        # Planetary Computer items in a local file are signed when read (TileCube), which raises the same
        # CatalogError if the planetary-computer package is missing; listing them needs no package.
        return select(self.entries(), query)
