"""A mapping run: validate the request, search, plan tiles, process each tile, mosaic the products.

Tiles are processed independently and finish with a done-marker in the run's work folder, so a run that crashed
resumes where it stopped when started again with the same request. Where the tiles run (this process, a local dask
cluster or an existing one) is :mod:`treemap.scale`'s business; a lock on the output folder keeps a second run out
(:mod:`treemap.workdir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rasterio.features import geometry_mask

from treemap import __version__
from treemap.cache import cache_root, file_sha256
from treemap.aoi import AOI, read_aoi
from treemap.composite import monthly_composites
from treemap.cube import TileCube
from treemap.errors import ModelError, NoScenesError
from treemap.grid import Tile, TilePlan, lonlat_bbox, pixel_centres_lonlat, plan_tiles, to_crs
from treemap.infer import InferenceSpec, SpeciesPredictor
from treemap.outputs import (NODATA_U8, PROB_SCALE, class_colours, dominant_class, encode_probability,
                             ensure_writable_dir, write_cog_mosaic, write_tile_raster)
from treemap.scale import ClusterSpec, tile_runner, worker_index
from treemap.stac import Query, Scene, open_catalog
from treemap.stac.search import date_window
from treemap.taxonomy import SpeciesList, demo_species_list, load_species_list
from treemap.workdir import WORK_DIR, read_done, tile_paths, work_lock, write_done

log = logging.getLogger("treemap.run")


@dataclass(frozen=True)
class PredictRequest:
    aoi: Path
    out: Path
    catalog: str = "earth-search"
    start: date | None = None
    end: date | None = None
    max_cloud: float = 100.0
    tile_size: int = 512
    model: Path | str | None = None  # a checkpoint path, or "demo"
    species: Path | str | None = None  # a species-list CSV, or "demo"
    batch_size: int = 4096
    device: str = "auto"
    keep_work: bool = False
    head: Path | None = None  # a few-shot head file (treemap fewshot): classifies its own species
    top_k: int = 0  # also write top_species.tif with the k most probable species per pixel
    scheduler: str | None = None  # an existing dask scheduler's address or scheduler file; None: this machine
    workers: int | None = None  # worker processes on this machine (None: one per CPU core, or per GPU on CUDA)

    def cluster(self) -> ClusterSpec:
        return ClusterSpec(scheduler=self.scheduler, workers=self.workers)


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
class PredictResult(RunSummary):
    species: tuple[str, ...] = field(default=())
    unreadable: tuple[tuple[str, str, str, str], ...] = ()

    def to_json(self) -> dict:
        return {**super().to_json(), "species": list(self.species),
                "unreadable_assets": [dict(zip(("scene", "band", "href", "reason"), u)) for u in self.unreadable]}


resolve_dates = date_window


def resolve_model(model_ref: str | Path):
    """``(model, card, model_key)`` for a checkpoint path or ``demo`` (the built-in demo model). The key is a
    digest of the weights file: text-feature caches and few-shot heads are tied to it."""
    from treemap.models.checkpoint import demo_model, load_model

    if str(model_ref) == "demo":
        model, card = demo_model()
        return model, card, hashlib.sha256(("demo:" + card.to_json()).encode()).hexdigest()
    model, card = load_model(model_ref)
    return model, card, file_sha256(model_ref)


def _load_model(request: PredictRequest):
    """The model, species list and head of a run. ``demo`` names the built-in demo model / species list, which
    are also the defaults for the demo catalog; any other catalog needs --model and --species (or --head)."""
    from treemap.heads import load_head

    is_demo = request.catalog == "demo"
    model_ref = request.model if request.model is not None else ("demo" if is_demo else None)
    if model_ref is None:
        raise ModelError("--model is required outside the demo catalog (e.g. an imported GGT_6M checkpoint)")
    head = None
    if request.head is not None:
        if request.species is not None:
            raise ModelError("--head classifies the species it was fitted on: leave out --species")
        head = load_head(request.head)
    species_ref = request.species if request.species is not None else ("demo" if is_demo else None)
    if species_ref is None and head is None:
        raise ModelError("--species is required: a CSV with level0, level1_family, level2_genus, level3_species")
    model, card, model_key = resolve_model(model_ref)
    if head is not None:
        if head.model_key != model_key:
            raise ModelError(f"head {request.head} was fitted on another model than {model_ref}")
        if head.embed_dim != model.config.embed_dim:
            raise ModelError(f"head {request.head} expects {head.embed_dim}-dim embeddings, the model gives "
                             f"{model.config.embed_dim}")
        species = head.species
    else:
        species = demo_species_list() if str(species_ref) == "demo" else load_species_list(species_ref)
    if card.normalisation == "batch":
        log.warning("the model uses per-batch input normalisation (the official recipe): values depend on how "
                    "pixels are batched, so maps can show tile seams; import it with fixed statistics to avoid this")
    if request.top_k > len(species):
        raise ModelError(f"--top-k {request.top_k} is more than the {len(species)} species of the list")
    return model, card, species, model_key, head


def _fingerprint(aoi: AOI, plan: TilePlan, scenes: list[Scene], species: SpeciesList, model_key: str,
                 head_key: str | None = None, top_k: int = 0) -> str:
    """Identifies a run's inputs: a work folder is only resumed by the same AOI, grid, scenes, species, model, head
    and top-k."""
    payload = {
        "version": __version__,
        "aoi": aoi.to_geojson(),
        "plan": [plan.epsg, plan.resolution, list(plan.bounds), plan.tile_size, plan.halo],
        "scenes": [s.id for s in scenes],
        "species": list(species.prompts),
        "model": model_key,
        "head": head_key,
        "top_k": top_k,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def scenes_for_tile(scenes: list[Scene], tile: Tile) -> list[Scene]:
    """The scenes whose footprint box meets the tile's read bounds."""
    w, s, e, n = lonlat_bbox(tile.read_bounds, tile.epsg)
    return [sc for sc in scenes if sc.bbox[0] <= e and w <= sc.bbox[2] and sc.bbox[1] <= n and s <= sc.bbox[3]]


