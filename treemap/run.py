"""The predict job: species-probability maps of an AOI, as a job on the tile engine (:mod:`treemap.tiles`).

Per tile it reads the scenes' lazy cube and builds the monthly composites (:mod:`treemap.cube`,
:mod:`treemap.composite`), encodes every pixel's patches with the model (:mod:`treemap.infer`) and lays out the
probabilities, roll-ups and class maps (:mod:`treemap.products`). Searching, planning, resuming, running on a
cluster, committing tiles and publishing products are the engine's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import ClassVar

import numpy as np

from treemap.aoi import read_aoi
from treemap.auxiliary import LayerSet
from treemap.cube import ASSETS
from treemap.cache import file_sha256
from treemap.dates import default_year
from treemap.embed_seco import SecoEmbedSpec
from treemap.errors import ModelError
from treemap.grid import Tile, TilePlan, core_mask, pixel_centres_lonlat, plan_tiles
from treemap.devices import check_device, visible_gpus, worker_device
from treemap.infer import InferenceSpec, inference_spec
from treemap.modelset import LoadedModel, ModelRef, load_model_set, predictors, resolve_model, species_key
from treemap.masking import MaskSpec
from treemap.outputs import ProductSpec, ensure_writable_dir
from treemap.products import run_tags, species_products, tile_bands
from treemap.scale import ClusterSpec
from treemap.stac.search import date_window
from treemap.taxonomy import SpeciesList
from treemap.tiles import (DEFAULT_MAX_UNREADABLE, RunSummary, TileResult, find_scenes, run_job,
                           unreadable_assets, unreadable_tags)
from treemap.treemask import NOT_TREE
from treemap.workdir import WORK_DIR, work_lock

__all__ = ["PredictRequest", "PredictResult", "PredictJob", "predict", "resolve_model", "WORK_DIR"]

log = logging.getLogger("treemap.run")

resolve_dates = date_window
QUICKLOOK = "quicklook.png"


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
    batch_size: int | None = None  # None: --batch-size auto (treemap.infer.inference_spec)
    device: str = "auto"
    keep_work: bool = False
    head: Path | None = None  # a few-shot head file (treemap fewshot): classifies its own species
    top_k: int = 0  # also write top_species.tif with the k most probable species per pixel
    scheduler: str | None = None  # an existing dask scheduler's address or scheduler file; None: this machine
    workers: int | None = None  # worker processes on this machine (None: one per CPU core, or per GPU on CUDA)
    max_unreadable: float = DEFAULT_MAX_UNREADABLE  # a tile with more unreadable assets fails
    mask: MaskSpec = field(default_factory=MaskSpec)  # how non-tree land is masked (treemap.masking)
    aux: LayerSet | None = None  # auxiliary layers (treemap.auxiliary): elevation, climate, soil
    compile: bool = False  # torch.compile the GeoTreeCLIP location encoder

    def cluster(self) -> ClusterSpec:
        return ClusterSpec(scheduler=self.scheduler, workers=self.workers)

    def model_ref(self) -> ModelRef:
        """The model files with absolute paths (workers have another working directory)."""
        def absolute(ref):
            return ref if ref is None or str(ref) == "demo" else Path(ref).absolute()

        return ModelRef(absolute(self.model), absolute(self.species), absolute(self.head),
                        demo_defaults=self.catalog == "demo")


@dataclass(frozen=True)
class PredictResult(RunSummary):
    species: tuple[str, ...] = field(default=())
    unreadable: tuple[tuple[str, str, str, str], ...] = ()

    def to_json(self) -> dict:
        return {**super().to_json(), "species": list(self.species),
                "unreadable_assets": [dict(zip(("scene", "band", "href", "reason"), u)) for u in self.unreadable]}


@dataclass(frozen=True)
class PreparedTile:
    """A tile's inputs, read and composited, ready for the encoder."""

    composites: np.ndarray
    counts: np.ndarray  # clear acquisitions per month and pixel (12, H, W), halo included
    valid: np.ndarray
    n_scenes: int
    unreadable: tuple[tuple[str, str, str, str], ...] = ()
    landcover: np.ndarray | None = None  # the --mask raster on the tile's core, already as 1/0/255
    aux: np.ndarray | None = None  # the auxiliary layers on the tile's core (25, H, W), NaN = missing


