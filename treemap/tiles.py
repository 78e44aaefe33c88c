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
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from treemap import __version__
from treemap.aoi import AOI
from treemap.errors import NoScenesError
from treemap.grid import Tile, TilePlan, scenes_for_tile, to_crs
from treemap.outputs import ProductSpec, write_product, write_tile_raster
from treemap.publish import Staging, check_space, recover
from treemap.scale import ClusterSpec, tile_runner
from treemap.workdir import WORK_DIR, read_done, tile_paths, write_done

log = logging.getLogger("treemap.tiles")


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

    def read(self, tile: Tile) -> Any:
        tile_scenes = scenes_for_tile(list(self.scenes), tile)
        if not tile_scenes:
            log.warning("tile %s: no scenes cover it; left as nodata", tile.id)
            return None
        return self.job.read(tile, tile_scenes, self.local_aoi)

    def finish(self, tile: Tile, inputs: Any) -> dict | None:
        """Compute a tile from its inputs and commit it: raster, then done-marker. None for an uncovered tile."""
        if inputs is None:
            return None
        result = self.job.compute(tile, inputs)
        raster, _ = tile_paths(self.work, tile.id)
        write_tile_raster(raster, tile, result.data, nodata=result.nodata)
        record = {"tile": tile.id, **result.record}
        write_done(self.work, tile.id, record)
        return record


def run_tile(tile: Tile, task: TileTask) -> dict | None:
    """One whole tile (on a dask worker): read, compute, commit."""
    return task.finish(tile, task.read(tile))


def _in_process(task: TileTask, tiles: list[Tile]) -> Iterator[tuple[Tile, dict | None]]:
    """Tiles in order; the next tile is read in a background thread while this one computes (GDAL reads, NumPy,
    numba and torch release the GIL), so at most two tiles' inputs are in memory."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="treemap-prefetch") as pool:
        pending = pool.submit(task.read, tiles[0]) if tiles else None
        for k, tile in enumerate(tiles):
            inputs = pending.result()
            pending = pool.submit(task.read, tiles[k + 1]) if k + 1 < len(tiles) else None
            yield tile, task.finish(tile, inputs)


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


def run_job(job: TileJob, aoi: AOI, plan: TilePlan, scenes: list, out: Path, cluster: ClusterSpec,
            keep_work: bool = False, gpus: int = 0) -> EngineResult:
    """Run a job over every tile of ``plan`` and publish its products into ``out`` (whose lock the caller holds)."""
    root = Path(out).absolute() / WORK_DIR
    recover(Path(out).absolute(), root)
    work = root / f"{job.name}-{fingerprint(job, aoi, plan, scenes)}"
    work.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    for tile in plan.tiles:
        if (record := read_done(work, tile.id)) is not None:
            log.info("tile %s already done; skipping", tile.id)
            records[tile.id] = record
    pending = [tile for tile in plan.tiles if tile.id not in records]
    task = TileTask(job, tuple(scenes), to_crs(aoi.geometry, plan.epsg), work)
    with tile_runner(cluster, len(pending), work, gpus=gpus if pending else 0) as runner:
        finished = _in_process(task, pending) if runner.in_process else runner.map(run_tile, pending, task)
        for k, (tile, record) in enumerate(finished, start=1):
            if record is not None:
                records[tile.id] = record
            log.info("tile %s done (%d/%d)", tile.id, k, len(pending))
    sources = [(tile, tile_paths(work, tile.id)[0]) for tile in plan.tiles if tile.id in records]
    if not sources:
        raise NoScenesError("no tile of the AOI is covered by any scene")
    products = publish(job.products(plan, records), plan, sources, Path(out), root)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return EngineResult(products, records, work)


def publish(specs: list[ProductSpec], plan: TilePlan, sources: list[tuple[Tile, Path]], out: Path,
            root: Path) -> dict[str, Path]:
    """Write every product into a staging folder, verify it, and publish the set (see :mod:`treemap.publish`)."""
    check_space(out, [path for _, path in sources])
    staging = Staging(out, root)
    try:
        for spec in specs:
            write_product(staging.path(spec.filename), plan, sources, spec, final=out / spec.filename)
        staging.publish()
    finally:
        staging.discard()
    return {spec.name: out / spec.filename for spec in specs}
