"""Search for Sentinel-2 L2A scenes: a STAC API (pystac-client), a local static catalog, or an item file.

pystac-client cannot search a static catalog, so the local forms read the JSON themselves and filter by bbox,
datetime and cloud cover in-process. Every failure to reach or understand a catalog is a CatalogError.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, time, timezone, date
from pathlib import Path
from typing import Iterable, Protocol
from urllib.parse import urlparse

from treemap.errors import CatalogError
from treemap.stac.scene import ItemError, Scene, normalise_item

log = logging.getLogger("treemap.stac")

#: Named public catalogs: STAC API root and the Sentinel-2 L2A collection.
NAMED_CATALOGS: dict[str, tuple[str, str]] = {
    "earth-search": ("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a"),
    "planetary-computer": ("https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a"),
    "cdse": ("https://stac.dataspace.copernicus.eu/v1", "sentinel-2-l2a"),
}


@dataclass(frozen=True)
class Query:
    """What to search: a lon/lat bbox, an inclusive date range and a cloud-cover ceiling (percent)."""

    bbox: tuple[float, float, float, float]
    start: date
    end: date
    max_cloud: float = 100.0

    @property
    def start_dt(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=timezone.utc)

    @property
    def end_dt(self) -> datetime:
        return datetime.combine(self.end, time.max, tzinfo=timezone.utc)


class Catalog(Protocol):
    name: str

    def search(self, query: Query) -> list[Scene]: ...


def _bbox_intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _keep(scene: Scene, query: Query) -> bool:
    if not query.start_dt <= scene.datetime <= query.end_dt:
        return False
    if scene.cloud_cover is not None and scene.cloud_cover > query.max_cloud:
        return False
    return _bbox_intersects(scene.bbox, query.bbox)


def _normalise_all(items: Iterable[tuple[dict, str | None]]) -> list[Scene]:
    scenes = []
    for item, base in items:
        try:
            scenes.append(normalise_item(item, base_href=base))
        except (ItemError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping item %s: %s", item.get("id", "?") if isinstance(item, dict) else "?", exc)
    return scenes


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"catalog file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


class LocalCatalog:
    """A static STAC catalog (``catalog.json``) or an item file (FeatureCollection / ItemCollection JSON)."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path).resolve()
        self.name = name or str(path)
        self._scenes: list[Scene] | None = None

    def _walk(self, path: Path, seen: set[Path]) -> Iterable[tuple[dict, str]]:
        if path in seen:
            return
        seen.add(path)
        doc = _read_json(path)
        if not isinstance(doc, dict):
            raise CatalogError(f"{path}: not a STAC document")
        base = path.as_uri()
        kind = doc.get("type")
        if kind in ("FeatureCollection",) or "features" in doc:
            for feature in doc.get("features") or []:
                yield feature, base
            return
        if kind == "Feature":
            yield doc, base
            return
        if kind not in ("Catalog", "Collection"):
            raise CatalogError(f"{path}: not a STAC catalog, collection or item file (type={kind!r})")
        for link in doc.get("links", []):
            rel, href = link.get("rel"), link.get("href")
            if rel not in ("child", "item") or not href:
                continue
            target = (path.parent / href).resolve() if not urlparse(href).scheme else Path(urlparse(href).path)
            if rel == "child":
                yield from self._walk(target, seen)
            else:
                item = _read_json(target)
                if isinstance(item, dict):
                    yield item, target.as_uri()

    def scenes(self) -> list[Scene]:
        if self._scenes is None:
            self._scenes = _normalise_all(self._walk(self.path, set()))
            if not self._scenes:
                raise CatalogError(f"{self.path}: no Sentinel-2 L2A items in the catalog")
        return self._scenes

    def search(self, query: Query) -> list[Scene]:
        return sorted((s for s in self.scenes() if _keep(s, query)), key=lambda s: (s.datetime, s.id))


class ApiCatalog:
    """A STAC API searched through pystac-client."""

    def __init__(self, url: str, collection: str = "sentinel-2-l2a", name: str | None = None):
        self.url = url
        self.collection = collection
        self.name = name or url

    def search(self, query: Query) -> list[Scene]:
        import pystac_client
        import requests
        from pystac_client.exceptions import APIError

        try:
            client = pystac_client.Client.open(self.url)
            search = client.search(
                collections=[self.collection],
                bbox=list(query.bbox),
                datetime=[query.start_dt, query.end_dt],
                query={"eo:cloud_cover": {"lte": query.max_cloud}} if query.max_cloud < 100 else None,
                limit=100,
            )
            items = [(item, None) for item in search.items_as_dicts()]
        except APIError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CatalogError(f"STAC API {self.url} answered an error: {first[:200]}") from None
        except requests.RequestException as exc:
            raise CatalogError(f"cannot reach STAC API {self.url}: {type(exc).__name__}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"STAC API {self.url} returned something that is not STAC JSON ({exc})") from None
        return sorted((s for s in _normalise_all(items) if _keep(s, query)), key=lambda s: (s.datetime, s.id))


def open_catalog(spec: str) -> Catalog:
    """Resolve ``--catalog``: a name (demo, earth-search, planetary-computer, cdse), a STAC API URL, or a local file."""
    if spec == "demo":
        from treemap.demo import ensure_demo_world

        return LocalCatalog(ensure_demo_world().catalog, name="demo")
    if spec in NAMED_CATALOGS:
        url, collection = NAMED_CATALOGS[spec]
        return ApiCatalog(url, collection, name=spec)
    parsed = urlparse(spec)
    if parsed.scheme in ("http", "https"):
        return ApiCatalog(spec)
    if parsed.scheme == "file":
        spec = parsed.path
    path = Path(spec)
    if path.is_dir() and (path / "catalog.json").exists():
        path = path / "catalog.json"
    if not path.exists():
        known = ", ".join(["demo", *NAMED_CATALOGS])
        raise CatalogError(f"unknown catalog {spec!r}: not a name ({known}), a URL, or an existing file")
    return LocalCatalog(path)