@dataclass(frozen=True)
class PredictJob:
    """Species probabilities per tile (see the module doc)."""

    name: ClassVar[str] = "predict"
    ref: ModelRef
    keys: tuple[str, str, str | None]  # model, species list and head keys, as the client loaded them
    spec: InferenceSpec
    species: SpeciesList
    top_k: int
    start: date
    end: date
    n_scenes: int
    mask: MaskSpec = MaskSpec()
    aux: LayerSet | None = None
    seco: SecoEmbedSpec | None = None  # a SeCo-Eco head: cells of this recipe (treemap.predict_seco)

    def fingerprint(self) -> dict:
        out = {"model": self.keys[0], "species": list(self.species.prompts), "head": self.keys[2],
               "top_k": self.top_k}
        if self.seco is not None:
            out["seco"] = self.seco.fingerprint()
        if self.spec.compile:  # compiled kernels may round differently: not mixed with eager tiles on resume
            out["compile"] = True
        if self.mask.enabled:  # runs without a mask keep the fingerprint they always had
            out["mask"] = self.mask.fingerprint()
        if self.aux:  # likewise runs without auxiliary layers
            out["aux"] = self.aux.fingerprint()
        return out

    def computes_on_gpu(self) -> bool:
        """Whether tiles are encoded on a GPU here: then reading the next tile while one computes pays
        (:func:`treemap.tiles.prefetch_enabled`)."""
        return InferenceSpec(device=worker_device(self.spec.device)).resolve_device().type == "cuda"

    def read(self, tile: Tile, scenes: list, local_aoi) -> PreparedTile:
        if self.seco is not None:
            from treemap.predict_seco import seco_predict_read

            return seco_predict_read(tile, scenes, local_aoi, self.seco, self.mask)
        return read_prepared(tile, scenes, local_aoi, self.mask, self.aux)

    def compute(self, tile: Tile, inputs: PreparedTile) -> TileResult:
        if self.seco is not None:
            return self._compute_seco(tile, inputs)
        predictor = predictors.get(self.ref, self.keys, self.spec)
        tree = self.mask.compute(tile, inputs.composites, inputs.counts, inputs.landcover, inputs.valid)
        encode = inputs.valid if tree is None else inputs.valid & (tree != NOT_TREE)  # masked pixels: not encoded
        probs = predictor.predict_tile(inputs.composites, tile.halo, pixel_centres_lonlat(tile), encode,
                                       layers=inputs.aux)
        record = {"scenes": inputs.n_scenes, "assets": inputs.n_scenes * len(ASSETS),
                  "unreadable": [list(u) for u in inputs.unreadable]}
        if tree is not None:
            record["tree_mask"] = {str(v): int(n) for v, n in zip(*np.unique(tree[inputs.valid], return_counts=True))}
        return TileResult(tile_bands(probs, predictor.species, self.top_k, tree), 255, record)

    def _compute_seco(self, tile: Tile, inputs) -> TileResult:
        from treemap.embed_seco import seco_models
        from treemap.predict_seco import seco_heads, seco_probabilities, seco_tree_mask

        device = str(InferenceSpec(self.spec.batch_size, worker_device(self.spec.device)).resolve_device())
        model = seco_models.get(self.ref.model, self.keys[0]).to(device)
        head = seco_heads.get(self.ref.head, self.keys[2])
        tree = seco_tree_mask(tile, inputs, self.seco, self.mask)
        probs = seco_probabilities(tile, inputs, self.seco, model, head, tree, self.spec.batch_size, device)
        record = {"scenes": inputs.n_scenes, "assets": inputs.n_scenes * len(ASSETS),
                  "unreadable": [list(u) for u in inputs.unreadable], "dates": int(inputs.seco.dates.shape[0])}
        if tree is not None:
            inside = inputs.seco.cells
            record["tree_mask"] = {str(v): int(n) for v, n in zip(*np.unique(tree[inside], return_counts=True))}
        return TileResult(tile_bands(probs, self.species, self.top_k, tree), 255, record)

    def products(self, plan: TilePlan, records: dict[str, dict]) -> list[ProductSpec]:
        tags = {**run_tags(self.start, self.end, self.n_scenes), **unreadable_tags(unreadable_assets(plan, records))}
        if self.aux:
            tags["TREEMAP_AUX_LAYERS"] = ",".join(self.aux.provided())
            tags["TREEMAP_AUX_CHECKSUM"] = self.aux.checksum()
        if self.seco is not None:
            s = self.seco
            tags.update({"TREEMAP_ENCODER": "seco-eco", "TREEMAP_CHIP": str(s.chip), "TREEMAP_STRIDE": str(s.stride),
                         "TREEMAP_SEASON": str(s.season), "TREEMAP_PHENOLOGY_YEAR": str(s.year)})
        return species_products(self.species, tags, self.top_k,
                                self.mask.describe() if self.mask.enabled else None)

    def provenance(self) -> dict:
        """What the run's STAC item records about the model and the species list."""
        return {"model": str(self.ref.model or "demo"), "model_checksum": self.keys[0],
                "species_list": str(self.ref.species or "demo"), "species_checksum": self.keys[1],
                "head": str(self.ref.head) if self.ref.head else None, "head_checksum": self.keys[2],
                "tree_mask": self.mask.provenance(),
                "auxiliary": self.aux.provenance() if self.aux else None,
                "encoder": "geotreeclip" if self.seco is None else "seco-eco",
                "seco": None if self.seco is None else self.seco.fingerprint()}

    def sidecars(self, staged: dict[str, Path], folder: Path, plan: TilePlan, records: dict[str, dict]) -> None:
        """``quicklook.png``: the dominant species with a legend, a scale bar and a north arrow; land the tree mask
        removed in grey."""
        from treemap.quicklook import render_quicklook
        from treemap.styles import species_colours

        render_quicklook(staged["dominant_species"], folder / QUICKLOOK, list(self.species.species),
                         species_colours(self.species), "Dominant tree species",
                         f"{self.start} to {self.end} · {self.n_scenes} scenes · treemap",
                         not_tree=staged.get("tree_mask"))