def core_mask(tile: Tile, local_aoi) -> np.ndarray:
    """(H, W) bool over the tile's core: True for pixels whose centre lies in the AOI (in the plan's CRS)."""
    from rasterio.transform import from_origin

    x0, _, _, y1 = tile.core_bounds
    return geometry_mask([local_aoi], out_shape=(tile.height, tile.width), invert=True,
                         transform=from_origin(x0, y1, tile.resolution, tile.resolution))


@dataclass(frozen=True)
class TileOutcome:
    path: Path | None
    unreadable: tuple[tuple[str, str, str, str], ...] = ()  # (scene id, band, href, reason)


@dataclass(frozen=True)
class PreparedTile:
    """A tile's inputs, read and composited, ready for the encoder (or ``outcome`` when there is nothing to do)."""

    tile: Tile
    composites: np.ndarray | None = None
    valid: np.ndarray | None = None
    n_scenes: int = 0
    unreadable: tuple[tuple[str, str, str, str], ...] = ()
    outcome: TileOutcome | None = None  # set for tiles already done or not covered


def done_outcome(work: Path, tile: Tile) -> TileOutcome | None:
    """The outcome of a tile finished by an earlier (or crashed) run, or None."""
    record = read_done(work, tile.id)
    if record is None:
        return None
    return TileOutcome(tile_paths(work, tile.id)[0], tuple(tuple(u) for u in record.get("unreadable", [])))


def prepare_tile(tile: Tile, scenes: list[Scene], local_aoi, work: Path) -> PreparedTile:
    """Read and composite one tile (I/O and NumPy: runs beside the encoder of the previous tile)."""
    done = done_outcome(work, tile)
    if done is not None:
        log.info("tile %s already done; skipping", tile.id)
        return PreparedTile(tile, outcome=done)
    tile_scenes = scenes_for_tile(scenes, tile)
    if not tile_scenes:
        log.warning("tile %s: no scenes cover it; left as nodata", tile.id)
        return PreparedTile(tile, outcome=TileOutcome(None))
    cube = TileCube(tile_scenes, tile)
    composites, _ = monthly_composites(cube)
    return PreparedTile(tile, composites, core_mask(tile, local_aoi), len(tile_scenes), tuple(cube.unreadable))


