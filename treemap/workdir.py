"""The work folder of a run (``OUT/.treemap-work/``): the lock that keeps two runs out of one output folder, and
the per-tile done-markers that make runs resumable.

A tile is finished when its raster ``<tile>.tif`` and its marker ``<tile>.done`` (a small JSON record) both exist.
Both are written under a temporary name and renamed into place, raster first, so a crash at any point leaves whole
tiles only and a rerun recomputes exactly the tiles without a marker.

The lock is an exclusive, non-blocking ``flock`` on ``OUT/.treemap-work/.lock``, held by the process that writes the
products (the client when tiles run on a cluster) from before the first tile until the work folder is cleaned up.
The kernel drops it when that process dies, so a crashed run never leaves a stale lock. The file holds the holder's
host, pid and start time for the error message of a second run, and is removed on release.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from treemap.errors import OutputError, RunLockedError
from treemap.durable import atomic_write_json

WORK_DIR = ".treemap-work"
LOCK_NAME = ".lock"


@contextmanager
def work_lock(out: Path) -> Iterator[Path]:
    """Hold the lock on the output folder ``out`` for the duration of the block; yields the lock file's path.
    Raises :class:`RunLockedError` at once when another run holds it."""
    root = Path(out) / WORK_DIR
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the work folder {root}: {exc.strerror or exc}") from None
    path = root / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the last run removed the empty work folder just now
            root.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"another treemap run is writing to {out}{holder}; wait for it to finish or "
                                 f"choose another --out") from None
        # The previous holder removes the file on release: a file opened just before that is no longer the lock.
        try:
            current = os.stat(path)
            opened = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        yield path
    finally:
        try:
            path.unlink()  # still holding the lock: a run that opens the path from now on creates a new file
            root.rmdir()  # only when empty: finished and failed runs leave no empty work folder behind
        except OSError:
            pass
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f" (pid {int(record['pid'])} on {record['host']} since {record['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def tile_paths(work: Path, tile_id: str) -> tuple[Path, Path]:
    """``(raster, marker)`` of a tile in a work folder."""
    return work / f"{tile_id}.tif", work / f"{tile_id}.done"


def read_done(work: Path, tile_id: str) -> dict | None:
    """The done-record of a finished tile, or None when the tile still has to be computed."""
    path, done = tile_paths(work, tile_id)
    if not (done.exists() and path.exists()):
        return None
    try:
        return json.loads(done.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # an unreadable marker: the tile is computed again


def write_done(work: Path, tile_id: str, record: dict) -> Path:
    """Mark a tile finished (after its raster is in place); atomic."""
    _, done = tile_paths(work, tile_id)
    return atomic_write_json(done, record, indent=None)
