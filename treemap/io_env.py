"""Network I/O settings: retries with backoff and bounded timeouts for STAC searches (requests/urllib3) and for
raster reads (GDAL's HTTP options, handed to stackstac), and the policy for assets that stay unreadable.

Settings come from the environment, read when a search or a cube is set up:

==============================  =======  ==========================================================================
variable                        default  meaning
==============================  =======  ==========================================================================
``TREEMAP_HTTP_RETRIES``        5        retries of one request after a connection error, a timeout, or an
                                         HTTP 429 / 500 / 502 / 503 / 504 answer
``TREEMAP_HTTP_BACKOFF``        1.0      seconds before the first retry; each further retry waits about twice as
                                         long (capped at 30 s)
``TREEMAP_HTTP_TIMEOUT``        60       seconds one request may wait for an answer
``TREEMAP_HTTP_CONNECT_TIMEOUT`` 10      seconds to open a connection
==============================  =======  ==========================================================================

A raster asset that still cannot be read after GDAL's retries (404, a broken file, a server that stays down) is read
as nodata: :class:`SkippingReader`, a reader for stackstac's public ``Reader`` protocol, records it
(:func:`unreadable_assets`) and ``treemap.cube.TileCube`` logs a WARNING naming its scene and band, so a run over
thousands of assets does not crash on one bad file.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger("treemap.io")

#: HTTP answers that are worth retrying: rate limiting, and every server-side failure a busy or restarting server
#: gives (object stores and tile servers answer a plain 500 for transient faults too).
RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)
#: A tile with a larger fraction of its assets (scene x band files) unreadable fails instead of being written with
#: holes (``--max-unreadable``).
DEFAULT_MAX_UNREADABLE = 0.05
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
    """GDAL configuration options for reading COGs over HTTP(S): every setting treemap gives GDAL, in one place.

    * ``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``, ``GDAL_HTTP_RETRY_CODES``: GDAL's own retries of a failed
      request (``TREEMAP_HTTP_RETRIES``, ``TREEMAP_HTTP_BACKOFF``); 429 and 5xx answers are worth asking again.
    * ``GDAL_HTTP_TIMEOUT``, ``GDAL_HTTP_CONNECTTIMEOUT``: a stalled server fails the request instead of the run.
    * ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: without it, opening ``/vsicurl/.../B04.tif`` first lists the
      "directory" to look for sidecars (``.aux.xml``, ``.ovr``): an extra request per file that object stores answer
      slowly or with an error.
    * ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``: GDAL probes only files with raster extensions, never sidecars.
    * ``GDAL_HTTP_MULTIRANGE``, ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES``: the tiles of one window come in one request
      (ranges of neighbouring COG tiles merged) rather than one request per 512 px tile.
    * HTTP/2 multiplexing: GDAL's default ``GDAL_HTTP_VERSION`` (``2TLS``) already uses HTTP/2 over TLS when libcurl
      has it, so the requests of one host share a connection; left as it is (forcing 2 on cleartext HTTP would send
      ``Upgrade: h2c`` to servers that do not expect it).
    * Block cache: bounded by :func:`bound_block_cache` (``GDAL_CACHEMAX``, process-wide), not set here.
    """
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


#: GDAL's block cache in MB unless the user sets ``GDAL_CACHEMAX``: a tile reads each window of each file once, so
#: cached blocks are hardly ever hit again, while GDAL's default (5 % of the machine's memory) let a worker's memory
#: grow with the number of tiles it had read (measured: +75 MB after 4 tiles of 512 px on a 24 GB machine, and a
#: 128 GB GPU machine would allow 6.4 GB).
BLOCK_CACHE_MB = 128


def bound_block_cache() -> None:
    """Bound GDAL's block cache for this process and the workers it starts (``GDAL_CACHEMAX``, read by GDAL when
    the cache is first used, so this must run before the first read; a value the user set is kept)."""
    os.environ.setdefault("GDAL_CACHEMAX", str(BLOCK_CACHE_MB))


def stackstac_gdal_env(settings: HttpSettings | None = None):
    """stackstac's default GDAL environment with :func:`gdal_config` applied to every open and read."""
    import stackstac

    return stackstac.DEFAULT_GDAL_ENV.updated(always=gdal_config(settings))


