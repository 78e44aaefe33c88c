"""SSL4Eco sampling: locations on an equal-area grid, four phenological seasons each, one scene per season.

    python -m train.sample --aoi A [--land L] --out DIR [--catalog C] [--start S --end E] [--spacing-km 23] ...
    treemap train sample ...  (the same program)

1. Locations (:mod:`train.sample_grid`): nodes of a square grid, ``--spacing-km`` apart (23 km by default) in an
   equal-area CRS (``--crs``, EPSG:6933), inside ``--aoi`` and on the land of ``--land`` (GeoJSON polygons or a
   raster, nonzero = land, any CRS). Without ``--land`` every node in the AOI counts as land (a warning says so).
2. Seasons and scenes per location (:mod:`train.sample_select`): the median phenological transitions of a
   ``--window`` pixel square around the location over the years searched, the four seasons between them, and per
   season the acquisition nearest the season's middle with a patch cloud share under ``--max-cloud``.
3. Output (:mod:`train.sample_store`): ``shards/<id>.npz`` with the ``--patch-size`` patch of every season that has
   a scene (B02 B03 B04 B05 B06 B07 B08 B8A as harmonised reflectance, processing-baseline offset removed, plus
   NDVI) and ``index.jsonl``, one record per location. A location with fewer than two seasons is ``dropped`` (no
   shard; the record gives the reason); one whose reading failed is ``failed`` and is retried by the next run.
   Weight 1/4 where the mean NDVI is below 0.1 in every chosen season, else 1; the mountain weight (x2) of SSL4Eco is
   not applied: this command takes no elevation input.

The run is resumable: running the same command again skips the locations already done or dropped (and redoes a
shard that no longer reads). Prints the index's path; ``--json`` prints a summary instead. Exit code 3 when some
locations failed (the others are written), 2 for a usage mistake or unusable input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from train.sample_grid import DEFAULT_CRS, GridSpec, Location, SampleError, grid_locations, read_land
from train.sample_select import (CHANNELS, Transitions, calendar_transitions, candidates, choose_scene,
                                 weight_of, window_transitions)
from train.sample_store import (SHARDS, Journal, check_run, remove_temporaries, shard_path, shard_readable,
                                write_shard)
from treemap.errors import TreemapError

__all__ = ["build_parser", "main", "run", "sample_location"]

log = logging.getLogger("train.sample")

#: Pixel size of the patches (the 10 m grid of the location's UTM zone).
RESOLUTION = 10.0


def _tile(epsg: int, cx: float, cy: float, size: int):
    from treemap.grid import Tile

    x0, y1 = cx - (size // 2) * RESOLUTION, cy + (size // 2) * RESOLUTION
    bounds = (x0, y1 - size * RESOLUTION, x0 + size * RESOLUTION, y1)
    return Tile(0, 0, epsg, RESOLUTION, 0, bounds, (0, 0, size, size))


def _cube(scenes: list, tile):
    """:class:`treemap.cube.TileCube` of the scenes, or None when none has pixels on the tile (only their
    footprint boxes meet it; the cube itself drops such scenes from its list)."""
    from treemap.cube import NoSceneReachesTile, TileCube

    try:
        return TileCube(scenes, tile)
    except NoSceneReachesTile:
        return None


def sample_location(loc: Location, catalog, opts: argparse.Namespace, start: date, end: date) -> tuple[dict, dict]:
    """One location: its index record (without ``state``) and the shard's arrays (empty when < 2 seasons)."""
    from pyproj import Transformer
    from shapely.geometry import box

    from treemap.grid import lonlat_bbox, scenes_for_tile, to_crs, utm_epsg
    from treemap.phenology_run import tile_series
    from treemap.stac import Query

    epsg = utm_epsg(loc.lon, loc.lat)
    ux, uy = Transformer.from_crs(4326, epsg, always_xy=True).transform(loc.lon, loc.lat)
    cx, cy = round(ux / RESOLUTION) * RESOLUTION, round(uy / RESOLUTION) * RESOLUTION
    patch = _tile(epsg, cx, cy, opts.patch_size)
    window = _tile(epsg, cx, cy, opts.window) if opts.window != opts.patch_size else patch
    outer = window if opts.window > opts.patch_size else patch
    record = {"id": loc.id, "i": loc.i, "j": loc.j, "x": loc.x, "y": loc.y, "lon": round(loc.lon, 7),
              "lat": round(loc.lat, 7), "epsg": epsg, "patch_bounds": list(patch.core_bounds)}
    footprint = to_crs(box(*outer.core_bounds), 4326, src_epsg=epsg)
    scenes = catalog.search(Query(bbox=lonlat_bbox(outer.core_bounds, epsg), start=start, end=end,
                                  geometry=footprint))
    record["scenes"] = len(scenes)
    if not scenes:
        return {**record, "reason": f"no scene between {start} and {end}", "seasons": [], "missing": []}, {}
    unreadable = []
    wscenes = scenes_for_tile(scenes, window)
    transitions: Transitions | None = None
    wcube = _cube(wscenes, window) if wscenes else None
    if wcube is not None:
        dates, values, clear, _ = tile_series(wcube, opts.index)
        unreadable += wcube.unreadable
        transitions = window_transitions(dates, values, clear, list(range(start.year, end.year + 1)),
                                         opts.min_observations)
    if transitions is None:
        transitions = calendar_transitions(loc.lat)
        log.warning("location %s: no phenological cycle in its window: calendar seasons", loc.id)
    record["phenology"] = transitions.to_json()
    pscenes = scenes_for_tile(scenes, patch)
    cube = _cube(pscenes, patch) if pscenes else None
    if cube is None:
        return {**record, "reason": "no scene covers the patch", "seasons": [], "missing": []}, {}
    chosen, seasons, missing = [], [], []
    for season in transitions.seasons():
        cands = candidates(season, cube)
        pick, seen = choose_scene(cands, cube, opts.max_cloud, opts.tie_days)
        if pick is None:
            why = ("no acquisition in the season" if not cands else
                   f"{len(cands)} acquisition(s) in the season, none with less than {opts.max_cloud:g} % of the "
                   f"patch cloudy or without data (least {100 * min(c for _, c in seen):.1f} %)")
            missing.append({"season": season.name, **season.to_json(), "reason": why})
            continue
        c = pick.candidate
        chosen.append((season.name, pick))
        seasons.append({"season": season.name, **season.to_json(), "date": c.day.isoformat(), "doy": c.doy,
                        "distance": round(c.distance, 2), "scene_ids": list(c.scene_ids),
                        "cloud": round(pick.cloud, 5), "mean_ndvi": round(pick.mean_ndvi, 4),
                        "candidates": len(cands), "read": pick.evaluated})
    unreadable += cube.unreadable
    unreadable = list(dict.fromkeys(tuple(u) for u in unreadable))  # an asset of both cubes once
    record.update(seasons=seasons, missing=missing, unreadable=[list(u) for u in unreadable])
    if len(chosen) < 2:
        record["reason"] = f"{len(chosen)} season(s) with a scene; 2 needed"
        return record, {}
    record["weight"] = weight_of([p for _, p in chosen])
    dtype = np.float16 if opts.dtype == "float16" else np.float32
    arrays = {"images": np.stack([p.image for _, p in chosen]).astype(dtype),
              "clear": np.stack([p.clear for _, p in chosen]),
              "seasons": [n for n, _ in chosen], "scene_ids": [",".join(p.candidate.scene_ids) for _, p in chosen],
              "dates": [p.candidate.day.isoformat() for _, p in chosen], "cloud": [p.cloud for _, p in chosen],
              "channels": CHANNELS,
              "meta": {"id": loc.id, "lon": loc.lon, "lat": loc.lat, "epsg": epsg, "bounds": list(patch.core_bounds),
                       "resolution": RESOLUTION, "weight": record["weight"]}}
    return record, arrays


