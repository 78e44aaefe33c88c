"""Occurrence points -> GlobalGeoTree training shards, from any Sentinel-2 L2A catalog treemap can search.

Input: a CSV (or GBIF tab-separated download) with longitude, latitude, year and the taxonomy of each point.
Column names of GlobalGeoTree (``level0``, ``level1_family``, ``level2_genus``, ``level3_species``) and of GBIF
(``decimalLongitude``, ``decimalLatitude``, ``family``, ``genus``, ``species``) are both accepted. GBIF has no leaf
type (``level0``): give a taxonomy list (a species-list CSV with ``level0`` per species) to fill it in.

Per point: 12 monthly median composites of the 10 bands in GeoTreeCLIP order on the 5 x 5 patch of the 10 m UTM grid
centred on the pixel holding the point, from the scenes of the point's year; the 27 auxiliary variables (longitude
and latitude from the point, the others sampled from rasters named in an extraction recipe, null where missing).

Compositing (:class:`Compositing`, with the other options in :mod:`treemap.extract_options`): ``treemap`` (the
default) makes the composites ``treemap predict`` computes (every scene, SCL cloud/shadow masking, median), so a model
trained on these shards sees at training time what it sees when mapping; ``paper`` follows the GlobalGeoTree recipe
(scenes with at most 30 % cloud, no pixel masking, median).

In both, a month counts as present when its centre pixel has a value; the other pixels' gaps take the patch mean
(the rule of ``treemap.patches``), and absent months are all-NaN, so shards never hold partly-NaN months.

Reading: points are grouped into windows of at most ``window_px`` pixels of their UTM zone's 10 m grid (per year);
each window is one small tile whose lazy cube (``treemap.cube.TileCube``) reads each COG window once for all its
points (:mod:`treemap.extract_windows`). Windows are ordered spatially, and shards are consecutive runs of
``shard_size`` points in that order.

Restarts: the output folder holds ``extract.json`` (a fingerprint of the points and options); a shard is finished
when its sidecar ``shard-NNNNNN.json`` exists (written after the tar), so re-running skips finished shards and
refuses a folder that belongs to another extraction (:mod:`treemap.extract_progress`).

Bad input: a missing file or missing columns raise :class:`PointsError` (one line) before anything is written;
unparseable rows, points no scene of their year covers, points without any clear observation are skipped and listed
with a reason in ``report.json``; an unreadable auxiliary raster leaves its variable null and is named in the report
(:mod:`treemap.extract_aux`).
Read errors of the imagery itself stop the run (finished shards stay): they are usually transient.

This module holds the entry point (:func:`extract_points`) and its result; the names of the extraction modules named
above stay importable from here.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from treemap.errors import ExtractError
from treemap.extract_aux import AuxSampler
from treemap.extract_options import AuxSource, Compositing, ExtractOptions, load_recipe, resolve_options
from treemap.extract_progress import (FORMAT_VERSION, MANIFEST, REPORT, check_manifest, finish_shard,
                                      finished_shards, make_manifest, shard_name, write_report)
from treemap.extract_windows import (ALL_SCL, HALO, PATCH, RESOLUTION, Located, Window, locate, plan,
                                     window_patches, window_samples)
from treemap.points import Point, PointsError, Skipped
from treemap.points import read_points as _read_points
from treemap.shards import Sample

__all__ = [
    "ExtractResult", "extract_points", "read_points",
    # the names of the extraction modules, importable from here
    "ALL_SCL", "AuxSampler", "AuxSource", "Compositing", "ExtractError", "ExtractOptions", "FORMAT_VERSION", "HALO",
    "Located", "MANIFEST", "PATCH", "Point", "PointsError", "REPORT", "RESOLUTION", "Skipped", "Window",
    "load_recipe", "locate", "plan", "resolve_options", "shard_name", "window_patches", "window_samples",
]

log = logging.getLogger("treemap.extract")


def read_points(path: str | Path, options: ExtractOptions = ExtractOptions()) -> tuple[list[Point], list[Skipped]]:
    """:func:`treemap.points.read_points` with the extraction's taxonomy list and default year."""
    return _read_points(path, taxonomy=options.taxonomy, default_year=options.default_year)


@dataclass(frozen=True)
class ExtractResult:
    out: Path
    shards: tuple[Path, ...]
    written: int
    skipped: int
    report: Path

    def to_json(self) -> dict:
        return {"out": str(self.out), "shards": [str(s) for s in self.shards], "written": self.written,
                "skipped": self.skipped, "report": str(self.report)}


def _open_catalog(catalog):
    if hasattr(catalog, "search"):
        return catalog
    from treemap.stac import open_catalog

    return open_catalog(str(catalog))


def extract_points(points_csv: str | Path, out_dir: str | Path, catalog="earth-search", *,
                   options: ExtractOptions | None = None, recipe: str | Path | None = None,
                   progress: Callable[[str], None] | None = None) -> ExtractResult:
    """Extract training shards for the points of ``points_csv`` into ``out_dir``.

    ``catalog``: anything ``treemap --catalog`` takes (``demo``, a STAC API URL, a local catalog or item file) or
    a catalog object with ``search(Query)``. ``options`` or ``recipe`` (YAML, see :func:`load_recipe`) set the
    compositing, shard size, grouping and auxiliary rasters. Re-running with the same inputs resumes.
    """
    from treemap.outputs import ensure_writable_dir

    if options is None:
        options = load_recipe(recipe) if recipe is not None else ExtractOptions()
    points_csv = Path(points_csv)
    points, bad_rows = read_points(points_csv, options)
    out = ensure_writable_dir(Path(out_dir))
    cat = _open_catalog(catalog)
    check_manifest(out, make_manifest(points_csv, getattr(cat, "name", str(catalog)), options.fingerprint()))

    located, windows = plan(points, options.window_px)
    n_shards = math.ceil(len(located) / options.shard_size)
    done = finished_shards(out, n_shards)
    if done:
        log.info("%d of %d shard(s) already finished; resuming", len(done), n_shards)
    say = progress or (lambda msg: log.info("%s", msg))

    aux = AuxSampler(options.auxiliary)
    pending: dict[int, dict[int, Sample | Skipped]] = defaultdict(dict)  # shard -> position -> result
    try:
        for w_index, window in enumerate(windows, start=1):
            needed = [i for i in window.members if i // options.shard_size not in done]
            if not needed:
                continue
            members = [located[i] for i in needed]
            results, n_scenes = window_samples(cat, members, window.year, window.epsg, options.compositing,
                                               aux if options.auxiliary else None)
            for i, result in zip(needed, results):
                pending[i // options.shard_size][i] = result
            n_skipped = sum(isinstance(r, Skipped) for r in results)
            say(f"window {w_index}/{len(windows)} ({window.year}, EPSG:{window.epsg}): {len(members)} point(s), "
                f"{n_scenes} scene(s), {n_skipped} skipped")
            for shard in sorted(pending):
                first, last = shard * options.shard_size, min((shard + 1) * options.shard_size, len(located))
                if len(pending[shard]) == last - first:
                    finish_shard(out, shard, pending.pop(shard), aux.errors)
    finally:
        aux.close()

    shards, written, n_skipped, report = write_report(out, points_csv, len(points), bad_rows, n_shards)
    say(f"{written} sample(s) in {len(shards)} shard(s), {n_skipped} point(s) skipped; report {report}")
    return ExtractResult(out, tuple(shards), written, n_skipped, report)