def rasterio_env(settings: HttpSettings | None = None):
    """A ``rasterio.Env`` with :func:`gdal_config` (for reads outside stackstac)."""
    import rasterio

    return rasterio.Env(**gdal_config(settings))


# --- unreadable assets -----------------------------------------------------------------------------------------------

class UnreadableLog:
    """URL -> reason of assets read as nodata because they could not be read (thread-safe)."""

    def __init__(self) -> None:
        self._found: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, url: str, reason: str) -> bool:
        """Record an asset; True the first time this URL is recorded."""
        with self._lock:
            if url in self._found:
                return False
            self._found[url] = reason
            return True

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._found)

    def take(self) -> dict[str, str]:
        """Everything recorded so far, which is forgotten."""
        with self._lock:
            found, self._found = self._found, {}
            return found


#: Every asset this process could not read (a per-process view; each cube keeps its own log too).
_process_log = UnreadableLog()


def record_unreadable(url: str, reason: str) -> bool:
    """Record an asset that could not be read in the process-wide log; True the first time for this URL."""
    return _process_log.record(url, reason)


def unreadable_assets() -> dict[str, str]:
    """URL -> reason of every asset this process read as nodata because it could not be read."""
    return _process_log.snapshot()


def clear_unreadable() -> None:
    _process_log.take()


def uncached_env(url: str, gdal_env=None):
    """``gdal_env`` (stackstac's default when None) with GDAL's HTTP cache off for ``url``: GDAL remembers a remote
    file that failed to open as missing for the rest of the process, so a retry must bypass that memory."""
    if gdal_env is None:
        gdal_env = stackstac_gdal_env()
    if "://" not in url or url.startswith("file://"):
        return gdal_env
    return gdal_env.updated(always={"CPL_VSIL_CURL_NON_CACHED": url if url.startswith("/vsi") else f"/vsicurl/{url}"})


