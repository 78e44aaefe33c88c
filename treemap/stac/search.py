"""Search for Sentinel-2 L2A scenes: a STAC API (pystac-client), a local static catalog, or an item file.

A STAC API is searched with retries and timeouts (:mod:`treemap.io_env`), after checking that the collection exists,
and pages are followed to the end; the query's AOI geometry, when it has one, is sent as ``intersects`` (else its
bbox). Local catalogs are read with pystac and filtered in-process (:mod:`treemap.stac.local`). Both apply the same
filter to what they get (:func:`treemap.stac.query.select`: footprint, date, cloud cover). Every failure to reach or
understand a catalog is a one-line CatalogError.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from urllib.parse import urlparse

import shapely

from treemap.errors import CatalogError
from treemap.stac.local import LocalCatalog
from treemap.stac.query import Catalog, Query, date_window, normalise_all, select
from treemap.stac.scene import Scene, require_planetary_computer

__all__ = ["NAMED_CATALOGS", "ApiCatalog", "Catalog", "LocalCatalog", "Query", "date_window", "open_catalog",
           "scene_table"]

log = logging.getLogger("treemap.stac")

#: Named public catalogs: STAC API root and the Sentinel-2 L2A collection.
NAMED_CATALOGS: dict[str, tuple[str, str]] = {
    "earth-search": ("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a"),
    "earth-search-c1": ("https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a"),
    "planetary-computer": ("https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a"),
    "cdse": ("https://stac.dataspace.copernicus.eu/v1", "sentinel-2-l2a"),
}


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
        scenes = select(normalise_all(items), query)
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
            where = {"bbox": list(query.bbox)} if query.geometry is None else {"intersects": _api_geometry(query)}
            search = client.search(
                collections=[self.collection],
                datetime=[query.start_dt, query.end_dt],
                limit=self.page_size,
                **where,
                **(cloud or {}),
            )
            return [(item, None) for item in search.items_as_dicts()]
        except CatalogError:
            raise
        except Exception as exc:  # noqa: BLE001 - pystac-client raises many kinds; each becomes one line
            raise self._fail(exc) from None


#: An AOI with more vertices is sent to an API as its convex hull (request size); the exact AOI filters the answer.
MAX_API_VERTICES = 500


def _api_geometry(query: Query) -> dict:
    geometry = query.geometry
    if shapely.get_num_coordinates(geometry) > MAX_API_VERTICES:
        geometry = geometry.convex_hull
    return geometry.__geo_interface__


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
