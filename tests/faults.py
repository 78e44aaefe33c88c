"""A fault-injecting HTTP reverse proxy for tests: a bad network between treemap and a healthy file server.

``FaultyProxy(upstream)`` listens on a free loopback port and forwards GET and HEAD requests (with their ``Range``
header; POST too, with its body, e.g. a STAC API search) to ``upstream`` (an ``http://host:port`` URL, e.g.
:class:`tests.stac.services.Nginx`) with the client's ``Host`` header, and passes the answer back with its status
(200, 206, 404, 416 ...) and its headers (``Content-Range``, ``Content-Length``, ``Accept-Ranges``,
``Content-Type``, ``Last-Modified``, ``ETag`` ...; hop-by-hop headers are dropped). The proxy speaks HTTP/1.1 with
keep-alive, like a real server, so a client reuses its connections.

A share ``rate`` of the requests is answered with a fault instead; ``mix`` weighs the fault kinds:

``500``       an HTTP 500 answer (small text body), the connection kept open
``503``       an HTTP 503 answer, the connection kept open
``reset``     the connection is reset (TCP RST: ``SO_LINGER`` 0, then close) before any answer
``truncate``  the real status and headers (with the full ``Content-Length``), then half of the body, then the
              connection is closed (a HEAD answer has no body to cut: a HEAD drawn for this fault passes)
``delay``     the real answer, after ``delay_s`` seconds (5 s by default: far below GDAL's 60 s timeout)

Which request gets which fault is decided by a ``random.Random`` seeded with ``seed`` *and the request's identity*
(method, path, ``Range``, and how many times the proxy has seen that same request): the choice of one request does
not depend on which other requests happened to arrive before it in other threads, so a run of a multi-threaded
client meets the same faults each time. Counters (``proxy.counts``, under a lock) say how many faults of each kind
were injected, and how many requests were passed through or answered 404 for a permanent failure.

Paths ending with one of ``missing`` (a set of suffixes, e.g. ``"/S2A_..._L2A/B04.tif"``) always answer 404, like a
file that is gone for good; ``exempt`` suffixes (e.g. ``".json"``) are never faulted.

Used as a context manager (``with FaultyProxy(url, seed=1, rate=0.2) as proxy: proxy.url``); ``configure()``
changes rate, mix and the missing set of a running proxy (same URL, so the same item file serves a healthy and a
faulty run).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULT_KINDS: tuple[str, ...] = ("500", "503", "reset", "truncate", "delay")
#: The default mix: 20 % of requests faulted, 2 % of all requests delayed (10 % of the faults).
DEFAULT_MIX: dict[str, float] = {"500": 0.25, "503": 0.25, "reset": 0.2, "truncate": 0.2, "delay": 0.1}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A connection the proxy reset or cut on purpose (or the client dropped) is no error worth printing."""


