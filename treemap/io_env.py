"""Network I/O settings: retries with backoff and bounded timeouts for STAC searches (requests/urllib3) and for
raster reads (GDAL's HTTP options, handed to stackstac), and the policy for assets that stay unreadable.

Settings come from the environment, read when a search or a cube is set up:

==============================  =======  ==========================================================================
variable                        default  meaning
==============================  =======  ==========================================================================
``TREEMAP_HTTP_RETRIES``        5        retries of one request after a connection error, a timeout, or an
                                         HTTP 429 / 502 / 503 / 504 answer
``TREEMAP_HTTP_BACKOFF``        1.0      seconds before the first retry; each further retry waits about twice as
                                         long (capped at 30 s)
``TREEMAP_HTTP_TIMEOUT``        60       seconds one request may wait for an answer
``TREEMAP_HTTP_CONNECT_TIMEOUT`` 10      seconds to open a connection
==============================  =======  ==========================================================================

A raster asset that still cannot be read after GDAL's retries (404, a broken file, a server that stays down) is read
as nodata: :class:`SkippingReader` logs a WARNING naming it, and records it (:func:`unreadable_assets`), so a run over
thousands of assets does not crash on one bad file.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger("treemap.io")

#: HTTP answers that are worth retrying: rate limiting and the gateway/unavailable family. A plain 500 is not
#: retried: servers answer it for requests that will fail again.
RETRY_STATUS: tuple[int, ...] = (429, 502, 503, 504)
#: File extensions GDAL may expect on a remote server (saves a directory listing per open).
RASTER_EXTENSIONS = ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2"


@dataclass(frozen=True)
class HttpSettings:
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    connect_timeout: float = 10.0

    @classmethod
    def from_env(cls) -> "HttpSettings":
        def number(name: str, default: float, kind=float):
            raw = os.environ.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                log.warning("ignoring %s=%r: not a number", name, raw)
                return default
            return max(value, 0)

        return cls(
            retries=number("TREEMAP_HTTP_RETRIES", cls.retries, int),
            backoff=number("TREEMAP_HTTP_BACKOFF", cls.backoff),
            timeout=number("TREEMAP_HTTP_TIMEOUT", cls.timeout) or cls.timeout,
            connect_timeout=number("TREEMAP_HTTP_CONNECT_TIMEOUT", cls.connect_timeout) or cls.connect_timeout,
        )


# --- searches --------------------------------------------------------------------------------------------------------

def search_retry(settings: HttpSettings | None = None):
    """A urllib3 ``Retry`` for STAC API requests, POST searches included (a search has no side effects)."""
    from urllib3.util.retry import Retry

    s = settings or HttpSettings.from_env()
    return Retry(
        total=s.retries, connect=s.retries, read=s.retries, status=s.retries, other=0,
        backoff_factor=s.backoff / 2 if s.backoff else 0,  # urllib3 waits factor * 2**(n-1): first retry after factor*1
        backoff_max=30,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,  # after the last retry, hand back the answer so its status can be reported
    )


def stac_api_io(settings: HttpSettings | None = None, headers: dict[str, str] | None = None):
    """A pystac-client ``StacApiIO`` with retries and timeouts."""
    from pystac_client.stac_api_io import StacApiIO

    s = settings or HttpSettings.from_env()
    return StacApiIO(headers=headers, timeout=(s.connect_timeout, s.timeout), max_retries=search_retry(s))


# --- reads -----------------------------------------------------------------------------------------------------------

def gdal_config(settings: HttpSettings | None = None) -> dict[str, str]:
    """GDAL configuration options for reading COGs over HTTP(S)."""
    s = settings or HttpSettings.from_env()
    return {
        "GDAL_HTTP_MAX_RETRY": str(s.retries),
        "GDAL_HTTP_RETRY_DELAY": f"{max(s.backoff, 0.1):g}",  # GDAL doubles it (with jitter) at each retry
        "GDAL_HTTP_RETRY_CODES": ",".join(str(c) for c in RETRY_STATUS),  # GDAL >= 3.10; ignored before
        "GDAL_HTTP_TIMEOUT": str(max(int(round(s.timeout)), 1)),
        "GDAL_HTTP_CONNECTTIMEOUT": str(max(int(round(s.connect_timeout)), 1)),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": RASTER_EXTENSIONS,
        "GDAL_HTTP_MULTIRANGE": "YES",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }


def stackstac_gdal_env(settings: HttpSettings | None = None):
    """stackstac's default GDAL environment with :func:`gdal_config` applied to every open and read."""
    import stackstac

    return stackstac.DEFAULT_GDAL_ENV.updated(always=gdal_config(settings))


def rasterio_env(settings: HttpSettings | None = None):
    """A ``rasterio.Env`` with :func:`gdal_config` (for reads outside stackstac)."""
    import rasterio

    return rasterio.Env(**gdal_config(settings))


# --- unreadable assets -----------------------------------------------------------------------------------------------

_unreadable: dict[str, str] = {}
_unreadable_lock = threading.Lock()


def record_unreadable(url: str, reason: str) -> bool:
    """Record an asset that could not be read; True the first time this URL is recorded."""
    with _unreadable_lock:
        if url in _unreadable:
            return False
        _unreadable[url] = reason
        return True


def unreadable_assets() -> dict[str, str]:
    """URL -> reason of every asset this process read as nodata because it could not be read."""
    with _unreadable_lock:
        return dict(_unreadable)


def clear_unreadable() -> None:
    with _unreadable_lock:
        _unreadable.clear()


def is_read_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is GDAL/rasterio failing to read a file (as opposed to a bug or a bad request)."""
    if exc is None:
        return False
    from rasterio.errors import RasterioError

    try:
        from rasterio._err import CPLE_BaseError
    except ImportError:  # pragma: no cover - rasterio internals moved
        CPLE_BaseError = RasterioError  # noqa: N806
    return isinstance(exc, (RasterioError, CPLE_BaseError, OSError))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


@functools.lru_cache(maxsize=None)
def skipping_reader():
    """stackstac ``reader=`` class: stackstac's own reader, except that a file GDAL cannot open or read is read as
    nodata and recorded (:func:`unreadable_assets`) instead of failing the whole computation."""
    from stackstac.nodata_reader import NodataReader, nodata_for_window
    from stackstac.rio_reader import AutoParallelRioReader

    class SkippingReader(AutoParallelRioReader):
        def _skip(self, exc: RuntimeError) -> bool:
            cause = exc.__cause__  # stackstac wraps GDAL's error in a RuntimeError naming the URL
            if not is_read_error(cause):
                return False
            if record_unreadable(self.url, _short(cause)):
                log.debug("cannot read %s: %s", self.url, _short(cause))
            return True

        def _open(self):
            try:
                return super()._open()
            except RuntimeError as exc:
                if self._skip(exc):
                    return NodataReader(dtype=self.dtype, fill_value=self.fill_value)
                raise

        def read(self, window, **kwargs):
            try:
                return super().read(window, **kwargs)
            except RuntimeError as exc:
                if self._skip(exc):
                    return nodata_for_window(window, self.fill_value, self.dtype)
                raise

    return SkippingReader
