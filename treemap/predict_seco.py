"""Species maps from a few-shot head fitted on SeCo-Eco features (``treemap predict --head H --model SECO``).

A head of ``treemap fewshot --encoder seco-eco`` classifies the features of one map cell (``stride`` x ``stride``
10 m pixels; :mod:`treemap.embed_seco`). Predict maps it on the same cells: the tile engine runs on the head's
``10 x stride`` m grid, each cell's feature vector is made exactly as ``treemap embed --encoder seco-eco`` makes it
(the head's chip, stride, season, index and valid share; the phenological year of ``--year``), the head turns it
into species probabilities, and the products are those of a GeoTreeCLIP run (probabilities, roll-ups, dominant
species, uncertainty, tree mask, quicklook), at the cell size.

Tree mask of a cell. The 10 m tree mask is made as for GeoTreeCLIP maps (``--mask builtin``: the rule of
:mod:`treemap.treemask` on the monthly composites of the mapped calendar year; ``--mask RASTER``: the land-cover
raster on the 10 m grid), then each cell takes the majority of its decided pixels: tree where at least as many
pixels are tree as not tree, not tree otherwise, and no decision (255) where fewer than half its pixels are
decided. Cells that are not tree are not encoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from treemap.embed_seco import (OfferedFiles, SecoEmbedSpec, SecoTile, embed_seasonal, seasonal_reflectance,
                                 seco_tile_read)
from treemap.errors import DateRangeError, ModelError, TreemapError
from treemap.grid import Tile
from treemap.treemask import NODATA, NOT_TREE, TREE

__all__ = ["SecoPredictTile", "seco_head_spec", "cell_tree_mask", "core_fine_tile", "seco_predict_read",
           "seco_probabilities", "seco_year", "seco_heads"]

log = logging.getLogger("treemap.run")


@dataclass(frozen=True)
class SecoPredictTile:
    """A tile's SeCo-Eco inputs and what its tree mask is made from (10 m, the cells' pixels only)."""

    seco: SecoTile
    composites: np.ndarray | None = None  # builtin mask: monthly composites of the fine read tile
    counts: np.ndarray | None = None
    landcover: np.ndarray | None = None  # RASTER mask: 1/0/255 on the cells' 10 m pixels

    @property
    def n_scenes(self) -> int:
        return self.seco.n_scenes

    @property
    def unreadable(self) -> tuple:
        return self.seco.unreadable


def seco_head_spec(head, year: int) -> SecoEmbedSpec:
    """The feature recipe a head was fitted with, for the phenological ``year`` mapped."""
    from treemap.chips import parse_season

    recipe = dict(head.encoder or {})
    try:
        return SecoEmbedSpec(chip=int(recipe["chip"]), stride=int(recipe["stride"]),
                             season=parse_season(recipe.get("season", "mean")), year=year,
                             index=str(recipe.get("index", "evi")), min_valid=float(recipe.get("min_valid", 0.5)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the head's SeCo-Eco recipe is incomplete or invalid ({exc}): fit it again with "
                         f"`treemap fewshot --encoder seco-eco`") from None


def seco_year(start, end, default: int) -> int:
    """The one phenological year a SeCo-Eco head maps: that of --start/--end (or --year), else ``default``."""
    if start is None and end is None:
        return default
    years = {d.year for d in (start, end) if d is not None}
    if len(years) != 1:
        raise DateRangeError("a SeCo-Eco head maps one phenological year: give --year (or --start and --end in one "
                             "calendar year)")
    return years.pop()


def core_fine_tile(tile: Tile, stride: int) -> Tile:
    """The 10 m tile of exactly the output tile's cells (no halo)."""
    return Tile(tile.row, tile.col, tile.epsg, 10.0, 0, tile.core_bounds,
                (0, 0, tile.width * stride, tile.height * stride))


