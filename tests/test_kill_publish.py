"""A real `treemap predict` killed with SIGKILL at every step of writing and publishing its products.

The kills are deterministic: the test hook ``TREEMAP_TEST_KILL_AT`` (:func:`treemap.durable.crash_point`) makes the
process SIGKILL itself the N-th time it reaches a named point. One run computes the tiles; every later run of the same
job skips them (its done-markers are kept: every run but the last passes ``--keep-work``), so the later runs only redo
the products, in a few seconds each.

After every kill the output folder (the work folder ``.treemap-work`` aside) must hold no temporary or hidden file,
no sidecar without its raster, and

* before the publish journal is written: exactly what it held before the run (nothing, or the previous whole set);
* with the journal left behind: after the roll-forward the next run does first (:func:`treemap.publish.recover`, run
  here on a copy), one whole set: the killed run's;
* after the journal is removed: the killed run's whole set.

"One whole set from one run": the file names of a complete run, and every file's SHA-256 equal to the checksum the
run's ``item.json`` records for it (``treemap.log`` and ``item.json`` differ from run to run, so files of two runs do
not pass). Then the next run on the folder must succeed, with a whole set, and leave no work folder behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from treemap.durable import TEST_KILL_ENV
from treemap.publish import JOURNAL, recover
from treemap.workdir import WORK_DIR

#: A 1.3 km x 1.1 km part of examples/region.geojson: 2 x 2 tiles of 80 px, about 20 s of tiles.
AOI = {"type": "Feature", "properties": {},
       "geometry": {"type": "Polygon", "coordinates": [[[8.966, 50.022], [8.984, 50.022], [8.984, 50.032],
                                                        [8.966, 50.032], [8.966, 50.022]]]}}

UNCHANGED, JOURNALED, PUBLISHED = "unchanged", "journal left", "published"

#: (kill point, what the output folder holds after the kill, what the step is); ``{n}`` is the number of files of a
#: whole set, ``{half}`` half of it. None: a run that is not killed.
STEPS = [
    ("staged", UNCHANGED, "first run: tiles computed, every product staged, killed before the journal"),
    ("raster-written#1", UNCHANGED, "the first product's COG written in staging under its temporary name"),
    ("written:publish.json", UNCHANGED, "the journal written under its temporary name, not yet renamed"),
    ("journaled", JOURNALED, "journal written, nothing renamed yet"),
    ("recover-renamed#2", JOURNALED, "the next run killed while it rolls that publication forward"),
    (None, PUBLISHED, "a whole run: finishes the interrupted publication, then publishes its own set"),
    ("raster-written#4", UNCHANGED, "mid-way through staging, a whole set already published"),
    ("publish-renamed#1", JOURNALED, "the first file renamed into the output folder"),
    ("publish-renamed#{half}", JOURNALED, "between two renames, mid-publish (after rolling the last one forward)"),
    ("publish-renamed#{n}", JOURNALED, "every file renamed, the journal not yet removed"),
    ("publish-done", PUBLISHED, "journal removed, staging and work folders not yet"),
]


def predict(out: Path, aoi: Path, kill_at: str | None, keep_work: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(TEST_KILL_ENV, None)
    if kill_at is not None:
        env[TEST_KILL_ENV] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "treemap", "predict", "--catalog", "demo", "--aoi", str(aoi), "--out", str(out),
         "--workers", "1", "--tile-size", "80", *(["--keep-work"] if keep_work else [])],
        capture_output=True, text=True, timeout=600, env=env)


def snapshot(folder: Path) -> dict[str, str]:
    """name -> SHA-256 of every file in the folder, the work folder aside."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.name != WORK_DIR and p.is_file()}


def assert_no_strays(folder: Path, when: str) -> None:
    """Nothing in the output folder but plain, visible product files; every sidecar beside its raster."""
    for p in folder.iterdir():
        if p.name == WORK_DIR:
            continue
        assert p.is_file() and not p.is_symlink(), f"{when}: {p.name} is not a plain file"
        assert not p.name.startswith("."), f"{when}: hidden file {p.name} in the output folder"
        assert ".tmp" not in p.name and not p.name.endswith((".vrt", ".tmp")), f"{when}: temporary file {p.name}"
        for suffix, raster in ((".tif.aux.xml", ".tif"), (".qml", ".tif")):
            if p.name.endswith(suffix):
                assert (folder / (p.name[: -len(suffix)] + raster)).is_file(), f"{when}: {p.name} without its raster"


