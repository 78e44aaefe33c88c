"""The tile engine: one outline for every per-tile job (predict, phenology, and the jobs to come).

A job is a small object (:class:`TileJob`) that says what it reads for a tile, what it computes from that, and which
products it mosaics from the tile rasters. The engine does the rest, the same way for every job:

1. the work folder ``OUT/.treemap-work/<job>-<fingerprint>/``, where the fingerprint identifies the job's inputs
   (AOI, grid, scenes and whatever the job adds), so a rerun of the same job resumes and another job starts afresh;
2. skip the tiles that have a done-marker (:mod:`treemap.workdir`);
3. run the others in this process, reading the next tile in a background thread while this one computes, or on a
   dask cluster (:mod:`treemap.scale`);
4. commit each tile: its raster (written, synced and read back, :mod:`treemap.durable`), then its done-marker;
5. publish the products: free-space check, every COG written into a staging folder and verified, then renamed into
   ``OUT`` as a set (:mod:`treemap.publish`); the work folder is removed only after that.

A crash at any point leaves whole tiles and either the previous or the new product set; the next run of the same job
recomputes only the missing tiles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from treemap import __version__
from treemap.aoi import AOI
from treemap.cube import NoSceneReachesTile
from treemap.durable import atomic_write_bytes, atomic_write_json, write_error
from treemap.errors import NoScenesError, TilesFailedError, WriteError
from treemap.io_env import DEFAULT_MAX_UNREADABLE
from treemap.grid import Tile, TilePlan, scenes_for_tile, to_crs
from treemap.outputs import ProductSpec, write_product, write_tile_raster
from treemap.progress import run_progress
from treemap.publish import Staging, check_space, recover
from treemap.scale import ClusterSpec, tile_runner
from treemap.workdir import WORK_DIR, read_done, tile_paths, write_done

log = logging.getLogger("treemap.tiles")

MANIFEST = "manifest.json"
LOG_NAME = "treemap.log"


@dataclass(frozen=True)
class TileResult:
    """What a job computed for one tile: the tile raster's bands (B, H, W) and the facts its done-marker keeps
    (JSON values: scene counts, unreadable assets, QA counts ...)."""

    data: np.ndarray
    nodata: int | float
    record: dict = field(default_factory=dict)


class TileJob(Protocol):
    """A per-tile job. It must pickle (it is sent to dask workers once per run) and hold absolute paths only."""

    #: Prefix of the job's work folder (``predict``, ``phenology`` ...).
    name: str

    def fingerprint(self) -> dict:
        """The job's own inputs that decide its results (model, species, index ...), as JSON values."""

    def read(self, tile: Tile, scenes: list, local_aoi) -> Any:
        """The tile's inputs, read from the scenes that cover it (I/O; runs beside the previous tile's compute)."""

    def compute(self, tile: Tile, inputs: Any) -> TileResult:
        """The tile raster and its record from the inputs."""

    def products(self, plan: TilePlan, records: dict[str, dict]) -> list[ProductSpec]:
        """The products mosaicked from the tile rasters, given every finished tile's record."""


