"""The embed job: a map of the encoder's per-pixel embeddings, on the tile engine (:mod:`treemap.tiles`).

Per tile it reads the same inputs as predict (monthly composites, the AOI mask, ``--aux`` layers; no tree mask: an
embedding map covers all land) and writes, for every pixel with at least one clear month, the GeoTreeCLIP location
embedding at 10 m: the vector the zero-shot head compares with the species' text features, L2-normalised. So a
pixel's embedding is the same whatever the tile it falls in (its 5 x 5 patches come from the tile's halo, and the
model's input normalisation is fixed), and maps of neighbouring runs join without seams.

Storage. GDAL 3.10's GeoTIFF has no native half-float type, and float32 stored with ``NBITS=16`` did not survive
the COG driver's copy here (values read back changed), so the compact form is int16 with a band scale: embeddings
(components in [-1, 1]) as DN x :data:`EMBED_SCALE`, PCA components (in [-2, 2]: a unit vector minus the mean, onto
a unit direction) as DN x :data:`PCA_SCALE`, nodata -32768. That is a step of 3e-5 (6e-5 for PCA), finer than a
float16's near 1. ``--float32`` writes float32 with NaN as nodata instead.

PCA. ``--pca K`` fits K principal components (:mod:`treemap.pca`) before the tiles run, on up to
:data:`PCA_SAMPLE` pixels drawn evenly from up to :data:`PCA_TILES` tiles spread over the AOI, and writes
``embedding_pca.safetensors`` beside the product; ``--pca-from FILE`` applies a saved projection instead, so maps
of other regions share the same axes. The projection's checksum is part of the job's fingerprint and of the tags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import ClassVar

import numpy as np

from treemap.aoi import read_aoi
from treemap.auxiliary import LayerSet
from treemap.cube import ASSETS, NoSceneReachesTile
from treemap.dates import default_year
from treemap.dates import check_year
from treemap.embed_seco import SecoEmbedSpec, seco_embeddings, seco_models, seco_tile_read
from treemap.errors import DateRangeError, ProjectionError, TreemapError
from treemap.grid import Tile, TilePlan, pixel_centres_lonlat, plan_tiles, scenes_for_tile, to_crs
from treemap.devices import check_device, visible_gpus, worker_device
from treemap.infer import InferenceSpec, inference_spec
from treemap.modelset import encoders, resolve_model
from treemap.outputs import NODATA_I16, ProductSpec, ensure_writable_dir
from treemap.pca import Projection, fit_projection, load_projection, save_projection
from treemap.phenology import SEASONS
from treemap.phenology_run import search_window
from treemap.products import run_tags
from treemap.run import PreparedTile, check_model_normalisation, read_prepared
from treemap.scale import ClusterSpec
from treemap.stac.search import date_window
from treemap.tiles import (DEFAULT_MAX_UNREADABLE, RunSummary, TileResult, find_scenes, run_job,
                           unreadable_assets, unreadable_tags)
from treemap.workdir import work_lock

__all__ = ["EmbedRequest", "EmbedResult", "EmbedJob", "embed", "encode_embedding", "fit_on_tiles", "spread_tiles",
           "EMBED_SCALE", "PCA_SCALE", "PCA_FILE"]

log = logging.getLogger("treemap.embed")

#: int16 band scale of L2-normalised embeddings (DN 32767 = 1.0).
EMBED_SCALE = 1.0 / 32767
#: int16 band scale of PCA components (DN 32767 = 2.0).
PCA_SCALE = 2.0 / 32767
#: The projection published beside a PCA product.
PCA_FILE = "embedding_pca.safetensors"
#: Pixels and tiles a ``--pca K`` fit draws from.
PCA_SAMPLE = 20000
PCA_TILES = 4
#: Encoders of ``--encoder``.
ENCODERS = ("geotreeclip", "seco-eco")
#: Days searched either side of a seco-eco map's year (as ``treemap phenology`` does by default).
PHENOLOGY_MARGIN_DAYS = 183


@dataclass(frozen=True)
class EmbedRequest:
    aoi: Path
    out: Path
    catalog: str = "earth-search"
    start: date | None = None
    end: date | None = None
    max_cloud: float = 100.0
    tile_size: int = 512
    model: Path | str | None = None  # a GeoTreeCLIP checkpoint, or "demo" (the default for the demo catalog)
    encoder: str = "geotreeclip"  # or "seco-eco" (chips of phenology seasonal composites; needs ``seco``)
    seco: SecoEmbedSpec | None = None  # chip, stride, season and phenology year of a seco-eco map
    batch_size: int | None = None  # None: --batch-size auto (treemap.infer.inference_spec)
    device: str = "auto"
    pca: int = 0  # fit this many principal components (0: the full embedding)
    pca_from: Path | None = None  # apply a saved projection (embedding_pca.safetensors of an earlier run)
    float32: bool = False  # float32 bands (NaN nodata) instead of scaled int16
    aux: LayerSet | None = None
    keep_work: bool = False
    scheduler: str | None = None
    workers: int | None = None
    max_unreadable: float = DEFAULT_MAX_UNREADABLE

    def cluster(self) -> ClusterSpec:
        return ClusterSpec(scheduler=self.scheduler, workers=self.workers)

    def model_ref(self) -> str | Path:
        if self.encoder == "seco-eco":
            from treemap.errors import ModelError

            if self.model is None or str(self.model) == "demo":
                raise ModelError("--encoder seco-eco needs --model: a SeCo-Eco model file (treemap train seco-eco)")
            return Path(self.model).absolute()
        model = self.model if self.model is not None else ("demo" if self.catalog == "demo" else None)
        if model is None:
            from treemap.errors import ModelError

            raise ModelError("--model is required outside the demo catalog (e.g. an imported GGT_6M checkpoint)")
        return model if str(model) == "demo" else Path(model).absolute()


@dataclass(frozen=True)
class EmbedResult(RunSummary):
    dim: int = 0  # bands of the product: the embedding's dimension, or the PCA components
    pca: dict | None = None  # components' explained variance and the projection's checksum, with --pca/--pca-from
    unreadable: tuple[tuple[str, str, str, str], ...] = ()

    def to_json(self) -> dict:
        return {**super().to_json(), "bands": self.dim, "pca": self.pca,
                "unreadable_assets": [dict(zip(("scene", "band", "href", "reason"), u)) for u in self.unreadable]}


def encode_embedding(values: np.ndarray, scale: float | None) -> np.ndarray:
    """Float bands (NaN = nodata) -> int16 DN with ``scale`` and :data:`NODATA_I16`, or float32 for ``None``."""
    if scale is None:
        return values.astype(np.float32)
    out = np.full(values.shape, NODATA_I16, dtype=np.int16)
    ok = np.isfinite(values)
    out[ok] = np.clip(np.rint(values[ok] / scale), -32767, 32767).astype(np.int16)
    return out


@dataclass(frozen=True)
class EmbedJob:
    """Per-pixel embeddings (or their PCA components) per tile (see the module doc)."""

    name: ClassVar[str] = "embed"
    model: str | Path
    model_key: str
    spec: InferenceSpec
    dim: int
    start: date
    end: date
    n_scenes: int
    projection: Projection | None = None
    float32: bool = False
    aux: LayerSet | None = None
    seco: SecoEmbedSpec | None = None  # a SeCo-Eco chip map instead of GeoTreeCLIP's per-pixel embedding

    @property
    def encoder(self) -> str:
        return "geotreeclip" if self.seco is None else "seco-eco"

    @property
    def description(self) -> str:
        if self.seco is None:
            return f"L2-normalised {self.dim}-dim GeoTreeCLIP location embedding per 10 m pixel"
        s = self.seco
        season = "mean of the usable seasons" if s.season == "mean" else f"season {SEASONS[int(s.season)]}"
        return (f"L2-normalised {self.dim}-dim SeCo-Eco backbone features of {s.chip} px chips of the {s.year} "
                f"phenology seasonal composites ({season}) every {s.stride} px ({s.resolution:g} m)")

    @property
    def scale(self) -> float | None:
        if self.float32:
            return None
        return PCA_SCALE if self.projection is not None else EMBED_SCALE

    @property
    def bands(self) -> int:
        return self.projection.k if self.projection is not None else self.dim

    def fingerprint(self) -> dict:
        out = {"encoder": self.encoder, "model": self.model_key, "float32": self.float32,
               "pca": self.projection.checksum() if self.projection is not None else None}
        if self.seco is not None:
            out["seco"] = self.seco.fingerprint()
        if self.aux:
            out["aux"] = self.aux.fingerprint()
        return out

    def computes_on_gpu(self) -> bool:
        """Whether tiles are encoded on a GPU here: then reading the next tile while one computes pays
        (:func:`treemap.tiles.prefetch_enabled`)."""
        return InferenceSpec(device=worker_device(self.spec.device)).resolve_device().type == "cuda"

    def read(self, tile: Tile, scenes: list, local_aoi):
        if self.seco is not None:
            return seco_tile_read(tile, scenes, local_aoi, self.seco)
        return read_prepared(tile, scenes, local_aoi, None, self.aux)

    def embeddings(self, tile: Tile, inputs) -> np.ndarray:
        """The L2-normalised embeddings (D, H, W) of the tile's core, NaN where none."""
        if self.seco is not None:
            device = str(InferenceSpec(self.spec.batch_size, worker_device(self.spec.device)).resolve_device())
            model = seco_models.get(self.model, self.model_key).to(device)
            return seco_embeddings(tile, inputs, self.seco, model, self.spec.batch_size, device)
        encoder = encoders.get(self.model, self.model_key, self.spec)
        return encoder.embed_tile(inputs.composites, tile.halo, pixel_centres_lonlat(tile), inputs.valid,
                                  layers=inputs.aux)

    def compute(self, tile: Tile, inputs: PreparedTile) -> TileResult:
        values = self.embeddings(tile, inputs)
        if self.projection is not None:
            d, h, w = values.shape
            flat = values.reshape(d, -1).T
            values = self.projection.apply(flat).T.reshape(self.projection.k, h, w)
        covered = np.isfinite(values).all(axis=0)
        record = {"scenes": inputs.n_scenes, "assets": inputs.n_scenes * len(ASSETS),
                  "unreadable": [list(u) for u in inputs.unreadable], "embedded": int(covered.sum())}
        if self.seco is not None:
            record["dates"] = int(inputs.dates.shape[0])
        nodata = float("nan") if self.float32 else NODATA_I16
        return TileResult(encode_embedding(values, self.scale), nodata, record)

    def products(self, plan: TilePlan, records: dict[str, dict]) -> list[ProductSpec]:
        tags = {**run_tags(self.start, self.end, self.n_scenes), **unreadable_tags(unreadable_assets(plan, records)),
                "TREEMAP_ENCODER": self.encoder, "TREEMAP_MODEL_CHECKSUM": self.model_key,
                "TREEMAP_EMBEDDING": self.description}
        if self.seco is not None:
            tags.update({"TREEMAP_CHIP": str(self.seco.chip), "TREEMAP_STRIDE": str(self.seco.stride),
                         "TREEMAP_SEASON": str(self.seco.season), "TREEMAP_PHENOLOGY_YEAR": str(self.seco.year)})
        if self.aux:
            tags["TREEMAP_AUX_LAYERS"] = ",".join(self.aux.provided())
            tags["TREEMAP_AUX_CHECKSUM"] = self.aux.checksum()
        scaled = {} if self.scale is None else {"scale": self.scale, "offset": 0.0}
        if self.projection is not None:
            p = self.projection
            tags.update({"TREEMAP_PCA_CHECKSUM": p.checksum(), "TREEMAP_PCA_FILE": PCA_FILE,
                         "TREEMAP_PCA_EXPLAINED": ",".join(f"{v:.6f}" for v in p.explained)})
            bands = tuple({"description": f"pc{i + 1}", **scaled,
                           "metadata": {"explained_variance": f"{p.explained[i]:.6f}"}} for i in range(p.k))
        else:
            bands = tuple({"description": f"emb{i:03d}", **scaled} for i in range(self.dim))
        dtype = "float32" if self.float32 else "int16"
        nodata = float("nan") if self.float32 else NODATA_I16
        return [ProductSpec("embedding", bands, 0, dtype=dtype, nodata=nodata, resampling="AVERAGE",
                            tags=tuple(tags.items()))]

    def provenance(self) -> dict:
        p = self.projection
        return {"encoder": self.encoder, "model": str(self.model), "model_checksum": self.model_key,
                "seco": None if self.seco is None else self.seco.fingerprint(),
                "pca": None if p is None else {"components": p.k, "checksum": p.checksum(),
                                               "explained_variance": list(p.explained), "samples": p.samples},
                "auxiliary": self.aux.provenance() if self.aux else None}

    def sidecars(self, staged: dict[str, Path], folder: Path, plan: TilePlan, records: dict[str, dict]) -> None:
        """The projection of a PCA product, so later runs can apply it (``--pca-from``)."""
        if self.projection is not None:
            save_projection(self.projection, folder / PCA_FILE)


