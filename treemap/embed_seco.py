"""The embed job for SeCo-Eco: chip embeddings of phenology-informed seasonal composites, on the tile engine.

Per tile (a tile of output cells, ``stride`` 10 m pixels each; see :mod:`treemap.chips`) the job reads the 10 m
pixels of the cells plus the chips' halo, fits the season timing of every pixel (:mod:`treemap.phenology`, as
``treemap phenology`` does: same clear-sky rule, snow screen, index and year), builds the four seasonal composites
(:class:`treemap.phenology.tile.SeasonalCompositor`) and rounds them to the 1e-4 reflectance steps of
``seasonal_composites.tif``, the file SeCo-Eco is pretrained on; then every cell's chip goes through the backbone.
A cell's value is the mean of the features of its usable seasons (``--season mean``) or one season's features,
L2-normalised, so values are bounded like GeoTreeCLIP's and the same int16 scaling and PCA apply.

Pixels outside the AOI still feed the chips of cells inside it (a chip's context must not depend on the AOI's
outline), and a cell is written when its centre lies in the AOI.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from treemap.chips import ChipGrid, embed_chips
from treemap.grid import Tile, core_mask

__all__ = ["SecoEmbedSpec", "SecoTile", "seco_tile_read", "seco_models", "fine_tile", "seasonal_reflectance",
           "seco_embeddings", "embed_seasonal"]

log = logging.getLogger("treemap.embed")


@dataclass(frozen=True)
class SecoEmbedSpec:
    """What a SeCo-Eco embedding map is made of, beside the model."""

    chip: int = 16
    stride: int = 8
    season: str | int = "mean"
    year: int = 2022
    index: str = "evi"
    min_observations: int = 12
    min_valid: float = 0.5

    @property
    def grid(self) -> ChipGrid:
        return ChipGrid(self.chip, self.stride)

    @property
    def resolution(self) -> float:
        return 10.0 * self.stride

    @property
    def plan_halo(self) -> int:
        """The chip halo in output cells (for the tile engine's scene selection)."""
        return math.ceil(self.grid.halo / self.stride)

    def fingerprint(self) -> dict:
        return {"chip": self.chip, "stride": self.stride, "season": self.season, "year": self.year,
                "index": self.index, "min_observations": self.min_observations, "min_valid": self.min_valid}


def fine_tile(tile: Tile, spec: SecoEmbedSpec) -> Tile:
    """The 10 m read tile of an output tile: its cells' pixels plus the chip halo, all of it core (halo 0)."""
    pad = spec.grid.halo * 10.0
    x0, y0, x1, y1 = tile.core_bounds
    w = tile.width * spec.stride + 2 * spec.grid.halo
    h = tile.height * spec.stride + 2 * spec.grid.halo
    return Tile(tile.row, tile.col, tile.epsg, 10.0, 0, (x0 - pad, y0 - pad, x1 + pad, y1 + pad), (0, 0, w, h))


@dataclass
class SecoTile:
    """A tile's clear-sky series of every read pixel, its cube (read again for the composites) and AOI cells."""

    cube: object
    dates: np.ndarray
    values: np.ndarray
    clear: np.ndarray
    cells: np.ndarray  # (H, W) bool: output cells whose centre is in the AOI
    snow: dict = field(default_factory=dict)

    @property
    def n_scenes(self) -> int:
        return len(self.cube.scenes)

    @property
    def unreadable(self) -> tuple:
        return tuple(self.cube.unreadable)


def seco_tile_read(tile: Tile, scenes: list, local_aoi, spec: SecoEmbedSpec) -> SecoTile:
    from treemap.cube import TileCube
    from treemap.phenology_run import tile_series

    cube = TileCube(scenes, fine_tile(tile, spec))
    dates, values, clear, snow = tile_series(cube, spec.index, True)
    return SecoTile(cube, dates, values, clear, core_mask(tile, local_aoi), snow.total())


def seasonal_reflectance(inputs: SecoTile, spec: SecoEmbedSpec) -> np.ndarray:
    """(4, 10, H, W) reflectance of the read pixels, rounded as ``seasonal_composites.tif`` stores it."""
    from treemap.composite import acquisition_blocks
    from treemap.phenology import phenology_metrics
    from treemap.phenology.tile import SeasonalCompositor
    from treemap.phenology_run import LEVEL_SCALE, encode_reflectance
    from treemap.outputs import NODATA_I16

    shape = inputs.cube.tile.read_shape
    result = phenology_metrics(inputs.dates, inputs.values, inputs.clear, spec.year,
                               min_observations=spec.min_observations)
    comp = SeasonalCompositor(inputs.dates, result, shape, 10)
    for groups, refl in acquisition_blocks(inputs.cube):
        comp.add([g.key[1] for g in groups], refl)
    stored = encode_reflectance(comp.result())
    out = stored.astype(np.float32) * np.float32(LEVEL_SCALE)
    out[stored == NODATA_I16] = np.nan
    return out


class OfferedFiles:
    """One file's content per process, read once per worker and checked by checksum (the client offers what it has
    read already, so an in-process run reads nothing twice): the SeCo-Eco model here, a few-shot head in
    :mod:`treemap.predict_seco`."""

    def __init__(self, load, what: str):
        self._load = load
        self._what = what
        self._lock = threading.Lock()
        self._item: tuple[str, object] | None = None
        self.loads = 0

    def offer(self, item, key: str) -> None:
        with self._lock:
            self._item = (key, item)

    def get(self, path: str | Path, key: str):
        from treemap.cache import file_sha256
        from treemap.errors import ModelError

        with self._lock:
            if self._item is None or self._item[0] != key:
                item = self._load(path)
                self.loads += 1
                if file_sha256(path) != key:
                    raise ModelError(f"the {self._what} this worker reads ({path}) differs from the client's: "
                                     f"workers need the same files")
                self._item = (key, item)
            return self._item[1]


def _load_seco(path):
    from treemap.models.seco import load_seco

    return load_seco(path)


seco_models = OfferedFiles(_load_seco, "model")


def seco_embeddings(tile: Tile, inputs: SecoTile, spec: SecoEmbedSpec, model, batch_size: int,
                    device: str) -> np.ndarray:
    """L2-normalised (D, H, W) embeddings of the tile's cells, NaN where none (outside the AOI, or no usable
    season)."""
    return embed_seasonal(seasonal_reflectance(inputs, spec), tile, inputs.cells, spec, model, batch_size, device)


def embed_seasonal(seasonal: np.ndarray, tile: Tile, cells: np.ndarray, spec: SecoEmbedSpec, model,
                   batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """:func:`seco_embeddings` from the tile's seasonal reflectance (:func:`seasonal_reflectance`)."""
    values = embed_chips(model, seasonal, spec.grid, tile.height, tile.width, spec.season, spec.min_valid,
                         batch_size, cells, device)
    norm = np.sqrt(np.nansum(values.astype(np.float64) ** 2, axis=0))
    ok = np.isfinite(values).all(axis=0) & (norm > 0)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    out[:, ok] = (values[:, ok] / norm[ok]).astype(np.float32)
    return out