# -- the run --------------------------------------------------------------------------------------------------------
def _options(opts: argparse.Namespace, grid: GridSpec, start: date, end: date) -> dict:
    """What decides the results: a rerun must give the same."""
    return {"grid": grid.to_json(), "catalog": opts.catalog, "start": start.isoformat(), "end": end.isoformat(),
            "aoi": str(Path(opts.aoi).resolve()) if opts.aoi else None,
            "land": str(Path(opts.land).resolve()) if opts.land else None, "patch_size": opts.patch_size,
            "window": opts.window, "max_cloud": opts.max_cloud, "tie_days": opts.tie_days, "index": opts.index,
            "min_observations": opts.min_observations, "dtype": opts.dtype, "channels": list(CHANNELS)}


def _dates(opts: argparse.Namespace) -> tuple[date, date]:
    from treemap.dates import check_year, default_year
    from treemap.stac.query import date_window

    start, end = date_window(opts.start, opts.end, default_year(opts.catalog))
    check_year(start.year, "--start year")
    check_year(end.year, "--end year")
    return start, end


def run(opts: argparse.Namespace) -> dict:
    """Sample every location (see the module doc); returns the summary."""
    from treemap.aoi import read_aoi
    from treemap.outputs import ensure_writable_dir
    from treemap.stac import open_catalog
    from treemap.workdir import work_lock
    from train.sample_grid import grid_crs

    t0 = time.perf_counter()
    if opts.patch_size < 2 or opts.window < 3:
        raise SampleError("--patch-size must be at least 2 and --window at least 3 pixels")
    start, end = _dates(opts)
    grid = GridSpec(opts.spacing_km * 1000.0, tuple(opts.grid_origin), opts.crs)
    aoi = read_aoi(opts.aoi) if opts.aoi else None
    land = read_land(opts.land, grid_crs(opts.crs))
    locations = grid_locations(grid, aoi, land)
    log.info("%d grid locations (spacing %g km, %s)", len(locations), opts.spacing_km, opts.crs)
    out = ensure_writable_dir(Path(opts.out))
    catalog = open_catalog(opts.catalog)
    counts = {"done": 0, "dropped": 0, "failed": 0, "skipped": 0}
    with work_lock(out):
        check_run(out, _options(opts, grid, start, end))
        (out / SHARDS).mkdir(exist_ok=True)
        remove_temporaries(out / SHARDS)
        remove_temporaries(out)
        journal = Journal(out)
        records = journal.load()
        for n, loc in enumerate(locations, start=1):
            old = records.get(loc.id)
            if old and old.get("state") == "dropped":
                counts["skipped"] += 1
                continue
            if old and old.get("state") == "done":
                if shard_readable(shard_path(out, loc.id)):
                    counts["skipped"] += 1
                    continue
                log.warning("location %s: its shard is missing or unreadable: redone", loc.id)
            t1 = time.perf_counter()
            try:
                record, arrays = sample_location(loc, catalog, opts, start, end)
            except Exception as exc:  # noqa: BLE001 - one location's failure never ends the run
                log.warning("location %s failed: %s: %s", loc.id, type(exc).__name__, exc)
                record = {"id": loc.id, "i": loc.i, "j": loc.j, "x": loc.x, "y": loc.y, "lon": round(loc.lon, 7),
                          "lat": round(loc.lat, 7), "state": "failed",
                          "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
                arrays = {}
            if arrays:
                write_shard(shard_path(out, loc.id), **arrays)
                record.update(state="done", shard=f"{SHARDS}/{loc.id}.npz")
            elif record.get("state") != "failed":
                # dropped for good, unless unreadable assets may explain it: then failed, retried by the next run
                record["state"] = "failed" if record.get("unreadable") else "dropped"
                if record["state"] == "failed":
                    scene, band, _, why = record["unreadable"][0]
                    record["reason"] += (f"; {len(record['unreadable'])} asset(s) unreadable (first: {scene} {band}: "
                                         f"{why})")
            journal.append(record)
            records[loc.id] = record
            counts[record["state"]] += 1
            log.info("location %s (%d/%d): %s in %.1f s%s", loc.id, n, len(locations), record["state"],
                     time.perf_counter() - t1, f" ({record['reason']})" if record.get("reason") else "")
        final = [records[loc.id] for loc in locations if loc.id in records]
        journal.rewrite(final)
    states = [r["state"] for r in final]
    summary = {"index": str(journal.path), "locations": len(locations),
               **{s: states.count(s) for s in ("done", "dropped", "failed")},
               "this_run": counts, "seconds": round(time.perf_counter() - t0, 1)}
    failed = [r for r in final if r["state"] == "failed"]
    if failed:
        summary["first_failure"] = f"{failed[0]['id']}: {failed[0].get('reason', '')}"
    return summary


# -- command line ---------------------------------------------------------------------------------------------------
def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2022-06-01") from None


def build_parser(prog: str = "python -m train.sample") -> argparse.ArgumentParser:
    """The options of ``python -m train.sample`` = ``treemap train sample``."""
    from train import Parser

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (index.jsonl, run.json, shards/)")
    p.add_argument("--aoi", help="GeoJSON polygon (EPSG:4326) limiting where to sample")
    p.add_argument("--land", help="land mask: GeoJSON polygons or a raster (nonzero = land), any CRS; without it "
                                   "every grid point in the AOI counts as land")
    p.add_argument("--catalog", default="earth-search", help="a catalog as treemap predict takes (name, URL, file)")
    p.add_argument("--start", type=_day, help="first acquisition date searched (YYYY-MM-DD)")
    p.add_argument("--end", type=_day, help="last acquisition date searched (YYYY-MM-DD)")
    p.add_argument("--spacing-km", type=float, default=23.0, help="grid spacing in km (equal-area CRS)")
    p.add_argument("--grid-origin", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                   help="a grid node, metres in --crs")
    p.add_argument("--crs", default=DEFAULT_CRS, help="equal-area CRS of the grid")
    p.add_argument("--patch-size", type=int, default=256, help="patch edge in 10 m pixels")
    p.add_argument("--window", type=int, default=50, help="edge in pixels of the square around a location whose "
                                                          "phenology gives its seasons")
    p.add_argument("--max-cloud", type=float, default=20.0,
                   help="a scene must have less than this percent of the patch not clear sky (SCL)")
    p.add_argument("--tie-days", type=float, default=2.0,
                   help="scenes this many days farther from the season's middle than the nearest usable one still "
                        "compete on cloud share")
    p.add_argument("--index", choices=("evi", "ndvi"), default="evi", help="vegetation index for the phenology")
    p.add_argument("--min-observations", type=int, default=12,
                   help="clear observations a pixel needs in a year for its phenology")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="shard image type")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the index path")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m train.sample`` and ``treemap train sample``."""
    p = build_parser(*([prog] if prog else []))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        summary = run(args)
    except (TreemapError, ValueError) as exc:
        print(f"{p.prog}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    print(json.dumps(summary) if args.json else summary["index"])
    if summary["failed"]:
        print(f"{p.prog}: error: {summary['failed']} of {summary['locations']} locations failed (first: "
              f"{summary['first_failure']}); run the same command again to retry them", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