def spread_tiles(plan: TilePlan, scenes: list, n: int) -> list[Tile]:
    """Up to ``n`` tiles covered by scenes, evenly spaced through the plan's tile order."""
    covered = [t for t in plan.tiles if scenes_for_tile(scenes, t)]
    if len(covered) <= n:
        return covered
    return [covered[i] for i in np.linspace(0, len(covered) - 1, n).round().astype(int)]


def fit_on_tiles(job: EmbedJob, k: int, plan: TilePlan, scenes: list, aoi) -> Projection:
    """A ``k``-component projection fitted on up to :data:`PCA_SAMPLE` pixels of up to :data:`PCA_TILES` tiles
    (in this process, before the run; deterministic, so a resumed run fits the same projection)."""
    local = to_crs(aoi.geometry, plan.epsg)
    tiles = spread_tiles(plan, scenes, PCA_TILES)
    per_tile = PCA_SAMPLE // max(len(tiles), 1)
    rng = np.random.default_rng(0)
    samples = []
    for tile in tiles:
        try:
            inputs = job.read(tile, scenes_for_tile(scenes, tile), local)
        except NoSceneReachesTile:
            continue
        values = job.embeddings(tile, inputs)
        flat = values.reshape(values.shape[0], -1).T
        flat = flat[np.isfinite(flat).all(axis=1)]
        if flat.shape[0] > per_tile:
            flat = flat[np.sort(rng.choice(flat.shape[0], per_tile, replace=False))]
        samples.append(flat)
    sample = np.concatenate(samples) if samples else np.empty((0, job.dim), np.float32)
    projection = fit_projection(sample, k, job.model_key)
    log.info("PCA: %d components fitted on %d pixels of %d tile(s), explaining %.1f %% of the variance", k,
             projection.samples, len(tiles), 100 * sum(projection.explained))
    return projection