def finish_tile(prepared: PreparedTile, predictor: SpeciesPredictor, work: Path, top_k: int = 0) -> TileOutcome:
    """Encode a prepared tile and write its raster to the work folder with a done-marker."""
    if prepared.outcome is not None:
        return prepared.outcome
    tile = prepared.tile
    path, _ = tile_paths(work, tile.id)
    probs = predictor.predict_tile(prepared.composites, tile.halo, pixel_centres_lonlat(tile), prepared.valid)
    write_tile_raster(path, tile, tile_bands(probs, predictor.species, top_k))
    write_done(work, tile.id, {"tile": tile.id, "scenes": prepared.n_scenes,
                               "unreadable": [list(u) for u in prepared.unreadable]})
    return TileOutcome(path, prepared.unreadable)


def process_tiles(tiles: list[Tile], scenes: list[Scene], local_aoi, predictor: SpeciesPredictor, work: Path,
                  top_k: int = 0) -> Iterator[TileOutcome]:
    """Outcomes of the tiles in order. Reading and compositing of the next tile run in a background thread while
    the encoder works on the current one (GDAL reads, NumPy and torch release the GIL); at most two tiles' inputs
    are in memory."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="treemap-prefetch") as pool:
        pending = pool.submit(prepare_tile, tiles[0], scenes, local_aoi, work) if tiles else None
        for k, tile in enumerate(tiles):
            prepared = pending.result()
            pending = pool.submit(prepare_tile, tiles[k + 1], scenes, local_aoi, work) if k + 1 < len(tiles) \
                else None
            log.debug("tile %s (%d/%d)", tile.id, k + 1, len(tiles))
            yield finish_tile(prepared, predictor, work, top_k)


@dataclass(frozen=True)
class PredictJob:
    """Everything a worker needs for any tile of a run; sent to a cluster once per run."""

    request: PredictRequest
    model_key: str
    species_key: str
    head_key: str | None
    scenes: tuple[Scene, ...]
    local_aoi: Any
    work: Path


def _absolute_paths(request: PredictRequest) -> PredictRequest:
    """The request with absolute model, species and head paths, for workers with another working directory."""
    def absolute(ref):
        return ref if ref is None or str(ref) == "demo" else Path(ref).absolute()

    return replace(request, model=absolute(request.model), species=absolute(request.species),
                   head=absolute(request.head))


def _species_key(species: SpeciesList) -> str:
    return hashlib.sha256("\n".join(species.prompts).encode()).hexdigest()[:16]


class _Predictors:
    """The predictors of this process, so that a worker loads a model (and its text features) once for all the
    tiles it runs, not once per tile. Keyed by model, species, head and inference settings; the two most recent
    are kept (a long-lived cluster may serve runs with other models)."""

    def __init__(self, size: int = 2):
        self._items: OrderedDict[tuple, SpeciesPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self.loads = 0

    def get(self, job: PredictJob) -> SpeciesPredictor:
        r = job.request
        key = (job.model_key, job.species_key, job.head_key, r.batch_size, r.device)
        with self._lock:
            predictor = self._items.get(key)
            if predictor is None:
                predictor = self._load(job)
                self._items[key] = predictor
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return predictor

    def _load(self, job: PredictJob) -> SpeciesPredictor:
        r = job.request
        model, _, species, model_key, head = _load_model(r)
        if model_key != job.model_key or _species_key(species) != job.species_key:
            raise ModelError(f"the model or species list this worker reads ({r.model}, {r.species or r.head}) "
                             f"differs from the client's: workers need the same files")
        self.loads += 1
        log.info("model %s loaded in this process", model_key[:12])
        return SpeciesPredictor(model, species, InferenceSpec(r.batch_size, _worker_device(r.device)),
                                model_key=model_key, cache_dir=cache_root(), head=head)


_predictors = _Predictors()


def _worker_device(device: str) -> str:
    """``auto`` on a local-cluster worker with CUDA: the GPU of the worker's index (one worker per GPU)."""
    index = worker_index()
    if device != "auto" or index is None:
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{index % torch.cuda.device_count()}"


