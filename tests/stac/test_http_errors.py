"""Catalog URLs that fail: one clear line and a non-zero exit, never a traceback; transient failures are retried.

The servers here are real HTTP servers on loopback (``http.server`` threads) whose answers each test scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from treemap.stac import Query
from treemap.stac.search import ApiCatalog

import services

DATA = Path(__file__).resolve().parents[1] / "data" / "stac-items"
ES_ITEMS = json.loads((DATA / "earth-search_sentinel-2-l2a.json").read_text())["features"]
FAST_RETRIES = {"TREEMAP_HTTP_BACKOFF": "0.05", "TREEMAP_HTTP_RETRIES": "3"}


def treemap(catalog: str, aoi: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "treemap", "search", "--aoi", str(aoi), "--catalog", catalog, "--year", "2025"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **FAST_RETRIES, **env})


@pytest.fixture(scope="module")
def aoi(tmp_path_factory):
    """Inside the footprint of the Earth Search items' tile 24MUV (served by the fake API below)."""
    path = tmp_path_factory.mktemp("aoi") / "aoi.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [[[-40.3, -4.72], [-40.2, -4.72], [-40.2, -4.64],
                                                                    [-40.3, -4.64], [-40.3, -4.72]]]}))
    return path


def one_clear_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("treemap: error: ")
    return lines[0]