def read_prepared(tile: Tile, scenes: list, local_aoi, mask: MaskSpec | None, aux: LayerSet | None) -> PreparedTile:
    """A tile's monthly composites, AOI mask, ``--mask`` raster and auxiliary layers: what the encoder needs (the
    read step of predict and embed)."""
    from treemap.composite import monthly_composites
    from treemap.cube import TileCube

    cube = TileCube(scenes, tile)
    composites, counts = monthly_composites(cube)
    layers = None
    if aux:
        from treemap.auxiliary import AuxReader

        with AuxReader(aux) as reader:
            layers = reader.tile(tile.epsg, tile.core_bounds, (tile.height, tile.width))
    return PreparedTile(composites, counts, core_mask(tile, local_aoi), len(cube.scenes), tuple(cube.unreadable),
                        mask.read(tile) if mask is not None else None, layers)


def check_model(loaded: LoadedModel, top_k: int) -> None:
    check_model_normalisation(loaded.card)
    if top_k > len(loaded.species):
        raise ModelError(f"--top-k {top_k} is more than the {len(loaded.species)} species of the list")


def check_model_normalisation(card) -> None:
    """A warning for a model whose input statistics come from each batch: its values depend on the batching."""
    if card.normalisation == "batch":
        log.warning("the model uses per-batch input normalisation (the official recipe): values depend on how "
                    "pixels are batched, so maps can show tile seams; import it with fixed statistics to avoid this")


