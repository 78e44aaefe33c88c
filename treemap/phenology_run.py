"""A phenology run: the season timing of every pixel of an AOI for one year, as a COG.

Same path as a mapping run (search, UTM tiles, the lazy cube, per-scene harmonisation and SCL masking), but the tile's
clear-sky series is kept per acquisition instead of composited by month: the vegetation index of each acquisition
goes to :func:`treemap.phenology.phenology_metrics`. The search covers the year plus ``margin_days`` either side so
that cycles crossing the new year are whole. Tiles finish with a done-marker, so an interrupted run resumes; they run
in this process or on a dask cluster (:mod:`treemap.scale`), under the output folder's lock (:mod:`treemap.workdir`).

Products (int16, nodata -32768, one band per metric, band descriptions and units in the band metadata):

* ``phenology.tif``: the 13 bands of :data:`treemap.phenology.METRIC_NAMES`. Transition dates are days of year of
  ``year`` (1 = 1 January; 0 and below or 366 and above for dates in the neighbouring years), rounded as MCD12Q2
  reports them: the first day at or above a threshold on the way up (greenup side rounded up) and the last day at or
  above it on the way down (green-down side rounded down); the peak to the nearest day. Index levels (minimum, peak
  value, amplitude) are stored x 10000 with the band scale 0.0001, so GDAL and QGIS show index units.
* ``seasonal_composites.tif`` (``seasonal=True``): 4 seasons x 10 bands of clear-sky median reflectance around
  each season's middle (:class:`treemap.phenology.tile.SeasonalCompositor`), x 10000 with scale 0.0001.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from treemap import __version__
from treemap.aoi import read_aoi
from treemap.composite import acquisition_blocks
from treemap.cube import TileCube
from treemap.errors import DateRangeError, NoScenesError, TreemapError
from treemap.grid import Tile, TilePlan, plan_tiles, to_crs
from treemap.outputs import NODATA_I16, ensure_writable_dir, write_cog_mosaic, write_tile_raster
from treemap.run import RunSummary, core_mask, scenes_for_tile
from treemap.scale import ClusterSpec, tile_runner
from treemap.stac import Query, Scene, open_catalog
from treemap.workdir import WORK_DIR, read_done, tile_paths, work_lock, write_done

log = logging.getLogger("treemap.phenology")

#: Scale of the index levels and reflectance in the int16 products.
LEVEL_SCALE = 1e-4
_DATE_UP = ("greenup", "midgreenup", "maturity")
_DATE_DOWN = ("senescence", "midgreendown", "dormancy")
_LEVELS = ("minimum", "peak_value", "amplitude")
#: Names of the QA codes 0..4 in the run summary (see :data:`treemap.phenology.QA_CODES`).
QA_KEYS = ("good", "few_observations", "no_cycle", "partial", "gap")
_UNITS = {"season_length": "days", "n_clear": "count", "qa": "code"}


@dataclass(frozen=True)
class PhenologyRequest:
    aoi: Path
    out: Path
    year: int
    catalog: str = "earth-search"
    index: str = "evi"
    margin_days: int = 183
    max_cloud: float = 100.0
    tile_size: int = 512
    min_observations: int = 12
    seasonal: bool = False
    keep_work: bool = False
    scheduler: str | None = None  # an existing dask scheduler's address or scheduler file; None: this machine
    workers: int | None = None  # worker processes on this machine (None: one per CPU core)

    def cluster(self) -> ClusterSpec:
        return ClusterSpec(scheduler=self.scheduler, workers=self.workers)


@dataclass(frozen=True)
class PhenologyRunResult(RunSummary):
    year: int = 0
    qa_counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**super().to_json(), "year": self.year, "qa_counts": self.qa_counts}


def search_window(year: int, margin_days: int) -> tuple[date, date]:
    """The acquisition dates a phenology run reads: the year and ``margin_days`` either side."""
    return date(year, 1, 1) - timedelta(days=margin_days), date(year, 12, 31) + timedelta(days=margin_days)


def encode_metrics(data: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Float metrics (bands, H, W), NaN where undefined -> int16 with :data:`NODATA_I16` (see the module doc)."""
    out = np.full(data.shape, NODATA_I16, dtype=np.int16)
    for i, name in enumerate(names):
        v = data[i].astype(np.float64)
        if name in _DATE_UP:
            v = np.ceil(v - 1e-6)
        elif name in _DATE_DOWN:
            v = np.floor(v + 1e-6)
        elif name in _LEVELS:
            v = np.rint(v / LEVEL_SCALE)
        else:
            v = np.rint(v)
        ok = np.isfinite(v)
        out[i][ok] = np.clip(v[ok], -32767, 32767).astype(np.int16)
    return out


