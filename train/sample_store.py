"""What ``train.sample`` writes, and how a killed run stays consistent.

Layout of ``--out``::

    run.json            the options that decide the results (a rerun with other options is refused)
    index.jsonl         one JSON record per location (see :mod:`train.sample`); while a run works it is a journal
                        (records appended, fsynced); at the end it is rewritten in grid order, one record each
    shards/<id>.npz     one per written location (:func:`write_shard`)

A shard is written whole under a temporary name, fsynced and renamed (:func:`treemap.durable.atomic_write_bytes`),
and its location's record is appended to the journal only after the rename. So after a kill at any moment, every
location the journal calls done has its shard; a shard without a record, a half-written temporary file or a cut
journal line is simply redone. A rerun also redoes a location whose shard no longer reads.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from treemap.durable import atomic_write_bytes, atomic_write_json, sync_dir
from train.sample_grid import SampleError

log = logging.getLogger("train.sample")

INDEX = "index.jsonl"
RUN = "run.json"
SHARDS = "shards"
#: Arrays every shard holds (see :func:`write_shard`).
SHARD_KEYS = ("images", "clear", "seasons", "scene_ids", "dates", "cloud", "channels", "meta")


def shard_path(out: Path, location_id: str) -> Path:
    return Path(out) / SHARDS / f"{location_id}.npz"


def write_shard(path: Path, images: np.ndarray, clear: np.ndarray, seasons: list[str], scene_ids: list[str],
                dates: list[str], cloud: list[float], channels: tuple[str, ...], meta: dict) -> Path:
    """One location's season images as a compressed ``.npz``: ``images`` (S, C, P, P), ``clear`` (S, P, P) bool,
    ``seasons``, ``scene_ids``, ``dates`` (ISO), ``channels`` (str arrays), ``cloud`` (S,) float32 shares, and
    ``meta`` (a JSON string: location, patch grid, weight). Written atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, clear=clear.astype(bool), seasons=np.array(seasons),
                        scene_ids=np.array(scene_ids), dates=np.array(dates),
                        cloud=np.asarray(cloud, dtype=np.float32), channels=np.array(channels),
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    return atomic_write_bytes(path, buffer.getvalue())


def read_shard(path: Path) -> dict:
    """A shard's arrays (``meta`` parsed); ``ValueError`` when the file is missing, cut or not a whole shard."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in SHARD_KEYS if k not in data.files]
            if missing:
                raise ValueError(f"{path}: no {', '.join(missing)}")
            out = {k: data[k] for k in SHARD_KEYS}
        out["meta"] = json.loads(str(out["meta"]))
    except Exception as exc:  # noqa: BLE001 - OSError, zipfile.BadZipFile, zlib.error, EOFError: a cut file
        raise ValueError(f"{path}: unreadable shard ({type(exc).__name__}: {exc})") from None
    s = out["images"].shape
    if out["images"].ndim != 4 or out["clear"].shape != (s[0], s[2], s[3]) or len(out["seasons"]) != s[0]:
        raise ValueError(f"{path}: inconsistent shapes {s}, {out['clear'].shape}")
    return out


def shard_readable(path: Path) -> bool:
    try:
        read_shard(path)
    except ValueError:
        return False
    return True


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files a killed run left in ``folder`` (``.NAME.tmp-XXXXXXXX``); returns how many."""
    n = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d temporary file(s) a stopped run left in %s", n, folder)
    return n


def check_run(out: Path, options: dict) -> None:
    """Record the options in ``run.json``, or refuse when the folder holds a run with other options."""
    path = Path(out) / RUN
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before is not None and before != json.loads(json.dumps(options)):
            changed = sorted(k for k in set(before) | set(options) if before.get(k) != json.loads(
                json.dumps(options.get(k))))
            raise SampleError(f"{out} holds a sampling run with other options ({', '.join(changed)}): use another "
                              f"--out or the same options")
        if before is not None:
            return
    atomic_write_json(path, options)


class Journal:
    """``index.jsonl``: records appended durably while a run works, rewritten whole at the end."""

    def __init__(self, out: Path):
        self.path = Path(out) / INDEX

    def load(self) -> dict[str, dict]:
        """The latest record of every location; a line that does not parse (cut by a kill) is skipped."""
        records: dict[str, dict] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return records
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s line %d is not a whole record (a write cut short): ignored", self.path, n)
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records[record["id"]] = record
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        # a journal cut mid-line by a kill ends without a newline: start on a fresh line
        fresh = self.path.exists() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(("\n" if fresh else "") + line)
            fh.flush()
            os.fsync(fh.fileno())
        sync_dir(self.path.parent)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def rewrite(self, records: list[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.path, text.encode("utf-8"))
