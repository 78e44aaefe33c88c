"""Fixtures of the STAC tests: real servers on loopback.

- ``stac_server``: PostgreSQL + PostGIS with pgstac, stac-fastapi-pgstac, and nginx serving the small demo world; the
  world's items are loaded through pypgstac with hrefs on nginx. A second collection, ``broken``, holds a few of the
  same scenes where one band of one scene points at a file nginx answers 404 for.
- ``http_server``: a tiny threaded ``http.server`` whose answers a test scripts (500s, invalid JSON, 503-then-OK).

The service fixtures skip when the binaries are not installed (``bash scripts/test-services.sh install``), unless
``TREEMAP_REQUIRE_SERVICES=1`` (CI), where a missing binary fails the tests instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import services  # noqa: E402

COLLECTION = "sentinel-2-l2a"
BROKEN = "broken"


def _services_or_skip(*checks) -> None:
    try:
        for check in checks:
            check()
    except services.ServicesMissing as exc:
        if os.environ.get("TREEMAP_REQUIRE_SERVICES") == "1":
            pytest.fail(f"TREEMAP_REQUIRE_SERVICES=1 but {exc}")
        pytest.skip(str(exc))


@dataclass
class StacServer:
    url: str  # STAC API root
    files: "services.Nginx"
    world: object
    items: list[dict]  # what the server holds in COLLECTION
    broken_items: list[dict]  # what it holds in BROKEN
    broken_asset: tuple[str, str]  # (scene id, band) of the asset nginx answers 404 for
    collection: str = COLLECTION
    broken_collection: str = BROKEN


@pytest.fixture(scope="session")
def stac_server(small_world):
    _services_or_skip(services.check_postgres, services.check_stac_api, services.check_nginx)
    web = pg = api = None
    try:
        web = services.Nginx(small_world.root).start()
        pg = services.Postgres().start()
        api = services.PgStac(pg).migrate()
        items = services.served_items(small_world.root, web.url, COLLECTION)
        broken = _broken_items(items)
        collection = services.world_collection(small_world.root, COLLECTION)
        api.load([collection, dict(collection, id=BROKEN)], items + broken[0])
        api.start()
        yield StacServer(api.url, web, small_world, items, broken[0], broken[1])
    finally:
        for service in (api, pg, web):
            if service is not None:
                service.stop()


def _broken_items(items: list[dict]) -> tuple[list[dict], tuple[str, str]]:
    """The first 12 scenes of the world again, in collection BROKEN; the red band of the first clear one is missing."""
    chosen = [json.loads(json.dumps(i)) for i in sorted(items, key=lambda i: i["properties"]["datetime"])[:12]]
    for item in chosen:
        item["collection"] = BROKEN
    victim = min(chosen, key=lambda i: i["properties"]["eo:cloud_cover"])
    victim["assets"]["red"]["href"] = victim["assets"]["red"]["href"].replace("/B04.tif", "/B04-missing.tif")
    return chosen, (victim["id"], "B04")


# --- a scripted HTTP server -------------------------------------------------------------------------------------------

class ScriptedServer:
    """Answers each request with ``respond(handler) -> (status, content_type, body)`` (plus any headers the
    callback puts in ``handler.extra_headers``); records (method, path) of every request."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.requests.append((self.command, self.path))
                self.extra_headers = {}
                status, ctype, body = outer.respond(self)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in self.extra_headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    """Factory: ``with http_server(respond) as srv: ... srv.url``."""
    return ScriptedServer