def predict(request: PredictRequest) -> PredictResult:
    """Run a mapping job and return the products written."""
    cluster = request.cluster().check()
    check_device(request.device)
    aoi = read_aoi(request.aoi)
    start, end = resolve_dates(request.start, request.end, default_year(request.catalog))
    ref = request.model_ref()
    head = seco_head(ref)
    if head is not None:
        return predict_with_seco_head(request, ref, head, cluster, aoi)
    out = ensure_writable_dir(Path(request.out))
    with work_lock(out):
        scenes = find_scenes(request.catalog, aoi, start, end, request.max_cloud)
        loaded = load_model_set(ref)
        check_model(loaded, request.top_k)
        predictors.offer(loaded)
        plan = plan_tiles(aoi, tile_size=request.tile_size)
        log.info("grid EPSG:%d, %d x %d px, %d tile(s)", plan.epsg, plan.width, plan.height, len(plan.tiles))
        if request.aux:
            from treemap.auxiliary import check_layers

            check_layers(request.aux, plan.epsg, plan.bounds)
        else:
            log.info("no auxiliary layers (--aux): the model gets longitude and latitude only")
        job = PredictJob(ref, (loaded.model_key, species_key(loaded.species), loaded.head_key),
                         inference_spec(request.batch_size, request.device, request.compile), loaded.species,
                         request.top_k, start, end, len(scenes), request.mask, request.aux)
        result = run_job(job, aoi, plan, scenes, out, cluster, request.keep_work, gpus=visible_gpus(request.device),
                         max_unreadable=request.max_unreadable)
    return PredictResult(result.products, plan.epsg, plan.bounds, len(plan.tiles), len(scenes), start, end,
                         loaded.species.species, tuple(unreadable_assets(plan, result.records)))


def seco_head(ref: ModelRef):
    """The run's head when it was fitted on SeCo-Eco features, else None."""
    if ref.head is None:
        return None
    from treemap.heads import load_head

    head = load_head(ref.head)
    return head if head.encoder_name == "seco-eco" else None


def predict_with_seco_head(request: PredictRequest, ref: ModelRef, head, cluster, aoi) -> PredictResult:
    """predict on the cells of a SeCo-Eco head (:mod:`treemap.predict_seco`)."""
    from treemap.dates import check_year
    from treemap.embed import PHENOLOGY_MARGIN_DAYS
    from treemap.embed_seco import seco_models
    from treemap.phenology_run import search_window
    from treemap.predict_seco import check_request, load_seco_set, seco_head_spec, seco_heads, seco_year

    check_request(request)
    if request.compile:
        log.warning("--compile applies to GeoTreeCLIP's encoder; the SeCo-Eco backbone runs as it is")
    model, model_key = load_seco_set(ref, head)
    if request.top_k > len(head.species):
        raise ModelError(f"--top-k {request.top_k} is more than the {len(head.species)} species of the head")
    spec = seco_head_spec(head, seco_year(request.start, request.end, default_year(request.catalog)))
    check_year(spec.year)
    start, end = search_window(spec.year, PHENOLOGY_MARGIN_DAYS)
    out = ensure_writable_dir(Path(request.out))
    with work_lock(out):
        scenes = find_scenes(request.catalog, aoi, start, end, request.max_cloud)
        head_key = file_sha256(ref.head)
        seco_models.offer(model, model_key)
        seco_heads.offer(head, head_key)
        plan = plan_tiles(aoi, tile_size=max(1, request.tile_size // spec.stride), halo=spec.plan_halo,
                          resolution=spec.resolution)
        log.info("SeCo-Eco head: %g m cells (%d px chips every %d px, season %s, year %d); grid EPSG:%d, %d x %d, "
                 "%d tile(s)", spec.resolution, spec.chip, spec.stride, spec.season, spec.year, plan.epsg,
                 plan.width, plan.height, len(plan.tiles))
        job = PredictJob(ref, (model_key, species_key(head.species), head_key),
                         inference_spec(request.batch_size, request.device), head.species, request.top_k, start, end,
                         len(scenes), request.mask, None, spec)
        result = run_job(job, aoi, plan, scenes, out, cluster, request.keep_work, gpus=visible_gpus(request.device),
                         max_unreadable=request.max_unreadable)
    return PredictResult(result.products, plan.epsg, plan.bounds, len(plan.tiles), len(scenes), start, end,
                         head.species.species, tuple(unreadable_assets(plan, result.records)))