def encode_reflectance(refl: np.ndarray) -> np.ndarray:
    """Reflectance (float, NaN = none) -> int16 x 10000 with :data:`NODATA_I16`."""
    v = np.rint(refl.astype(np.float64) / LEVEL_SCALE)
    out = np.full(refl.shape, NODATA_I16, dtype=np.int16)
    ok = np.isfinite(v)
    out[ok] = np.clip(v[ok], -32767, 32767).astype(np.int16)
    return out


def _fingerprint(request: PhenologyRequest, aoi, plan: TilePlan, scenes) -> str:
    payload = {"version": __version__, "aoi": aoi.to_geojson(),
               "plan": [plan.epsg, plan.resolution, list(plan.bounds), plan.tile_size, plan.halo],
               "scenes": [s.id for s in scenes], "year": request.year, "index": request.index,
               "min_observations": request.min_observations, "seasonal": request.seasonal}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def core_index(tile: Tile) -> tuple[slice, ...]:
    """Index of a tile's core pixels in a (T, bands, H, W) block of its halo-padded read grid."""
    return (slice(None), slice(None), slice(tile.halo, tile.halo + tile.height),
            slice(tile.halo, tile.halo + tile.width))


def tile_series(cube: TileCube, index: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The core pixels' index series of a tile: dates (T,) datetime64[D], values and clear mask (T, H * W)."""
    from treemap.phenology.tile import vegetation_index

    core = core_index(cube.tile)
    dates, values, clear = [], [], []
    for groups, refl in acquisition_blocks(cube):
        vi, ok = vegetation_index(refl[core], index)
        values.append(vi.reshape(len(groups), -1))
        clear.append(ok.reshape(len(groups), -1))
        dates.extend(np.datetime64(g.key[1], "D") for g in groups)
    return np.array(dates, dtype="datetime64[D]"), np.concatenate(values), np.concatenate(clear)


def process_tile(tile: Tile, scenes, local_aoi, request: PhenologyRequest, work: Path) -> Path | None:
    """Phenology (and seasonal composites) of one tile, written to the work folder with a done-marker."""
    from treemap.phenology import METRIC_NAMES, phenology_metrics
    from treemap.phenology.tile import SeasonalCompositor, metric_stack

    path, _ = tile_paths(work, tile.id)
    if read_done(work, tile.id) is not None:
        log.info("tile %s already done; skipping", tile.id)
        return path
    tile_scenes = scenes_for_tile(scenes, tile)
    if not tile_scenes:
        log.warning("tile %s: no scenes cover it; left as nodata", tile.id)
        return None
    cube = TileCube(tile_scenes, tile)
    dates, values, clear = tile_series(cube, request.index)
    inside = core_mask(tile, local_aoi).ravel()
    clear &= inside[None, :]
    result = phenology_metrics(dates, values, clear, request.year, min_observations=request.min_observations)
    del values, clear
    data = encode_metrics(metric_stack(result, (tile.height, tile.width)), METRIC_NAMES)
    data[:, ~inside.reshape(tile.height, tile.width)] = NODATA_I16
    if request.seasonal:
        core = core_index(tile)
        comp = SeasonalCompositor(dates, result, (tile.height, tile.width), 10)
        for groups, refl in acquisition_blocks(cube):
            comp.add([g.key[1] for g in groups], refl[core])
        seasons = encode_reflectance(comp.result()).reshape(40, tile.height, tile.width)
        seasons[:, ~inside.reshape(tile.height, tile.width)] = NODATA_I16
        data = np.concatenate([data, seasons])
    write_tile_raster(path, tile, data, nodata=NODATA_I16)
    qa = result.qa[inside]
    write_done(work, tile.id, {"tile": tile.id, "scenes": len(tile_scenes), "dates": int(dates.shape[0]),
                               "qa": np.bincount(qa, minlength=5).tolist()})
    return path


@dataclass(frozen=True)
class PhenologyJob:
    """Everything a worker needs for any tile of a run; sent to a cluster once per run."""

    request: PhenologyRequest
    scenes: tuple[Scene, ...]
    local_aoi: Any
    work: Path


def phenology_tile_task(tile: Tile, job: PhenologyJob) -> Path | None:
    """One whole tile (in this process or on a worker): :func:`process_tile`."""
    return process_tile(tile, list(job.scenes), job.local_aoi, job.request, job.work)


def run_phenology(request: PhenologyRequest) -> PhenologyRunResult:
    """Run a phenology job and return the products written."""
    if request.index not in ("evi", "ndvi"):
        raise TreemapError(f"unknown index {request.index!r}: use evi or ndvi")
    if not 1 <= request.year <= 9998 or request.margin_days < 0:
        raise DateRangeError(f"invalid year {request.year} or margin {request.margin_days}")
    cluster = request.cluster()
    aoi = read_aoi(request.aoi)
    start, end = search_window(request.year, request.margin_days)
    out = ensure_writable_dir(Path(request.out))
    with work_lock(out):
        return _run_phenology(request, cluster, aoi, start, end, out)


def _run_phenology(request: PhenologyRequest, cluster: ClusterSpec, aoi, start: date, end: date,
                   out: Path) -> PhenologyRunResult:
    catalog = open_catalog(request.catalog)
    scenes = catalog.search(Query(bbox=aoi.bounds, start=start, end=end, max_cloud=request.max_cloud))
    if not scenes:
        raise NoScenesError(f"no Sentinel-2 L2A scenes in {catalog.name} for the AOI between {start} and {end}")
    log.info("%d scenes from %s between %s and %s", len(scenes), catalog.name, start, end)
    plan = plan_tiles(aoi, tile_size=request.tile_size)
    local_aoi = to_crs(aoi.geometry, plan.epsg)
    work = (out / WORK_DIR / ("phenology-" + _fingerprint(request, aoi, plan, scenes))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {}
    for tile in plan.tiles:
        if read_done(work, tile.id) is not None:
            log.info("tile %s already done; skipping", tile.id)
            paths[tile.id] = tile_paths(work, tile.id)[0]
    pending = [tile for tile in plan.tiles if tile.id not in paths]
    with tile_runner(cluster, len(pending), work) as runner:
        job = PhenologyJob(request, tuple(scenes), local_aoi, work)
        for k, (tile, path) in enumerate(runner.map(phenology_tile_task, pending, job), start=1):
            paths[tile.id] = path
            log.info("tile %s done (%d/%d)", tile.id, k, len(pending))
    sources = []
    qa_total = np.zeros(5, dtype=np.int64)
    for tile in plan.tiles:
        path = paths[tile.id]
        if path is not None:
            sources.append((tile, path))
            record = read_done(work, tile.id) or {"qa": [0] * 5}
            qa_total += np.asarray(record["qa"][:5], dtype=np.int64)
    if not sources:
        raise NoScenesError("no tile of the AOI is covered by any scene")
    products = write_phenology_products(out, plan, sources, request, start, end, len(scenes))
    if not request.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    qa_counts = {name: int(c) for name, c in zip(QA_KEYS, qa_total)}
    return PhenologyRunResult(products, plan.epsg, plan.bounds, len(plan.tiles), len(scenes), start, end,
                              request.year, qa_counts)


def write_phenology_products(out: Path, plan: TilePlan, sources, request: PhenologyRequest, start: date, end: date,
                             n_scenes: int) -> dict[str, Path]:
    from treemap.phenology import METRIC_DESCRIPTIONS, METRIC_NAMES, SEASONS
    from treemap.phenology.tile import BAND_ORDER

    tags = {"TREEMAP_VERSION": __version__, "TREEMAP_PERIOD": f"{start.isoformat()}/{end.isoformat()}",
            "TREEMAP_SCENES": str(n_scenes), "TREEMAP_YEAR": str(request.year),
            "TREEMAP_INDEX": request.index.upper(),
            "TREEMAP_DAY_OF_YEAR": f"dates are days of year of {request.year}: 1 = {request.year}-01-01"}
    bands = []
    for name, description in zip(METRIC_NAMES, METRIC_DESCRIPTIONS):
        band = {"description": name, "metadata": {"long_name": description}}
        if name in _LEVELS:
            band.update(scale=LEVEL_SCALE, offset=0.0)
            band["metadata"]["unit"] = request.index.upper()
        else:
            band["metadata"]["unit"] = _UNITS.get(name, f"day of year {request.year}")
        bands.append(band)
    products = {"phenology": write_cog_mosaic(out / "phenology.tif", plan, sources, bands, tags=tags,
                                              dtype="int16", nodata=NODATA_I16)}
    if request.seasonal:
        season_bands = [{"description": f"{season} {band}", "scale": LEVEL_SCALE, "offset": 0.0,
                         "metadata": {"season": season, "band": band, "unit": "reflectance"}}
                        for season in SEASONS for band in BAND_ORDER]
        products["seasonal_composites"] = write_cog_mosaic(
            out / "seasonal_composites.tif", plan, sources, season_bands, tags=tags, resampling="AVERAGE",
            source_band_offset=len(METRIC_NAMES), dtype="int16", nodata=NODATA_I16)
    return products