def visible_gpus(device: str) -> int:
    """The GPUs a prediction on ``device`` can spread over: all visible ones for ``auto``, one for ``cuda[:i]``."""
    import torch

    if device == "auto":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 1 if device.startswith("cuda") else 0


def predict_tile_task(tile: Tile, job: PredictJob) -> TileOutcome:
    """One whole tile on a worker: read, composite, encode, write the raster and its done-marker."""
    prepared = prepare_tile(tile, list(job.scenes), job.local_aoi, job.work)
    if prepared.outcome is not None:
        return prepared.outcome
    return finish_tile(prepared, _predictors.get(job), job.work, job.request.top_k)


def predict(request: PredictRequest) -> PredictResult:
    """Run a mapping job and return the products written."""
    cluster = request.cluster()
    aoi = read_aoi(request.aoi)
    default_year = date.today().year - 1
    if request.catalog == "demo":
        from treemap.demo import WorldSpec

        default_year = WorldSpec().year
    start, end = resolve_dates(request.start, request.end, default_year)
    out = ensure_writable_dir(Path(request.out))
    with work_lock(out):
        return _predict(request, cluster, aoi, start, end, out)


def _predict(request: PredictRequest, cluster: ClusterSpec, aoi: AOI, start: date, end: date,
             out: Path) -> PredictResult:
    catalog = open_catalog(request.catalog)
    scenes = catalog.search(Query(bbox=aoi.bounds, start=start, end=end, max_cloud=request.max_cloud))
    if not scenes:
        raise NoScenesError(
            f"no Sentinel-2 L2A scenes in {catalog.name} for the AOI between {start} and {end}"
            + (f" with at most {request.max_cloud:g} % cloud" if request.max_cloud < 100 else "")
        )
    log.info("%d scenes from %s between %s and %s", len(scenes), catalog.name, start, end)
    model, card, species, model_key, head = _load_model(request)
    plan = plan_tiles(aoi, tile_size=request.tile_size)
    local_aoi = to_crs(aoi.geometry, plan.epsg)
    log.info("grid EPSG:%d, %d x %d px, %d tile(s)", plan.epsg, plan.width, plan.height, len(plan.tiles))

    head_key = file_sha256(request.head) if head is not None else None
    work = (out / WORK_DIR / _fingerprint(aoi, plan, scenes, species, model_key, head_key, request.top_k)).absolute()
    work.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, TileOutcome] = {}
    for tile in plan.tiles:
        if (done := done_outcome(work, tile)) is not None:
            log.info("tile %s already done; skipping", tile.id)
            outcomes[tile.id] = done
    pending = [tile for tile in plan.tiles if tile.id not in outcomes]
    gpus = visible_gpus(request.device) if pending else 0
    with tile_runner(cluster, len(pending), work, gpus=gpus) as runner:
        if runner.in_process:
            predictor = SpeciesPredictor(model, species, InferenceSpec(request.batch_size, request.device),
                                         model_key=model_key, cache_dir=cache_root(), head=head) if pending else None
            finished = zip(pending, process_tiles(pending, scenes, local_aoi, predictor, work, request.top_k))
        else:
            job = PredictJob(_absolute_paths(request), model_key, _species_key(species), head_key, tuple(scenes),
                             local_aoi, work)
            finished = runner.map(predict_tile_task, pending, job)
        for k, (tile, outcome) in enumerate(finished, start=1):
            outcomes[tile.id] = outcome
            log.info("tile %s done (%d/%d)", tile.id, k, len(pending))
    sources = []
    unreadable: dict[str, tuple[str, str, str, str]] = {}
    for tile in plan.tiles:
        outcome = outcomes[tile.id]
        if outcome.path is not None:
            sources.append((tile, outcome.path))
        unreadable.update({u[2]: u for u in outcome.unreadable})
    if not sources:
        raise NoScenesError("no tile of the AOI is covered by any scene")

    products = write_products(out, plan, sources, species, start, end, len(scenes), len(unreadable), request.top_k)
    if not request.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return PredictResult(products, plan.epsg, plan.bounds, len(plan.tiles), len(scenes), start, end, species.species,
                         tuple(unreadable.values()))


