"""Writes that either land whole or fail loudly: temporary names, fsync, GDAL errors raised, rasters read back.

GDAL reports many write failures (a full disk, a vanished folder) through its error handler and carries on: a
dataset closes "successfully" over a file truncated at the first block that did not fit. So every raster treemap
writes goes through three checks before it may be renamed into place:

1. :func:`gdal_errors` turns every GDAL error signalled while the block runs (in this thread) into a
   :class:`~treemap.errors.WriteError`, instead of a line on stderr;
2. :func:`sync_file` flushes the closed file to stable storage (``fsync``), which is where NFS and quota-limited
   filesystems report ``ENOSPC``/``EDQUOT``;
3. :func:`verify_raster` re-opens the file and decodes its first and last block at every resolution level (the
   last block of a truncated file is the one that is missing), or compares the whole decoded raster with what was
   meant to be written.

Python-side files (JSON, text, bytes) are written to a temporary sibling, flushed, fsynced and renamed, and the
folder is fsynced (:func:`atomic_write_bytes`). Every ``OSError`` on the way becomes one line:
``cannot write PATH: REASON``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from treemap.errors import WriteError

log = logging.getLogger("treemap.durable")

#: Loggers through which rasterio reports what GDAL's error handler receives.
_GDAL_LOGGERS = ("rasterio._env", "rasterio._err", "rasterio._base", "rasterio._io")

#: Test hook, for the crash tests only (``tests/test_kill_publish.py``): ``TREEMAP_TEST_KILL_AT=NAME`` or
#: ``NAME#N`` makes the process kill itself with SIGKILL the first (the N-th) time it reaches
#: :func:`crash_point` ``NAME`` (``raster-written``, ``written:<file name>``, and those of :mod:`treemap.publish`).
#: Unset, as it always is outside those tests, crash points do nothing.
TEST_KILL_ENV = "TREEMAP_TEST_KILL_AT"
_crash_counts: dict[str, int] = {}
_crash_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Test hook: die here at once, without any cleanup (as ``kill -9`` or a power cut would), when
    ``TREEMAP_TEST_KILL_AT`` names this point (see :data:`TEST_KILL_ENV`); otherwise do nothing."""
    wanted = os.environ.get(TEST_KILL_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("#")
    if target != name:
        return
    with _crash_lock:
        _crash_counts[name] = count = _crash_counts.get(name, 0) + 1
    if count == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def temporary_sibling(final: Path) -> Path:
    """A hidden, unique name next to ``final`` (same folder, so a rename is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def reason_of(exc: BaseException | str, folder: Path | None = None) -> str:
    """A short human reason for a write failure; ``No space left on device`` when the folder is full."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "no space left" in text.lower() or (folder is not None and _is_full(folder)):
        return os.strerror(errno.ENOSPC)
    return text[:300]


#: Bytes a probe writes to tell a full filesystem from other write failures (GDAL's compression threads report
#: ``ENOSPC`` on stderr only, so the error that reaches treemap may just say "write error").
PROBE_BYTES = 8 * 1024 * 1024


def _is_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    if st.f_bavail * st.f_frsize < 64 * 1024 or (st.f_files > 0 and st.f_favail < 8):
        return True
    probe = folder / f".treemap-space-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as fh:
            block = b"\0" * (1 << 20)
            for _ in range(PROBE_BYTES // len(block)):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)
    return False


def write_error(final: Path, exc: BaseException | str) -> WriteError:
    """The one-line error for a failed write of ``final``."""
    if isinstance(exc, WriteError):  # already reported (errors subclass OSError, so they pass through handlers)
        return exc
    folder = Path(final).parent
    return WriteError(f"cannot write {final}: {reason_of(exc, folder if folder.exists() else None)}")


def sync_file(path: Path) -> None:
    """fsync a closed file, so that errors of deferred writes surface here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """fsync a folder, so that renames and removals in it are on stable storage."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder; the files themselves are synced
        pass
    finally:
        os.close(fd)


def replace(tmp: Path, target: Path, final: Path | None = None) -> None:
    """Rename ``tmp`` over ``target`` and sync the folder; a failure is a :class:`WriteError` naming ``final``
    (default ``target``: the path the user will see)."""
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(target if final is None else final, exc) from None
    sync_dir(Path(target).parent)


def atomic_write_bytes(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` through a temporary sibling: written, flushed, fsynced, renamed."""
    final = Path(final)
    tmp = temporary_sibling(final)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point(f"written:{final.name}")
        replace(tmp, final)
    except OSError as exc:
        raise write_error(final, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return final


def atomic_write_text(final: Path, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: Path, payload, indent: int | None = 2) -> Path:
    text = json.dumps(payload, indent=indent, sort_keys=True)
    return atomic_write_text(final, text + "\n")


class _Dispatcher(logging.Handler):
    """Hands the GDAL errors rasterio logs to the capture of the thread they happen in (see :func:`gdal_errors`).
    Installed once; threads without a capture are not affected."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.captures: dict[int, list[list[str]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        stack = self.captures.get(record.thread)
        if not stack:
            return
        message = record.getMessage()
        if record.levelno >= logging.ERROR or "signalled an error" in message:
            stack[-1].append(message)


_dispatcher: _Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def _install() -> _Dispatcher:
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            _dispatcher = _Dispatcher()
            for name in _GDAL_LOGGERS:
                logger = logging.getLogger(name)
                logger.addHandler(_dispatcher)
                if logger.level == logging.NOTSET or logger.level > logging.INFO:
                    logger.setLevel(logging.INFO)  # rasterio reports GDAL's failures at INFO
        return _dispatcher


@contextmanager
def gdal_errors(final: Path) -> Iterator[None]:
    """Run a GDAL write: any GDAL error signalled in this thread, and any exception, become one
    :class:`WriteError` naming ``final`` (the path the user will see, not the temporary one). Thread-safe:
    each thread sees only its own GDAL errors."""
    dispatcher = _install()
    thread = threading.get_ident()
    messages: list[str] = []
    with _dispatcher_lock:
        dispatcher.captures.setdefault(thread, []).append(messages)
    try:
        yield
    except WriteError:
        raise
    except Exception as exc:  # noqa: BLE001 - rasterio/GDAL raise many types for one failed write
        first = messages[0] if messages else exc
        raise write_error(final, first if "no space" in str(first).lower() else exc) from None
    finally:
        with _dispatcher_lock:
            stack = dispatcher.captures[thread]
            stack.pop()
            if not stack:
                del dispatcher.captures[thread]
    if messages:
        raise write_error(final, messages[0])


def _edge_windows(width: int, height: int, block: tuple[int, int]):
    """The first and the last block window of a raster with ``block`` = (rows, cols) block shape."""
    from rasterio.windows import Window

    bh, bw = block
    rows, cols = math.ceil(height / bh), math.ceil(width / bw)
    last_r, last_c = (rows - 1) * bh, (cols - 1) * bw
    yield Window(0, 0, min(bw, width), min(bh, height))
    yield Window(last_c, last_r, width - last_c, height - last_r)


def _read_edges(ds) -> None:
    """Decode the first and the last block of every band of an open dataset."""
    for window in _edge_windows(ds.width, ds.height, ds.block_shapes[0]):
        ds.read(window=window)


def verify_raster(path: Path, final: Path, expected: np.ndarray | None = None) -> None:
    """Re-open a closed raster and decode it back: all of it compared with ``expected`` when given, otherwise the
    first and the last block of every band at full resolution and at every overview level. A failure is a
    :class:`WriteError` naming ``final``."""
    import rasterio

    try:
        with gdal_errors(final):
            with rasterio.open(path) as ds:
                if expected is not None:
                    floats = np.issubdtype(expected.dtype, np.floating)
                    if not np.array_equal(ds.read(), expected, equal_nan=floats):
                        raise WriteError(f"cannot write {final}: the file read back differs from what was written")
                    return
                _read_edges(ds)
                levels = len(ds.overviews(1)) if ds.count else 0
            for level in range(levels):
                with rasterio.open(path, overview_level=level) as ds:
                    _read_edges(ds)
    except WriteError as exc:
        message = str(exc)
        if "differs" in message:
            raise
        raise WriteError(f"{message} (the file read back is damaged)") from None


def commit_raster(tmp: Path, target: Path, expected: np.ndarray | None = None, final: Path | None = None) -> Path:
    """Sync, verify and rename a raster written (and closed) at ``tmp`` to ``target``; errors name ``final``
    (default ``target``: the path the user will see)."""
    final = target if final is None else final
    try:
        sync_file(tmp)
    except OSError as exc:
        raise write_error(final, exc) from None
    verify_raster(tmp, final, expected)
    crash_point("raster-written")
    replace(tmp, target, final)
    return target


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