def embed(request: EmbedRequest) -> EmbedResult:
    """Run an embedding job and return the product written."""
    if request.pca and request.pca_from is not None:
        raise ProjectionError("--pca and --pca-from exclude each other: fit a projection, or apply a saved one")
    if request.encoder not in ENCODERS:
        raise TreemapError(f"unknown encoder {request.encoder!r}: use {' or '.join(ENCODERS)}")
    seco = request.seco if request.encoder == "seco-eco" else None
    if request.encoder == "seco-eco":
        seco = seco or SecoEmbedSpec(year=default_year(request.catalog))
        if request.aux:
            raise TreemapError("--aux feeds GeoTreeCLIP; SeCo-Eco takes no auxiliary layers")
        if request.start is not None or request.end is not None:
            raise DateRangeError("--encoder seco-eco maps one phenological year: give --year, not --start/--end")
        check_year(seco.year)
        if seco.chip < 1 or seco.stride < 1:
            raise TreemapError(f"--chip {seco.chip} and --stride {seco.stride} must be at least 1 px")
    cluster = request.cluster().check()
    check_device(request.device)
    model_ref = request.model_ref()
    projection = load_projection(request.pca_from) if request.pca_from is not None else None
    aoi = read_aoi(request.aoi)
    if seco is not None:
        start, end = search_window(seco.year, PHENOLOGY_MARGIN_DAYS)
    else:
        start, end = date_window(request.start, request.end, default_year(request.catalog))
    out = ensure_writable_dir(Path(request.out))
    with work_lock(out):
        scenes = find_scenes(request.catalog, aoi, start, end, request.max_cloud)
        if seco is None:
            model, card, model_key = resolve_model(model_ref)
            check_model_normalisation(card)
            dim = int(model.config.embed_dim)
            encoders.offer(model, model_key)
            plan = plan_tiles(aoi, tile_size=request.tile_size)
        else:
            from treemap.cache import file_sha256
            from treemap.models.seco import load_seco

            model, model_key = load_seco(model_ref), file_sha256(model_ref)
            dim = int(model.config.feature_dim)
            seco_models.offer(model, model_key)
            plan = plan_tiles(aoi, tile_size=max(1, request.tile_size // seco.stride), halo=seco.plan_halo,
                              resolution=seco.resolution)
        if projection is not None:
            projection.check_for(model_key, dim, f"--pca-from {request.pca_from}")
        log.info("grid EPSG:%d, %d x %d px, %d tile(s)", plan.epsg, plan.width, plan.height, len(plan.tiles))
        if request.aux:
            from treemap.auxiliary import check_layers

            check_layers(request.aux, plan.epsg, plan.bounds)
        job = EmbedJob(model_ref, model_key, inference_spec(request.batch_size, request.device), dim, start, end,
                       len(scenes), projection, request.float32, request.aux, seco)
        if request.pca:
            if request.pca > dim:
                raise ProjectionError(f"--pca {request.pca}: the embeddings have only {dim} dimensions")
            job = replace(job, projection=fit_on_tiles(job, request.pca, plan, scenes, aoi))
        result = run_job(job, aoi, plan, scenes, out, cluster, request.keep_work, gpus=visible_gpus(request.device),
                         max_unreadable=request.max_unreadable)
    p = job.projection
    pca = None if p is None else {"components": p.k, "explained_variance": list(p.explained),
                                  "checksum": p.checksum(), "file": str(out / PCA_FILE)}
    return EmbedResult(result.products, plan.epsg, plan.bounds, len(plan.tiles), len(scenes), start, end,
                       job.bands, pca, tuple(unreadable_assets(plan, result.records)))