def top_k_bands(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable species per pixel of (S, H, W) probabilities: their indices (k, H, W) uint8 with
    255 where there is no prediction, and their probabilities (k, H, W) uint8-encoded, most probable first."""
    s, h, w = probs.shape
    valid = ~np.isnan(probs).any(axis=0)
    filled = np.where(valid[None], probs, -1.0)
    order = np.argsort(-filled, axis=0, kind="stable")[:k]
    top = np.take_along_axis(filled, order, axis=0)
    classes = np.where(valid[None], order, NODATA_U8).astype(np.uint8)
    return classes, encode_probability(np.where(valid[None], top, np.nan))


def tile_bands(probs: np.ndarray, species: SpeciesList, top_k: int = 0) -> np.ndarray:
    """The band stack of a tile raster: species, genus and family probabilities (uint8), the dominant species,
    then (``top_k`` > 0) the top-k species indices and their probabilities."""
    _, genus = species.roll_up(probs, "genus")
    _, family = species.roll_up(probs, "family")
    parts = [encode_probability(probs), encode_probability(genus), encode_probability(family),
             dominant_class(probs)[None]]
    if top_k:
        parts.extend(top_k_bands(probs, top_k))
    return np.concatenate(parts)


def write_products(out: Path, plan: TilePlan, sources, species: SpeciesList, start: date, end: date,
                   n_scenes: int, n_unreadable: int = 0, top_k: int = 0) -> dict[str, Path]:
    """Mosaic the per-tile rasters (band stack of :func:`tile_bands`) into the final COGs."""
    tags = {"TREEMAP_VERSION": __version__, "TREEMAP_PERIOD": f"{start.isoformat()}/{end.isoformat()}",
            "TREEMAP_SCENES": str(n_scenes), "TREEMAP_UNREADABLE_ASSETS": str(n_unreadable)}
    prob_tags = {**tags, "PROBABILITY_SCALE": str(PROB_SCALE), "PROBABILITY_NODATA": "255"}
    genera, _ = species.groups("genus")
    families, _ = species.groups("family")
    layers = [
        ("species_probability", [
            {"description": t.species, "metadata": {"genus": t.genus, "family": t.family, "level0": t.level0}}
            for t in species.taxa]),
        ("genus_probability", [{"description": g} for g in genera]),
        ("family_probability", [{"description": f} for f in families]),
    ]
    products: dict[str, Path] = {}
    offset = 0
    for name, bands in layers:
        bands = [{**b, "scale": PROB_SCALE, "offset": 0.0} for b in bands]
        products[name] = write_cog_mosaic(out / f"{name}.tif", plan, sources, bands, tags=prob_tags,
                                          resampling="AVERAGE", source_band_offset=offset)
        offset += len(bands)
    dominant_band = [{
        "description": "dominant species", "categories": list(species.species),
        "colours": class_colours(len(species)),
        "metadata": {f"CLASS_{i}": name for i, name in enumerate(species.species)},
    }]
    products["dominant_species"] = write_cog_mosaic(
        out / "dominant_species.tif", plan, sources, dominant_band, tags=tags, source_band_offset=offset)
    if top_k:
        classes = {f"CLASS_{i}": name for i, name in enumerate(species.species)}
        top_bands = [{"description": f"rank {r} species", "categories": list(species.species), "metadata": classes}
                     for r in range(1, top_k + 1)]
        top_bands += [{"description": f"rank {r} probability", "scale": PROB_SCALE, "offset": 0.0}
                      for r in range(1, top_k + 1)]
        products["top_species"] = write_cog_mosaic(out / "top_species.tif", plan, sources, top_bands,
                                                   tags={**tags, "PROBABILITY_SCALE": str(PROB_SCALE)},
                                                   source_band_offset=offset + 1)
    return products
