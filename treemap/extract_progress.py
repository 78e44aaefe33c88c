"""What an extraction has finished, kept in its output folder so that a re-run resumes (see :mod:`treemap.extract`).

* ``extract.json`` (:func:`make_manifest`, :func:`check_manifest`): a fingerprint of the points, the catalog and
  the options; a folder that belongs to another extraction is refused.
* ``shard-NNNNNN.json`` (:func:`finish_shard`): the sidecar of a shard, written after its tar; a shard is finished
  when its sidecar exists. It lists the shard's skipped points and the auxiliary variables left null.
* ``report.json`` (:func:`write_report`): the sidecars gathered -- samples written, points skipped with a reason,
  auxiliary rasters that could not be read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from treemap.errors import ExtractError
from treemap.points import Skipped
from treemap.shards import Sample, write_shard

log = logging.getLogger("treemap.extract")

MANIFEST = "extract.json"
REPORT = "report.json"
FORMAT_VERSION = 1


def make_manifest(points_csv: Path, catalog: str, options: dict) -> dict:
    """The fingerprint of an extraction: the points file's digest, the catalog's name and the options'
    fingerprint (:meth:`treemap.extract_options.ExtractOptions.fingerprint`)."""
    from treemap.cache import file_sha256

    return {"format_version": FORMAT_VERSION, "points_sha256": file_sha256(points_csv), "catalog": catalog,
            "options": options}


def check_manifest(out: Path, manifest: dict) -> None:
    """Write ``manifest`` into the empty folder ``out``, or check that it is the one already there."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != manifest:
            raise ExtractError(f"{out} holds shards of another extraction (other points, catalog or options); "
                               f"use a new --out folder or remove it")
        return
    if any(out.glob("shard-*.tar")) or any(out.glob("shard-*.json")):
        raise ExtractError(f"{out} holds shards without an {MANIFEST}; use an empty --out folder")
    from treemap.outputs import write_json_atomic

    write_json_atomic(path, manifest)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def finished_shards(out: Path, n_shards: int) -> set[int]:
    """The indices of the shards of ``out`` that have their sidecar."""
    return {i for i in range(n_shards) if (out / f"{shard_name(i)}.json").exists()}


def finish_shard(out: Path, shard: int, results: dict[int, Sample | Skipped], aux_errors: dict[str, str]) -> None:
    """Write the shard's tar (when it has samples), then its sidecar."""
    from treemap.outputs import write_json_atomic

    ordered = [results[i] for i in sorted(results)]
    samples = [r for r in ordered if isinstance(r, Sample)]
    skipped = [r.to_json() for r in ordered if isinstance(r, Skipped)]
    name = shard_name(shard)
    if samples:
        write_shard(out / f"{name}.tar", samples)
    missing = Counter(v for s in samples for v, x in s.aux.items() if x is None)
    write_json_atomic(out / f"{name}.json", {
        "shard": f"{name}.tar" if samples else None, "samples": len(samples), "skipped": skipped,
        "aux_missing": dict(sorted(missing.items())), "aux_errors": dict(aux_errors),
    })
    log.info("shard %s: %d sample(s), %d skipped", name, len(samples), len(skipped))


def write_report(out: Path, points_csv: Path, n_points: int, bad_rows: list[Skipped], n_shards: int
                 ) -> tuple[list[Path], int, int, Path]:
    """Gather the sidecars of the ``n_shards`` finished shards and the unreadable rows ``bad_rows`` into
    ``report.json``: the shards that hold samples, the number of samples, the number of points skipped and the
    report's path. ``n_points``: the points read (the rows of the file are these and the bad rows)."""
    from treemap.outputs import write_json_atomic

    shards, written, skipped_rows, aux_errors = [], 0, [s.to_json() for s in bad_rows], {}
    for i in range(n_shards):
        side = json.loads((out / f"{shard_name(i)}.json").read_text(encoding="utf-8"))
        written += side["samples"]
        skipped_rows.extend(side["skipped"])
        aux_errors.update(side.get("aux_errors", {}))
        if side["samples"]:
            shards.append(out / f"{shard_name(i)}.tar")
    skipped_rows.sort(key=lambda s: s["row"])
    report = write_json_atomic(out / REPORT, {
        "points_file": str(points_csv),
        "rows": n_points + len(bad_rows),
        "written": written,
        "skipped": len(skipped_rows),
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped_rows).items())),
        "auxiliary_errors": aux_errors,
        "shards": [s.name for s in shards],
        "skipped_points": skipped_rows,
    })
    return shards, written, len(skipped_rows), report