def cell_tree_mask(fine: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) cell mask from the (H*stride, W*stride) 10 m mask (see the module doc)."""
    h, w = fine.shape[0] // stride, fine.shape[1] // stride
    blocks = fine[:h * stride, :w * stride].reshape(h, stride, w, stride)
    trees = (blocks == TREE).sum(axis=(1, 3))
    not_trees = (blocks == NOT_TREE).sum(axis=(1, 3))
    out = np.where(trees >= not_trees, TREE, NOT_TREE).astype(np.uint8)
    out[2 * (trees + not_trees) < stride * stride] = NODATA
    return out


def seco_predict_read(tile: Tile, scenes: list, local_aoi, spec: SecoEmbedSpec, mask) -> SecoPredictTile:
    """I/O of one tile: the SeCo-Eco series and cube, and the inputs of its tree mask."""
    from treemap.masking import BUILTIN, RASTER

    seco = seco_tile_read(tile, scenes, local_aoi, spec)
    if mask.kind == BUILTIN:
        from treemap.composite import monthly_composites

        composites, counts = monthly_composites(seco.cube, year=spec.year)
        return SecoPredictTile(seco, composites, counts)
    if mask.kind == RASTER:
        return SecoPredictTile(seco, landcover=mask.read(core_fine_tile(tile, spec.stride)))
    return SecoPredictTile(seco)


def seco_tree_mask(tile: Tile, inputs: SecoPredictTile, spec: SecoEmbedSpec, mask) -> np.ndarray | None:
    """The cells' mask (uint8 1/0/255, 255 outside the AOI), or None with ``--mask none``."""
    from treemap.masking import BUILTIN, RASTER
    from treemap.treemask import tree_mask

    if mask.kind == BUILTIN:
        k, s = spec.grid.halo, spec.stride
        core = (..., slice(k, k + tile.height * s), slice(k, k + tile.width * s))
        fine = tree_mask(inputs.composites[core], mask.rule, inputs.counts[core])
    elif mask.kind == RASTER:
        fine = inputs.landcover
    else:
        return None
    return np.where(inputs.seco.cells, cell_tree_mask(fine, spec.stride), NODATA).astype(np.uint8)


def seco_probabilities(tile: Tile, inputs: SecoPredictTile, spec: SecoEmbedSpec, model, head,
                       tree: np.ndarray | None, batch_size: int, device: str) -> np.ndarray:
    """(S, H, W) float32 species probabilities of the tile's cells, NaN where a cell has none (outside the AOI,
    not tree, or no usable season)."""
    cells = inputs.seco.cells if tree is None else inputs.seco.cells & (tree != NOT_TREE)
    features = embed_seasonal(seasonal_reflectance(inputs.seco, spec), tile, cells, spec, model, batch_size, device)
    d, h, w = features.shape
    flat = features.reshape(d, -1).T
    ok = np.isfinite(flat).all(axis=1)
    out = np.full((h * w, len(head.species)), np.nan, dtype=np.float32)
    if ok.any():
        with torch.no_grad():
            out[ok] = head.probabilities(torch.from_numpy(np.ascontiguousarray(flat[ok]))).numpy()
    return out.T.reshape(len(head.species), h, w)


def _load_head(path):
    from treemap.heads import load_head

    return load_head(path)


seco_heads = OfferedFiles(_load_head, "head")


def load_seco_set(ref, head) -> tuple[object, str]:
    """The SeCo-Eco model a head was fitted on, checked against it: (model, model checksum)."""
    from treemap.cache import file_sha256
    from treemap.models.seco import load_seco

    if ref.model is None or str(ref.model) == "demo":
        raise ModelError(f"head {ref.head} was fitted on SeCo-Eco features: give --model, the SeCo-Eco model file "
                         f"it was fitted on")
    if ref.species is not None:
        raise ModelError("--head classifies the species it was fitted on: leave out --species")
    model, key = load_seco(ref.model), file_sha256(ref.model)
    if head.model_key != key:
        raise ModelError(f"head {ref.head} was fitted on another model than {ref.model}")
    if head.embed_dim != int(model.config.feature_dim):
        raise ModelError(f"head {ref.head} expects {head.embed_dim}-dim features, the model gives "
                         f"{model.config.feature_dim}")
    return model, key


def check_request(request) -> None:
    if request.aux:
        raise TreemapError("--aux feeds GeoTreeCLIP; a SeCo-Eco head takes no auxiliary layers")