def is_read_error(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is GDAL/rasterio failing on a file: a rasterio exception
    (``rasterio.errors``, or one of the ``CPLE_*`` errors GDAL raises through rasterio) or an ``OSError``."""
    from rasterio.errors import RasterioError

    from treemap.errors import TreemapError

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, TreemapError):  # treemap's own errors are OSErrors too, but never a file's fault
            return False
        if isinstance(exc, (RasterioError, OSError)) or type(exc).__module__.split(".")[0] == "rasterio":
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def _short(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None:  # stackstac wraps GDAL's error in a RuntimeError naming the URL
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return (text[0] if text else type(cause).__name__)[:300]


def asset_fault(url: str, gdal_env=None) -> str | None:
    """Why the raster at ``url`` cannot be stacked (cannot be opened, more than one band, no CRS or no
    georeferencing), or None when it looks sound. Used to tell a broken file from a bug when reading it raised
    something other than a GDAL error (e.g. an ``AttributeError`` inside stackstac for a file without a CRS)."""
    import rasterio

    if gdal_env is None:
        import stackstac

        gdal_env = stackstac.DEFAULT_GDAL_ENV
    try:
        with gdal_env.open:
            with rasterio.open(url) as ds:
                if ds.count != 1:
                    return f"{ds.count} bands, not 1"
                if ds.crs is None:
                    return "no CRS"
                if ds.transform.is_identity:
                    return "no georeferencing"
    except Exception as exc:  # noqa: BLE001 - any failure to open is the file's fault
        return _short(exc)
    return None


class SkippingReader:
    """A stackstac ``Reader`` (``stackstac.stack(..., reader=SkippingReader)``) that reads like stackstac's own
    ``AutoParallelRioReader`` (through :class:`treemap.gridread.GridReader`, which reads assets on the tile's
    lattice without a warp and hands the rest to stackstac's reader), except that an asset that cannot be read is
    read as nodata and recorded (:func:`unreadable_assets`) instead of failing the whole computation.

    An exception from opening or reading the asset makes it unreadable when it is a GDAL/rasterio or OS error
    (:func:`is_read_error`), or, whatever its class, when :func:`asset_fault` then finds the file broken; anything
    else (a bug) propagates. An asset that fails before any of its reads succeeded is nodata for its later windows
    too, without trying again (GDAL has already retried); after a successful read, a failure affects its window only.

    Only stackstac's public reader interface is used (``read``, ``close``, ``__getstate__``); the pickled state is
    the wrapped reader's, so dask can ship readers to threads, processes and machines.
    """

    #: Where this reader class also records unreadable assets (see :meth:`reporting_to`).
    sink: UnreadableLog | None = None
    #: Whether an exception that is not a read error, from a file that reads sound when checked again, propagates
    #: (a bug). Not strict: it is recorded like a read error, for a later try to tell a passing fault from a bug.
    strict: bool = True

    @classmethod
    def reporting_to(cls, sink: UnreadableLog, strict: bool = True) -> type["SkippingReader"]:
        """A reader class that records the assets it cannot read in ``sink`` too, so one cube knows exactly which
        of its own assets failed while other cubes read the same files in other threads. (Such a class is for
        in-process schedulers; instances pickle as plain :class:`SkippingReader`.)"""
        return type(cls.__name__, (cls,), {"sink": sink, "strict": strict, "__module__": cls.__module__,
                                           "__reduce__": lambda self: (SkippingReader._from_state,
                                                                       (self.__getstate__(),))})

    @staticmethod
    def _from_state(state: dict) -> "SkippingReader":
        reader = SkippingReader.__new__(SkippingReader)
        reader.__setstate__(state)
        return reader

    def __init__(self, *, url: str, spec, resampling, dtype, fill_value, scale_offset, gdal_env=None,
                 errors_as_nodata: tuple = ()) -> None:
        from treemap.gridread import GridReader

        self.url = url
        self.dtype = dtype
        self.fill_value = fill_value
        self.gdal_env = gdal_env
        self._inner = GridReader(url=url, spec=spec, resampling=resampling, dtype=dtype, fill_value=fill_value,
                                 scale_offset=scale_offset, gdal_env=gdal_env, errors_as_nodata=errors_as_nodata)
        self._lock = threading.Lock()
        self._read_once = False
        self._failed: str | None = None

    def _nodata(self, window):
        import numpy as np

        return np.full((window.height, window.width), self.fill_value, self.dtype)

    def _give_up(self, exc: Exception) -> str:
        """The reason the asset is unreadable, recorded; re-raises ``exc`` when the file is not at fault."""
        reason = _short(exc) if is_read_error(exc) else asset_fault(self.url, self.gdal_env)
        if reason is None:  # the file reads sound now: a bug, or a fault that has passed (a truncated answer)
            if self.strict:
                raise exc
            reason = f"{_short(exc)} ({type(exc).__name__}; the file read sound when checked again)"
        if self.sink is not None:
            self.sink.record(self.url, reason)
        log.debug("cannot read %s: %s (%s)", self.url, reason, type(exc).__name__)
        if self.strict:  # a lenient reader's failures are provisional: a later try may read the file
            record_unreadable(self.url, reason)
        return reason

    def read(self, window, **kwargs):
        if not self._read_once:
            with self._lock:  # the first read opens the file: one thread tries, the others wait for its outcome
                if self._failed is None and not self._read_once:
                    try:
                        data = self._inner.read(window, **kwargs)
                    except Exception as exc:  # noqa: BLE001 - sorted by _give_up
                        self._failed = self._give_up(exc)
                        self._inner.close()
                        return self._nodata(window)
                    self._read_once = True
                    return data
        if self._failed is not None:
            return self._nodata(window)
        try:
            return self._inner.read(window, **kwargs)
        except Exception as exc:  # noqa: BLE001 - sorted by _give_up
            self._give_up(exc)
            return self._nodata(window)

    def close(self) -> None:
        self._inner.close()

    def __getstate__(self) -> dict:
        return self._inner.__getstate__()

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