@dataclass(frozen=True)
class RunSummary:
    """What every run reports: its products and where and when it looked."""

    products: dict[str, Path]
    epsg: int
    bounds: tuple[float, float, float, float]
    tiles: int
    scenes: int
    start: date
    end: date

    def to_json(self) -> dict:
        return {"products": {k: str(v) for k, v in self.products.items()}, "epsg": self.epsg,
                "bounds": list(self.bounds), "tiles": self.tiles, "scenes": self.scenes,
                "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class EngineResult:
    products: dict[str, Path]
    records: dict[str, dict]  # tile id -> done-record, for the tiles that were covered by scenes
    work: Path


@dataclass(frozen=True)
class TileTask:
    """Everything needed for any tile of a run; sent to a cluster once."""

    job: Any
    scenes: tuple
    local_aoi: Any
    work: Path
    max_unreadable: float = DEFAULT_MAX_UNREADABLE

    def read(self, tile: Tile) -> Any:
        """The tile's inputs; None when no scene covers it; a :class:`TileFailure` when reading failed."""
        tile_scenes = scenes_for_tile(list(self.scenes), tile)
        if not tile_scenes:
            log.warning("tile %s: no scenes cover it; left as nodata", tile.id)
            return None
        try:
            return self.job.read(tile, tile_scenes, self.local_aoi)
        except NoSceneReachesTile:
            log.warning("tile %s: no scene has pixels on it; left as nodata", tile.id)
            return None
        except (WriteError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one tile is that tile's, recorded in the manifest
            return TileFailure.of(tile, "reading", exc)

    def finish(self, tile: Tile, inputs: Any) -> dict | None:
        """Compute a tile from its inputs and commit it: raster, then done-marker. None for an uncovered tile; a
        record with ``failed`` for a tile that failed (nothing of it is committed)."""
        if inputs is None:
            return None
        if isinstance(inputs, TileFailure):
            return inputs.record()
        try:
            result = self.job.compute(tile, inputs)
        except (WriteError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - as in read()
            return TileFailure.of(tile, "computing", exc).record()
        unreadable, assets = len(result.record.get("unreadable", [])), result.record.get("assets", 0)
        if assets and unreadable / assets > self.max_unreadable:
            failure = TileFailure(tile.id, f"{unreadable} of {assets} assets are unreadable, more than "
                                           f"--max-unreadable {self.max_unreadable:g} allows")
            log.error("tile %s: %s", tile.id, failure.reason)
            return failure.record()
        raster, _ = tile_paths(self.work, tile.id)
        write_tile_raster(raster, tile, result.data, nodata=result.nodata)
        record = {"tile": tile.id, **result.record}
        write_done(self.work, tile.id, record)
        return record


@dataclass(frozen=True)
class TileFailure:
    """A tile that could not be done, and why, in one line."""

    tile: str
    reason: str

    @classmethod
    def of(cls, tile: Tile, stage: str, exc: BaseException) -> "TileFailure":
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        reason = f"{stage} failed: {text or type(exc).__name__}"
        log.error("tile %s: %s", tile.id, reason)
        log.debug("tile %s failed", tile.id, exc_info=exc)
        return cls(tile.id, reason)

    def record(self) -> dict:
        return {"tile": self.tile, "failed": self.reason}


def run_tile(tile: Tile, task: TileTask) -> dict | None:
    """One whole tile (on a dask worker): read, compute, commit."""
    return task.finish(tile, task.read(tile))


def prefetch_enabled(job: Any = None) -> bool:
    """Whether an in-process run reads the next tile while this one computes: ``TREEMAP_PREFETCH`` (1/0) when set,
    else when the job computes on a GPU (``job.computes_on_gpu()``). On the CPU both phases want the same cores:
    measured on 2 cores (4 tiles of 512 px), prefetching saved 8 % of the wall time for
    about 35 % more peak memory."""
    value = os.environ.get("TREEMAP_PREFETCH", "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    on_gpu = getattr(job, "computes_on_gpu", None)
    return bool(on_gpu()) if callable(on_gpu) else False


def _in_process(task: TileTask, tiles: list[Tile]) -> Iterator[tuple[Tile, dict | None]]:
    """Tiles in order. With prefetching (:func:`prefetch_enabled`) the next tile is read in a background thread
    while this one computes (GDAL reads, NumPy, numba and torch release the GIL), so at most two tiles' inputs are
    in memory; without it each tile is read after the previous one is done (one tile's working set)."""
    if not prefetch_enabled(task.job):
        for tile in tiles:
            yield tile, task.finish(tile, task.read(tile))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="treemap-prefetch") as pool:
        pending = pool.submit(task.read, tiles[0]) if tiles else None
        for k, tile in enumerate(tiles):
            inputs = pending.result()
            pending = pool.submit(task.read, tiles[k + 1]) if k + 1 < len(tiles) else None
            yield tile, task.finish(tile, inputs)


def unreadable_assets(plan: TilePlan, records: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """The unreadable assets (scene, band, href, reason) of every finished tile, once each (by href), in tile
    order."""
    found: dict[str, tuple[str, str, str, str]] = {}
    for tile in plan.tiles:
        for entry in records.get(tile.id, {}).get("unreadable", []):
            found.setdefault(entry[2], tuple(entry))
    return list(found.values())


def unreadable_tags(assets: list[tuple[str, str, str, str]]) -> dict[str, str]:
    """Product tags naming the unreadable assets (hrefs without their query string, which may hold a token)."""
    listed = [{"scene": s, "band": b, "href": h.split("?", 1)[0], "reason": r} for s, b, h, r in assets]
    return {"TREEMAP_UNREADABLE_ASSETS": str(len(assets)),
            "TREEMAP_UNREADABLE_ASSET_LIST": json.dumps(listed, separators=(",", ":"))}


def fingerprint(job: TileJob, aoi: AOI, plan: TilePlan, scenes: list) -> str:
    payload = {
        "version": __version__,
        "job": job.name,
        "aoi": aoi.to_geojson(),
        "plan": [plan.epsg, plan.resolution, list(plan.bounds), plan.tile_size, plan.halo],
        "scenes": [s.id for s in scenes],
        "inputs": job.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]



def find_scenes(catalog_ref: str, aoi: AOI, start: date, end: date, max_cloud: float = 100.0) -> list:
    """The scenes of a catalog whose footprint meets the AOI between two dates; :class:`NoScenesError` for none."""
    from treemap.stac import Query, open_catalog

    catalog = open_catalog(catalog_ref)
    scenes = catalog.search(Query(bbox=aoi.bounds, start=start, end=end, max_cloud=max_cloud, geometry=aoi.geometry))
    if not scenes:
        raise NoScenesError(no_scenes_message(catalog.name, aoi, start, end, max_cloud))
    log.info("%d scenes from %s between %s and %s", len(scenes), catalog.name, start, end)
    return scenes


def no_scenes_message(catalog: str, aoi: AOI, start: date, end: date, max_cloud: float = 100.0,
                      today: date | None = None) -> str:
    """Why a search found nothing, with what helps the user see a mistake: where the AOI is (lon, lat), a period in
    the future, and the lat/lon swap that puts an AOI in the wrong place."""
    today = today or date.today()
    centre = aoi.geometry.centroid
    text = (f"no Sentinel-2 L2A scenes in {catalog} for the AOI (centre lon {centre.x:.4f}, lat {centre.y:.4f}) "
            f"between {start} and {end}" + (f" with at most {max_cloud:g} % cloud" if max_cloud < 100 else ""))
    if start > today:
        text += f"; that period has not begun (today is {today})"
    elif end > today:
        text += f"; only the part until today ({today}) can have scenes"
    if abs(centre.x) <= 90 and abs(centre.y) <= 90 and abs(centre.x - centre.y) > 1:
        text += "; if that centre is not where you mean, the AOI may be written lat, lon: GeoJSON wants lon, lat"
    return text


def run_job(job: TileJob, aoi: AOI, plan: TilePlan, scenes: list, out: Path, cluster: ClusterSpec,
            keep_work: bool = False, gpus: int = 0,
            max_unreadable: float = DEFAULT_MAX_UNREADABLE) -> EngineResult:
    """Run a job over every tile of ``plan`` and publish its products into ``out`` (whose lock the caller holds).

    A tile that fails (reading, computing, or more than ``max_unreadable`` of its assets unreadable) is recorded
    in the work folder's ``manifest.json``; the other tiles still finish, no product is written, and
    :class:`TilesFailedError` ends the run. The next run of the same job retries only the tiles without a
    done-marker. A write failure (:class:`WriteError`) ends the run at once."""
    root = Path(out).absolute() / WORK_DIR
    recover(Path(out).absolute(), root)
    work = root / f"{job.name}-{fingerprint(job, aoi, plan, scenes)}"
    work.mkdir(parents=True, exist_ok=True)
    with run_log(work, job, plan, scenes) as log_path:
        records: dict[str, dict] = {}
        for tile in plan.tiles:
            if (record := read_done(work, tile.id)) is not None:
                log.info("tile %s already done; skipping", tile.id)
                records[tile.id] = record
        pending = [tile for tile in plan.tiles if tile.id not in records]
        task = TileTask(job, tuple(scenes), to_crs(aoi.geometry, plan.epsg), work, max_unreadable)
        failed: dict[str, str] = {}
        started = time.monotonic()
        with tile_runner(cluster, len(pending), work, gpus=gpus if pending else 0) as runner, \
                run_progress(pending, len(scenes)) as progress:
            finished = _in_process(task, pending) if runner.in_process else runner.map(run_tile, pending, task)
            for tile, record in finished:
                if record is not None and "failed" in record:
                    failed[tile.id] = record["failed"]
                elif record is not None:
                    records[tile.id] = record
                progress.tile_finished(tile, record)
        tiles_s = time.monotonic() - started
        log.info("%d tile(s) computed in %.1f s", len(pending), tiles_s)
        write_manifest(work, plan, records, failed)
        if failed:
            tile_id, reason = next(iter(failed.items()))
            raise TilesFailedError(
                f"{len(failed)} of {len(plan.tiles)} tiles failed (first: tile {tile_id}: {reason}); no products "
                f"were written, the finished tiles are kept, and a rerun retries only the failed ones (see "
                f"{work / MANIFEST})")
        sources = [(tile, tile_paths(work, tile.id)[0]) for tile in plan.tiles if tile.id in records]
        if not sources:
            raise NoScenesError("no tile of the AOI is covered by any scene")
        for scene, band, href, reason in unreadable_assets(plan, records):
            log.warning("unreadable asset read as nodata: scene %s band %s (%s): %s", scene, band, reason,
                        href.split("?", 1)[0])
        started = time.monotonic()
        specs = job.products(plan, records)
        timings = {"tiles_s": round(tiles_s, 3)}

        def sidecars(staged: dict[str, Path], folder: Path) -> None:
            extra = getattr(job, "sidecars", None)
            if extra is not None:
                extra(staged, folder, plan, records)
            write_run_item(job, staged, specs, plan, scenes, records, work.name, timings, folder)

        products = publish(specs, plan, sources, Path(out), root, log_path, sidecars)
        log.info("products published in %.1f s", time.monotonic() - started)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return EngineResult(products, records, work)


def write_run_item(job: TileJob, staged: dict[str, Path], specs: list[ProductSpec], plan: TilePlan, scenes: list,
                   records: dict[str, dict], run_id: str, timings: dict, folder: Path) -> Path:
    """``item.json``: the STAC item of the run (:mod:`treemap.run_item`), beside the staged products, with the
    run's provenance (job and its parameters, input scenes, unreadable assets, timings, and what the job adds)."""
    from treemap.run_item import ITEM_NAME, run_item
    from treemap.run_item import write_run_item as write_item

    provenance = {"job": job.name, "run_id": run_id, "parameters": job.fingerprint(),
                  "scenes": sorted(s.id for s in scenes), "timings": timings,
                  "unreadable_assets": unreadable_assets(plan, records)}
    extra = getattr(job, "provenance", None)
    if extra is not None:
        provenance.update(extra())
    item = run_item(f"treemap-{run_id}", staged, specs, plan, job.start, job.end, provenance)
    return write_item(item, folder / ITEM_NAME)


def write_manifest(work: Path, plan: TilePlan, records: dict[str, dict], failed: dict[str, str]) -> Path:
    """``manifest.json`` in the work folder: every tile's state (done, failed with its error, or empty)."""
    tiles = {}
    for tile in plan.tiles:
        if tile.id in failed:
            tiles[tile.id] = {"state": "failed", "error": failed[tile.id]}
        else:
            tiles[tile.id] = {"state": "done" if tile.id in records else "empty"}
    return atomic_write_json(work / MANIFEST, {"tiles": tiles, "failed": len(failed)})


class _LogFile(logging.FileHandler):
    """The run's log file. Best effort: when it cannot be written (the disk is full) it stops quietly, instead of
    printing a traceback per message; the failure that matters is reported by the write that needed the space."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.setLevel(logging.CRITICAL + 1)


@contextmanager
def run_log(work: Path, job: TileJob, plan: TilePlan, scenes: list) -> Iterator[Path]:
    """``treemap.log`` in the work folder for the duration of a run: the job's parameters, the scene count, every
    message of INFO and above (warnings included) and the timings. It is published beside the products."""
    path = work / LOG_NAME
    handler = _LogFile(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("treemap")
    saved_level, saved_console = root.level, [(h, h.level) for h in root.handlers]
    if root.getEffectiveLevel() > logging.INFO:  # -q: the file still gets INFO, the console keeps its level
        for h, _ in saved_console:
            h.setLevel(max(h.level, root.getEffectiveLevel()))
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        log.info("treemap %s %s: %s", __version__, job.name, json.dumps(job.fingerprint(), default=str))
        log.info("grid EPSG:%d, %d x %d px, %d tile(s) of %d px; %d scene(s)", plan.epsg, plan.width, plan.height,
                 len(plan.tiles), plan.tile_size, len(scenes))
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        for h, level in saved_console:
            h.setLevel(level)
        handler.close()


def publish(specs: list[ProductSpec], plan: TilePlan, sources: list[tuple[Tile, Path]], out: Path,
            root: Path, log_path: Path | None = None,
            sidecars: Callable[[dict[str, Path], Path], None] | None = None) -> dict[str, Path]:
    """Write every product into a staging folder, verify it, and publish the set (see :mod:`treemap.publish`),
    with each product's QGIS style (``NAME.qml``), the run's log as ``treemap.log`` and whatever ``sidecars``
    (called with the staged products and the staging folder) adds beside them."""
    from treemap.qml import write_qml

    check_space(out, [path for _, path in sources])
    staging = Staging(out, root)
    try:
        staged = {}
        for spec in specs:
            staged[spec.name] = write_product(staging.path(spec.filename), plan, sources, spec,
                                              final=out / spec.filename)
            if spec.style is not None:
                write_qml(staging.path(f"{spec.name}.qml"), spec.style)
        if log_path is not None and log_path.exists():
            try:
                atomic_write_bytes(staging.path(LOG_NAME), log_path.read_bytes())
            except OSError as exc:
                raise write_error(out / LOG_NAME, exc) from None
        if sidecars is not None:
            sidecars(staged, staging.dir)
        staging.publish()
    finally:
        staging.discard()
    return {spec.name: out / spec.filename for spec in specs}