class FaultyProxy:
    def __init__(self, upstream: str, *, seed: int = 0, rate: float = 0.0, mix: dict[str, float] | None = None,
                 delay_s: float = 5.0, missing: set[str] | frozenset[str] = frozenset(),
                 exempt: tuple[str, ...] = (), max_faults: dict[str, int] | None = None):
        parsed = urlparse(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, not {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.seed = seed
        self.delay_s = delay_s
        self.exempt = tuple(exempt)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._seen: Counter[tuple] = Counter()
        self.log: list[tuple[str, str, str | None, str]] = []  # (method, path, range, outcome) of every request
        self.configure(rate=rate, mix=mix, missing=missing, max_faults=max_faults)
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="faulty-proxy", daemon=True)

    # --- settings ----------------------------------------------------------------------------------------------------

    def configure(self, *, rate: float | None = None, mix: dict[str, float] | None = None,
                  missing: set[str] | frozenset[str] | None = None, max_faults: dict[str, int] | None = None,
                  seed: int | None = None) -> None:
        """Change the fault settings of the running proxy (None keeps a setting); resets nothing else."""
        with self.lock:
            if rate is not None:
                if not 0.0 <= rate <= 1.0:
                    raise ValueError("rate must be within 0..1")
                self.rate = rate
            if mix is not None or not hasattr(self, "mix"):
                mix = dict(DEFAULT_MIX if mix is None else mix)
                unknown = set(mix) - set(FAULT_KINDS)
                if unknown or not mix or sum(mix.values()) <= 0:
                    raise ValueError(f"mix must weigh some of {FAULT_KINDS}, not {mix!r}")
                self.mix = mix
            if missing is not None:
                self.missing = frozenset(missing)
            if max_faults is not None or not hasattr(self, "max_faults"):
                self.max_faults = dict(max_faults or {})
            if seed is not None:
                self.seed = seed

    def reset_counts(self) -> None:
        with self.lock:
            self.counts.clear()
            self._seen.clear()
            self.log.clear()

    def faults(self) -> dict[str, int]:
        """Injected faults per kind (every kind of FAULT_KINDS, zeros included)."""
        with self.lock:
            return {kind: self.counts[kind] for kind in FAULT_KINDS}

    # --- decisions ---------------------------------------------------------------------------------------------------

    def _decide(self, method: str, path: str, rng_header: str | None) -> str:
        """The outcome of one request, counted and logged: "missing", "pass" or a fault kind (exempt paths pass)."""
        bare = path.split("?", 1)[0]
        with self.lock:
            if any(bare.endswith(s) for s in self.missing):
                outcome = "missing"
            elif any(bare.endswith(s) for s in self.exempt) or self.rate <= 0:
                outcome = "pass"
            else:
                key = (method, bare, rng_header)
                self._seen[key] += 1
                rng = random.Random(f"{self.seed}|{method}|{bare}|{rng_header}|{self._seen[key]}")
                outcome = "pass"
                if rng.random() < self.rate:
                    kinds = list(self.mix)
                    kind = rng.choices(kinds, weights=[self.mix[k] for k in kinds])[0]
                    limit = self.max_faults.get(kind)
                    if (limit is None or self.counts[kind] < limit) and not (kind == "truncate" and method == "HEAD"):
                        outcome = kind
            self.counts[outcome] += 1
            self.log.append((method, bare, rng_header, outcome))
            return outcome

    # --- the server --------------------------------------------------------------------------------------------------

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "faulty-proxy"

            def log_message(self, *args):  # keep test output clean
                pass

            def _plain(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _reset(self) -> None:
                """Abort the connection with a TCP RST (no answer at all)."""
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                self.close_connection = True
                try:
                    self.connection.close()
                except OSError:
                    pass

            def _upstream(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    # the client's Host stays (a server that builds links from it links back to the proxy)
                    headers.setdefault("Host", f"{proxy.upstream_host}:{proxy.upstream_port}")
                    headers["Connection"] = "close"
                    conn.request(self.command, self.path, body=self.request_body, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()  # HEAD: b""
                    return resp.status, resp.reason, resp.getheaders(), body
                finally:
                    conn.close()

            def _answer(self) -> None:
                if self.command == "POST" and not (self.headers.get("Content-Length") or "").isdigit():
                    self.close_connection = True
                    return self._plain(411, "a POST needs a Content-Length here")
                length = int(self.headers.get("Content-Length") or 0)
                self.request_body = self.rfile.read(length) if length else None  # read even when faulted
                outcome = proxy._decide(self.command, self.path, self.headers.get("Range"))
                if outcome == "missing":
                    return self._plain(404, "permanently missing (fault injection)")
                if outcome == "500":
                    return self._plain(500, "internal server error (fault injection)")
                if outcome == "503":
                    return self._plain(503, "service unavailable (fault injection)")
                if outcome == "reset":
                    return self._reset()
                try:
                    status, reason, headers, body = self._upstream()
                except OSError as exc:
                    return self._plain(502, f"upstream failed: {exc}")
                if outcome == "delay":
                    time.sleep(proxy.delay_s)
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP and key.lower() not in ("server", "date"):
                        self.send_header(key, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if outcome == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _answer

        return Handler

    def start(self) -> "FaultyProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def __enter__(self) -> "FaultyProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
