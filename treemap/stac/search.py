"""Search for Sentinel-2 L2A scenes: a STAC API (pystac-client), a local static catalog, or an item file.

pystac-client cannot search a static catalog, so the local forms read the JSON themselves and filter by bbox,
datetime and cloud cover in-process. A STAC API is searched with retries and timeouts (:mod:`treemap.io_env`),
after checking that the collection exists, and pages are followed to the end. Every failure to reach or understand
a catalog is a one-line CatalogError.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, time, timezone, date
from pathlib import Path
from typing import Iterable, Protocol
from urllib.parse import urlparse

from treemap.errors import CatalogError
from treemap.stac.scene import ItemError, Scene, normalise_item, require_planetary_computer

log = logging.getLogger("treemap.stac")

#: Named public catalogs: STAC API root and the Sentinel-2 L2A collection.
NAMED_CATALOGS: dict[str, tuple[str, str]] = {
    "earth-search": ("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a"),
    "earth-search-c1": ("https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a"),
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


def date_window(start: date | None, end: date | None, default_year: int) -> tuple[date, date]:
    """Fill a missing end (or start) so the window spans one year; both missing: the whole ``default_year``.
    Same rule as ``treemap.run.resolve_dates``, without importing the model stack (``treemap search`` stays fast)."""
    from datetime import timedelta

    from treemap.errors import DateRangeError

    if start is None and end is None:
        return date(default_year, 1, 1), date(default_year, 12, 31)
    def shift(day: date, years: int) -> date:
        return day.replace(year=day.year + years, day=min(day.day, 28) if (day.month, day.day) == (2, 29) else day.day)

    if start is None:
        start = shift(end, -1) + timedelta(days=1)
    if end is None:
        end = shift(start, 1) - timedelta(days=1)
    if start > end:
        raise DateRangeError(f"--start {start.isoformat()} is after --end {end.isoformat()}")
    return start, end


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
        # Planetary Computer items in a local file are signed when read (TileCube), which raises the same
        # CatalogError if the planetary-computer package is missing; listing them needs no package.
        return sorted((s for s in self.scenes() if _keep(s, query)), key=lambda s: (s.datetime, s.id))


class ApiCatalog:
    """A STAC API searched through pystac-client, ``page_size`` items per request."""

    def __init__(self, url: str, collection: str = "sentinel-2-l2a", name: str | None = None, page_size: int = 100):
        self.url = url.rstrip("/") or url
        self.collection = collection
        self.name = name or url
        self.page_size = page_size

    def _fail(self, exc: BaseException) -> CatalogError:
        """One line for whatever went wrong talking to the API."""
        import requests
        from pystac_client.exceptions import APIError

        status = getattr(exc, "status_code", None)
        if isinstance(exc, APIError) and status:
            body = " ".join(str(exc).split())
            detail = _json_message(str(exc)) or (body[:160] + ("..." if len(body) > 160 else ""))
            return CatalogError(f"STAC API {self.url} answered HTTP {status}" + (f": {detail}" if detail else ""))
        text = str(exc)
        if isinstance(exc, (APIError, requests.RequestException, OSError)):
            lowered = text.lower()
            if "refused" in lowered:
                why = "connection refused"
            elif "timed out" in lowered or "timeout" in lowered:
                why = "timed out"
            elif "name or service not known" in lowered or "failed to resolve" in lowered \
                    or "nodename nor servname" in lowered:
                why = "unknown host"
            elif "max retries exceeded" in lowered:
                why = "no answer after retries"
            else:
                why = (text.splitlines() or [type(exc).__name__])[0][:160]
            return CatalogError(f"cannot reach STAC API {self.url}: {why}")
        if isinstance(exc, ValueError) and "json" in (type(exc).__name__ + text).lower():
            return CatalogError(f"STAC API {self.url} returned invalid JSON: is this a STAC API URL?")
        first = (text.splitlines() or [""])[0][:160]
        return CatalogError(f"STAC API {self.url} returned something that is not a STAC API answer "
                            f"({type(exc).__name__}{': ' + first if first else ''})")

    def _client(self):
        import pystac_client

        from treemap.io_env import stac_api_io

        client = pystac_client.Client.open(self.url, stac_io=stac_api_io())
        if not client.conforms_to("ITEM_SEARCH"):
            raise CatalogError(f"{self.url} is a STAC catalog without item search; give a STAC API URL")
        return client

    def _check_collection(self, client) -> None:
        if client.get_collection(self.collection) is not None:
            return
        try:
            known = sorted(c.id for c in client.get_collections())
        except Exception:  # noqa: BLE001 - the listing only decorates the message
            known = []
        hint = ""
        if known:
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            hint = f" (it has: {shown})"
        raise CatalogError(f"collection {self.collection!r} not found in STAC API {self.url}{hint}")

    def search(self, query: Query) -> list[Scene]:
        if _is_planetary_computer(self.url):
            require_planetary_computer()  # fail before searching (and before any model is loaded)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                items = self._search(query)
            finally:
                for w in caught:  # pystac-client's notes on server conformance: not for the user's terminal
                    log.debug("pystac-client: %s", w.message)
        scenes = sorted((s for s in _normalise_all(items) if _keep(s, query)), key=lambda s: (s.datetime, s.id))
        log.debug("%d items from %s", len(items), self.url)
        return scenes

    def _search(self, query: Query) -> list[tuple[dict, None]]:
        from pystac_client.conformance import ConformanceClasses

        try:
            client = self._client()
            self._check_collection(client)
            cloud = None
            if query.max_cloud < 100:
                if client.conforms_to(ConformanceClasses.QUERY):
                    cloud = {"query": {"eo:cloud_cover": {"lte": query.max_cloud}}}
                elif client.conforms_to(ConformanceClasses.FILTER):
                    cloud = {"filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, query.max_cloud]},
                             "filter_lang": "cql2-json"}
            search = client.search(
                collections=[self.collection],
                bbox=list(query.bbox),
                datetime=[query.start_dt, query.end_dt],
                limit=self.page_size,
                **(cloud or {}),
            )
            return [(item, None) for item in search.items_as_dicts()]
        except CatalogError:
            raise
        except Exception as exc:  # noqa: BLE001 - pystac-client raises many kinds; each becomes one line
            raise self._fail(exc) from None


def _is_planetary_computer(url: str) -> bool:
    return (urlparse(url).hostname or "").endswith("planetarycomputer.microsoft.com")


def _json_message(body: str) -> str | None:
    """The ``description``/``detail``/``message`` of a JSON error body, if it is one."""
    try:
        doc = json.loads(body)
    except (ValueError, TypeError):
        return None
    if isinstance(doc, dict):
        for key in ("description", "detail", "message", "code"):
            if isinstance(doc.get(key), str) and doc[key].strip():
                return " ".join(doc[key].split())[:160]
    return None


def open_catalog(spec: str) -> Catalog:
    """Resolve ``--catalog``: a name (demo, earth-search, earth-search-c1, planetary-computer, cdse), a STAC API URL
    (its ``sentinel-2-l2a`` collection, or the collection named by a ``.../collections/ID`` URL), or a local static
    catalog (folder or catalog.json) or item file (FeatureCollection JSON)."""
    if spec == "demo":
        from treemap.demo import ensure_demo_world

        return LocalCatalog(ensure_demo_world().catalog, name="demo")
    if spec in NAMED_CATALOGS:
        url, collection = NAMED_CATALOGS[spec]
        return ApiCatalog(url, collection, name=spec)
    parsed = urlparse(spec)
    if parsed.scheme in ("http", "https"):
        root, sep, rest = spec.partition("/collections/")
        collection = rest.strip("/")
        if sep and collection and "/" not in collection:
            return ApiCatalog(root, collection, name=spec)
        return ApiCatalog(spec, name=spec)
    if parsed.scheme == "file":
        spec = parsed.path
    path = Path(spec)
    if path.is_dir() and (path / "catalog.json").exists():
        path = path / "catalog.json"
    if not path.exists():
        known = ", ".join(["demo", *NAMED_CATALOGS])
        raise CatalogError(f"unknown catalog {spec!r}: not a name ({known}), a URL, or an existing file")
    return LocalCatalog(path)


def scene_table(scenes: list[Scene]) -> list[str]:
    """Lines of the `treemap search` table: one header, then one row per scene."""
    rows = [("datetime (UTC)", "tile", "cloud %", "EPSG", "baseline", "offset", "id")]
    for s in scenes:
        rows.append((f"{s.datetime:%Y-%m-%d %H:%M:%S}", s.mgrs_tile or "-",
                     "-" if s.cloud_cover is None else f"{s.cloud_cover:.1f}", str(s.epsg),
                     s.processing_baseline or "-", f"{s.offset:+g}", s.id))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    right = {2, 5}
    return ["  ".join([(c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))]
                      + [r[-1]]) for r in rows]
