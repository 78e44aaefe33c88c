"""A mapping run: validate the request, search, plan tiles, process each tile, mosaic the products.

Tiles are processed independently and finish with a done-marker in the run's work folder, so a run that crashed
resumes where it stopped when started again with the same request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterator

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
from treemap.stac import Query, Scene, open_catalog
from treemap.stac.search import date_window
from treemap.taxonomy import SpeciesList, demo_species_list, load_species_list

log = logging.getLogger("treemap.run")

WORK_DIR = ".treemap-work"


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


@dataclass(frozen=True)
class PredictResult:
    products: dict[str, Path]
    epsg: int
    bounds: tuple[float, float, float, float]
    tiles: int
    scenes: int
    start: date
    end: date
    species: tuple[str, ...] = field(default=())
    unreadable: tuple[tuple[str, str, str, str], ...] = ()

    def to_json(self) -> dict:
        return {
            "products": {k: str(v) for k, v in self.products.items()},
            "epsg": self.epsg,
            "bounds": list(self.bounds),
            "tiles": self.tiles,
            "scenes": self.scenes,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "species": list(self.species),
            "unreadable_assets": [dict(zip(("scene", "band", "href", "reason"), u)) for u in self.unreadable],
        }


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


def prepare_tile(tile: Tile, scenes: list[Scene], local_aoi, work: Path) -> PreparedTile:
    """Read and composite one tile (I/O and NumPy: runs beside the encoder of the previous tile)."""
    done = work / f"{tile.id}.done"
    path = work / f"{tile.id}.tif"
    if done.exists() and path.exists():
        log.info("tile %s already done; skipping", tile.id)
        record = json.loads(done.read_text(encoding="utf-8"))
        return PreparedTile(tile, outcome=TileOutcome(path, tuple(tuple(u) for u in record.get("unreadable", []))))
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
    path = work / f"{tile.id}.tif"
    probs = predictor.predict_tile(prepared.composites, tile.halo, pixel_centres_lonlat(tile), prepared.valid)
    write_tile_raster(path, tile, tile_bands(probs, predictor.species, top_k))
    record = {"tile": tile.id, "scenes": prepared.n_scenes, "unreadable": [list(u) for u in prepared.unreadable]}
    (work / f"{tile.id}.done").write_text(json.dumps(record), encoding="utf-8")
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
            log.info("tile %s (%d/%d)", tile.id, k + 1, len(tiles))
            yield finish_tile(prepared, predictor, work, top_k)


def predict(request: PredictRequest) -> PredictResult:
    """Run a mapping job and return the products written."""
    aoi = read_aoi(request.aoi)
    default_year = date.today().year - 1
    if request.catalog == "demo":
        from treemap.demo import WorldSpec

        default_year = WorldSpec().year
    start, end = resolve_dates(request.start, request.end, default_year)
    out = ensure_writable_dir(Path(request.out))
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
    work = out / WORK_DIR / _fingerprint(aoi, plan, scenes, species, model_key, head_key, request.top_k)
    work.mkdir(parents=True, exist_ok=True)
    predictor = SpeciesPredictor(model, species, InferenceSpec(request.batch_size, request.device),
                                 model_key=model_key, cache_dir=cache_root(), head=head)
    sources = []
    unreadable: dict[str, tuple[str, str, str, str]] = {}
    for tile, outcome in zip(plan.tiles, process_tiles(plan.tiles, scenes, local_aoi, predictor, work,
                                                       request.top_k)):
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