class MiniStacApi:
    """The answers of a small STAC API (landing page, collections, POST /search) over the real Earth Search items."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __call__(self, handler):
        base = f"http://{handler.headers['Host']}"
        path = handler.path.split("?")[0].rstrip("/")
        links = [{"rel": "self", "href": base + "/", "type": "application/json"},
                 {"rel": "root", "href": base + "/", "type": "application/json"},
                 {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "POST"},
                 {"rel": "data", "href": base + "/collections", "type": "application/json"}]
        collection = {"type": "Collection", "id": "sentinel-2-l2a", "stac_version": "1.0.0", "description": "S2",
                      "license": "proprietary", "links": [],
                      "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}}
        if path == "":
            body = {"type": "Catalog", "id": "mini", "stac_version": "1.0.0", "description": "mini", "links": links,
                    "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                   "https://api.stacspec.org/v1.0.0/item-search",
                                   "https://api.stacspec.org/v1.0.0/item-search#query",
                                   "https://api.stacspec.org/v1.0.0/collections"]}
        elif path == "/collections/sentinel-2-l2a":
            body = collection
        elif path == "/collections":
            body = {"collections": [collection], "links": []}
        elif path.startswith("/collections/"):
            return 404, "application/json", json.dumps({"code": "NotFoundError", "description": "no collection"})
        elif path == "/search":
            body = {"type": "FeatureCollection", "features": self.items, "links": []}
        else:
            return 404, "application/json", "{}"
        return 200, "application/json", json.dumps(body)


def test_refused_connection(aoi):
    port = services.free_port()
    line = one_clear_line(treemap(f"http://127.0.0.1:{port}", aoi))
    assert line == f"treemap: error: cannot reach STAC API http://127.0.0.1:{port}: connection refused"


def test_server_answering_500(aoi, http_server):
    def respond(handler):
        return 500, "application/json", json.dumps({"code": "InternalError", "description": "database is down"})

    with http_server(respond) as srv:
        line = one_clear_line(treemap(srv.url, aoi))
    assert line == f"treemap: error: STAC API {srv.url} answered HTTP 500: database is down"
    assert len(srv.requests) == 1 + int(FAST_RETRIES["TREEMAP_HTTP_RETRIES"]), "a 500 is retried, then reported"


def test_server_answering_html_500(aoi, http_server):
    with http_server(lambda h: (500, "text/html", "<html>\n<body>Internal\nServer Error</body></html>")) as srv:
        line = one_clear_line(treemap(srv.url, aoi))
    assert line.startswith(f"treemap: error: STAC API {srv.url} answered HTTP 500: <html>")


def test_server_answering_invalid_json(aoi, http_server):
    with http_server(lambda h: (200, "application/json", "{\"type\": \"Catalog\", oops")) as srv:
        line = one_clear_line(treemap(srv.url, aoi))
    assert line == f"treemap: error: STAC API {srv.url} returned invalid JSON: is this a STAC API URL?"


def test_server_without_item_search(aoi, http_server):
    body = json.dumps({"type": "Catalog", "id": "static", "stac_version": "1.0.0", "description": "d", "links": []})
    with http_server(lambda h: (200, "application/json", body)) as srv:
        line = one_clear_line(treemap(srv.url, aoi))
    assert "without item search" in line


def test_missing_collection(aoi, http_server):
    with http_server(MiniStacApi(ES_ITEMS)) as srv:
        line = one_clear_line(treemap(f"{srv.url}/collections/sentinel-3-olci", aoi))
    assert line == (f"treemap: error: collection 'sentinel-3-olci' not found in STAC API {srv.url} "
                    "(it has: sentinel-2-l2a)")


def test_no_scenes(aoi, tmp_path, http_server):
    with http_server(MiniStacApi([])) as srv:
        line = one_clear_line(treemap(srv.url, aoi))
    assert line.startswith(f"treemap: error: no Sentinel-2 L2A scenes in {srv.url} for the AOI")


class FailFirst:
    """503 for the first ``n`` requests, then the wrapped answers."""

    def __init__(self, n: int, then):
        self.left, self.then = n, then

    def __call__(self, handler):
        if self.left > 0:
            self.left -= 1
            return 503, "text/plain", "busy"
        return self.then(handler)


def test_transient_503s_are_retried(aoi, http_server):
    with http_server(FailFirst(2, MiniStacApi(ES_ITEMS))) as srv:
        proc = treemap(srv.url, aoi)
    assert proc.returncode == 0, proc.stderr
    ids = [line.split()[-1] for line in proc.stdout.splitlines()[1:]]
    assert ids == ["S2B_24MUV_20250731_0_L2A"]
    assert [m for m, _ in srv.requests[:3]] == ["GET"] * 3 and srv.requests[0] == srv.requests[2]


def test_persistent_503_gives_up_with_one_line(aoi, http_server):
    with http_server(FailFirst(1000, MiniStacApi(ES_ITEMS))) as srv:
        line = one_clear_line(treemap(srv.url, aoi))
    assert line == f"treemap: error: STAC API {srv.url} answered HTTP 503: busy"
    assert len(srv.requests) == 1 + int(FAST_RETRIES["TREEMAP_HTTP_RETRIES"])


def test_search_post_is_retried_too(http_server, monkeypatch):
    """The POST /search itself fails twice and is retried (a search has no side effects)."""
    api = MiniStacApi(ES_ITEMS)
    fails = {"left": 2}

    def respond(handler):
        if handler.command == "POST" and fails["left"]:
            fails["left"] -= 1
            return 502, "text/plain", "bad gateway"
        return api(handler)

    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)
    with http_server(respond) as srv:
        scenes = ApiCatalog(srv.url).search(Query((-40.3, -4.72, -40.2, -4.64), date(2025, 1, 1),
                                                  date(2025, 12, 31)))
    assert [s.id for s in scenes] == ["S2B_24MUV_20250731_0_L2A"]
    assert [m for m, _ in srv.requests].count("POST") == 3


# --- reads -----------------------------------------------------------------------------------------------------------

class FlakyFiles:
    """Serves files of a folder with byte ranges; answers 503 to the first ``n`` requests of each file."""

    def __init__(self, root: Path, n: int):
        self.root, self.n, self.seen = root, n, {}

    def __call__(self, handler):
        name = handler.path.split("?")[0].lstrip("/")
        self.seen[name] = self.seen.get(name, 0) + 1
        if self.seen[name] <= self.n:
            return 503, "text/plain", "busy"
        path = self.root / name
        if not path.is_file():
            return 404, "text/plain", "missing"
        data = path.read_bytes()
        rng = handler.headers.get("Range")
        if rng and rng.startswith("bytes="):
            lo, _, hi = rng[6:].split(",")[0].partition("-")
            lo, hi = int(lo), min(int(hi) if hi else len(data) - 1, len(data) - 1)
            handler.extra_headers = {"Content-Range": f"bytes {lo}-{hi}/{len(data)}", "Accept-Ranges": "bytes"}
            return 206, "image/tiff", data[lo:hi + 1]
        return 200, "image/tiff", data


def test_raster_reads_retry_transient_503s(tmp_path, http_server, monkeypatch):
    """Every COG answers 503 twice before serving it: GDAL's retries (treemap.io_env) still read exact pixels."""
    from test_adapters import _item_on_local_cogs, _source_pixels, _tile, _expected_10m, features
    from treemap.cube import TileCube
    from treemap.stac import BANDS
    from treemap.stac.scene import normalise_item

    pixels = _source_pixels(4)
    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "s", pixels)
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)
    flaky = FlakyFiles(tmp_path / "s", 2)
    with http_server(flaky) as srv:
        for asset in item["assets"].values():
            if asset["href"].startswith(str(tmp_path)):
                asset["href"] = f"{srv.url}/{Path(asset['href']).name}"
        cube = TileCube([normalise_item(item)], _tile())
        dn, _ = cube.load([0])
    assert cube.unreadable == []
    assert len(flaky.seen) == len(BANDS) + 1 and min(flaky.seen.values()) > 2, "each file: two 503s, then data"
    for b, band in enumerate(BANDS):
        np.testing.assert_array_equal(dn[0, b], _expected_10m(pixels, band), err_msg=band)