def assert_one_whole_set(folder: Path, reference: set[str] | None, when: str) -> dict[str, str]:
    """The folder holds one run's whole set: every file is an asset of its item.json with the checksum recorded
    there, every asset is there, and the names are those of a complete run. Returns the snapshot."""
    files = snapshot(folder)
    assert "item.json" in files, f"{when}: no item.json among {sorted(files)}"
    item = json.loads((folder / "item.json").read_text(encoding="utf-8"))
    recorded = {}
    for key, asset in item["assets"].items():
        assert asset["href"].startswith("./"), f"{when}: asset {key} href {asset['href']}"
        recorded[asset["href"][2:]] = asset["file:checksum"]
    assert set(files) == set(recorded) | {"item.json"}, f"{when}: files {sorted(files)} vs item {sorted(recorded)}"
    for name, checksum in recorded.items():
        assert checksum == "1220" + files[name], f"{when}: {name} is not the file the run's item.json describes"
    if reference is not None:
        assert set(files) == reference, f"{when}: {sorted(set(files) ^ reference)} differ from a complete run"
    assert any(name.endswith(".tif") for name in files)
    return files


def test_sigkill_anywhere_in_publishing_leaves_nothing_or_one_whole_set(tmp_path):
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps(AOI))
    out = tmp_path / "out"
    reference: set[str] | None = None
    previous: dict[str, str] = {}
    timings = []
    for k, (point, expect, what) in enumerate(STEPS):
        if point is not None and "{" in point:
            assert reference is not None
            point = point.format(n=len(reference), half=len(reference) // 2)
        when = f"step {k} ({point}: {what})"
        started = time.monotonic()
        proc = predict(out, aoi, point)
        timings.append((point, round(time.monotonic() - started, 1)))
        if point is None:
            assert proc.returncode == 0, f"{when}: {proc.stderr[-3000:]}"
            printed = proc.stdout.split()
            assert printed and all(Path(p).is_file() for p in printed), f"{when}: {proc.stdout}"
        else:
            assert proc.returncode == -signal.SIGKILL, \
                f"{when}: not killed there (exit {proc.returncode}): {proc.stderr[-3000:]}"
        assert_no_strays(out, when)
        journal = out / WORK_DIR / JOURNAL
        now = snapshot(out)
        if expect == UNCHANGED:
            assert not journal.exists(), f"{when}: journal written"
            assert now == previous, f"{when}: the output folder changed before the journal was written"
        elif expect == JOURNALED:
            assert journal.exists(), f"{when}: no journal left"
            # what the next run does first, on a copy: roll the publication forward
            copy = tmp_path / f"recovered-{k}"
            shutil.copytree(out, copy, symlinks=True)
            recover(copy, copy / WORK_DIR)
            assert not (copy / WORK_DIR / JOURNAL).exists()
            assert_no_strays(copy, f"{when}, rolled forward")
            now = assert_one_whole_set(copy, reference, f"{when}, rolled forward")
            if point.startswith("recover-"):  # killed while finishing the last run's publication: that set
                assert now == previous, f"{when}: rolled forward to another set than the interrupted one"
            else:
                assert now != previous, f"{when}: rolled forward to the previous set, not the killed run's"
            assert not list((copy / WORK_DIR).glob("staging-*")), f"{when}: staging folders left after recovery"
            shutil.rmtree(copy)
        else:
            assert not journal.exists(), f"{when}: journal left behind"
            now = assert_one_whole_set(out, reference, when)
            assert now != previous, f"{when}: still the previous set"
            reference = reference or set(now)
        previous = now  # with a journal left: the set the next run rolls the folder forward to

    # the run after the last kill: a whole set of its own, and nothing left in the work folder
    started = time.monotonic()
    proc = predict(out, aoi, None, keep_work=False)
    timings.append(("final", round(time.monotonic() - started, 1)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_no_strays(out, "final run")
    final = assert_one_whole_set(out, reference, "final run")
    assert final != previous
    work = out / WORK_DIR
    assert not work.exists() or not any(work.iterdir()), f"work folder left: {sorted(work.rglob('*'))}"
    print("run wall times (s):", timings)
