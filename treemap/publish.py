"""Publishing a run's products: written into a staging folder, verified, then renamed into the output folder as a set.

A run writes every product (COGs and their sidecars) into ``OUT/.treemap-work/staging-<id>/``. Only when all of
them are written, synced and read back does it publish them: it first records the list of files in a journal
(``OUT/.treemap-work/publish.json``, fsynced), then renames each file into ``OUT`` (rasters before their sidecars)
and removes the journal. Files of the previous set of the same job that the new run does not make are removed
with it (:func:`superseded`). A crash between two renames leaves the journal behind, and the next run on that folder
finishes the renames before it does anything else (:func:`recover`), so the folder never stays with half a set. A
failure before the journal is written leaves the previous products untouched.

:func:`check_space` refuses a mosaic that cannot fit before any product is written: the products take about the
size of the finished tiles plus a third for the overviews.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from treemap.durable import atomic_write_json, crash_point, free_bytes, replace, sync_dir, write_error
from treemap.errors import WriteError

log = logging.getLogger("treemap.publish")

JOURNAL = "publish.json"
STAGING_PREFIX = "staging-"
#: The run's STAC item in the output folder: it lists the files of the set (:mod:`treemap.run_item`).
ITEM = "item.json"
#: Products (COGs with overviews, a VRT, sidecars) need about this many times the bytes of the finished tiles.
SPACE_FACTOR = 1.5
#: ``TREEMAP_SPACE_CHECK=0`` skips the early free-space check (the writes are still checked one by one).
SPACE_CHECK_ENV = "TREEMAP_SPACE_CHECK"
_MIB = 1024 * 1024


class Staging:
    """The staging folder of one run's product set."""

    def __init__(self, out: Path, work_root: Path):
        self.out = Path(out)
        self.root = Path(work_root)
        self.dir = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            if not self.out.is_dir():  # removed while the run worked: it is not recreated
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            self.dir.mkdir(parents=True)
        except OSError as exc:
            raise write_error(self.out, exc) from None

    def path(self, name: str) -> Path:
        """Where the product that will be published as ``OUT/name`` is written now."""
        return self.dir / name

    def final(self, name: str) -> Path:
        return self.out / name

    def publish(self) -> list[Path]:
        """Rename every staged file into the output folder (rasters first, then their sidecars); the paths
        published."""
        names = sorted((p.name for p in self.dir.iterdir() if not p.name.startswith(".")),
                       key=lambda n: (n.endswith((".aux.xml", ".qml", ".json", ".png")), n))
        stale = superseded(self.out, self.dir, names)
        crash_point("staged")
        atomic_write_json(self.root / JOURNAL, {"staging": self.dir.name, "files": names, "remove": stale})
        crash_point("journaled")
        return _roll_forward(self.out, self.root, "publish")

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _item_files(item: Path) -> tuple[str | None, set[str]]:
    """The job and the file names (in the item's own folder) of a run's STAC item; (None, empty) if unreadable."""
    try:
        doc = json.loads(item.read_text(encoding="utf-8"))
        hrefs = [a["href"] for a in doc["assets"].values()]
        job = doc["properties"].get("treemap:job")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, set()
    names = set()
    for href in hrefs:
        name = href[2:] if isinstance(href, str) and href.startswith("./") else href
        if isinstance(name, str) and name and "/" not in name and "\\" not in name and name not in (".", ".."):
            names.add(name)
    return job, names


def superseded(out: Path, staging: Path, names: list[str]) -> list[str]:
    """Files of the product set now in ``out`` (as its ``item.json`` lists them) that the staged set of the same
    job does not replace: publishing removes them, so the folder never shows one run's products beside
    another's (a ``top_species.tif`` of an earlier ``--top-k`` run, say). Products of another job (phenology
    beside predict) are left alone."""
    old_job, old = _item_files(out / ITEM)
    new_job, _ = _item_files(staging / ITEM)
    if old_job is None or old_job != new_job:
        return []
    return sorted(n for n in old - set(names) if (out / n).is_file())


def _roll_forward(out: Path, root: Path, stage: str) -> list[Path]:
    """Rename the journal's files into ``out``; ``stage`` (``publish`` or ``recover``) names the test crash points
    (:func:`treemap.durable.crash_point`) on the way."""
    journal = root / JOURNAL
    record = json.loads(journal.read_text(encoding="utf-8"))
    staging = root / record["staging"]
    published = []
    for name in record["files"]:
        src = staging / name
        if src.exists():
            replace(src, out / name)
            crash_point(f"{stage}-renamed")
        published.append(out / name)
    for name in record.get("remove", []):  # the previous set's files this run does not make
        (out / name).unlink(missing_ok=True)
    sync_dir(out)
    journal.unlink()
    sync_dir(root)
    crash_point(f"{stage}-done")
    shutil.rmtree(staging, ignore_errors=True)
    return published


def recover(out: Path, root: Path) -> None:
    """Finish a publication a crash interrupted, and remove staging folders of runs that died before publishing
    (and the temporary journal of one killed while it wrote its journal). Call with the output folder's lock held."""
    journal = root / JOURNAL
    if journal.exists():
        try:
            published = _roll_forward(out, root, "recover")
            log.warning("finished publishing %d product file(s) of an interrupted run", len(published))
        except WriteError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable publish journal %s (%s)", journal, exc)
            journal.unlink(missing_ok=True)
    if root.is_dir():
        for stale in root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob(f".{JOURNAL}.tmp-*"):  # never renamed into place: that run published nothing
            stale.unlink(missing_ok=True)


def check_space(out: Path, tile_files: list[Path]) -> None:
    """Refuse early, naming the needed and the available space, when the products cannot fit in ``out``."""
    if os.environ.get(SPACE_CHECK_ENV, "1").strip() in ("0", "no", "false"):
        return
    tiles = sum(p.stat().st_size for p in tile_files if p.exists())
    needed = int(tiles * SPACE_FACTOR) + _MIB
    try:
        available = free_bytes(out)
    except OSError as exc:
        raise write_error(out, exc) from None
    if available < needed:
        raise WriteError(f"not enough free space in {out} for the products: about {needed / _MIB:.1f} MiB needed, "
                         f"{available / _MIB:.1f} MiB available; free some space and run again (finished tiles "
                         f"are kept and reused)")
