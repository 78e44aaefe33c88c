"""SeCo-Eco features at labelled points, the way ``treemap embed --encoder seco-eco`` computes a map cell.

A point's feature vector is the value of the map cell that contains it: the cell of ``stride`` x ``stride`` pixels
on the CRS's ``10 x stride`` m grid of the point's UTM zone, read as a one-cell tile with its chip halo, with the
phenology and seasonal composites of the point's year (:mod:`treemap.embed_seco`). So a head fitted on these
features sees exactly what it will see in an embedding map made with the same chip, stride and season. Points in
the same cell and year share one computation.

Cache. Reading a cell's series and fitting its phenology is nearly all of the cost and does not depend on the
model, the season or the kind of head, so a cell's seasonal reflectance (int16 in the 1e-4 steps of
``seasonal_composites.tif``: stored exactly) is kept under ``$TREEMAP_CACHE/fewshot-seco/``. Its key is a SHA-256
of the cell (EPSG, bounds), the year, the recipe parts that shape the reflectance (chip, stride, index, minimum
observations), every scene used (id, asset hrefs, scale and offset) and treemap's version; a read with unreadable
assets is not cached, so a flaky server never freezes a gap. Fitting heads of several models or seasons on the same
points reads the imagery once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from treemap.embed_seco import SecoEmbedSpec, embed_seasonal, fine_tile, seasonal_reflectance, seco_tile_read
from treemap.points import Point, Skipped

__all__ = ["cell_tile", "point_chips", "point_features", "PointChips"]

log = logging.getLogger("treemap.fewshot")

#: Days searched either side of a point's year, as ``treemap embed --encoder seco-eco`` does.
MARGIN_DAYS = 183
#: Bumped when what the cache holds changes meaning.
CACHE_FORMAT = 1


def cell_tile(lon: float, lat: float, spec: SecoEmbedSpec):
    """The one-cell output tile (:class:`treemap.grid.Tile`) containing a point, and its footprint polygon."""
    from pyproj import Transformer
    from shapely.geometry import box

    from treemap.grid import Tile, utm_epsg

    epsg = utm_epsg(lon, lat)
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    res = spec.resolution
    c, r = math.floor(x / res), math.floor(y / res)
    bounds = (c * res, r * res, (c + 1) * res, (r + 1) * res)
    return Tile(0, 0, epsg, res, spec.plan_halo, bounds, (0, 0, 1, 1)), box(*bounds)


@dataclass(frozen=True)
class PointChips:
    """What a point's features are made from: the one-cell tile, its seasonal reflectance (4, 10, h, w) with the
    chip halo, and the spec with the point's year."""

    tile: object
    seasonal: np.ndarray
    spec: SecoEmbedSpec


def point_chips(points: list[Point], catalog, spec: SecoEmbedSpec) -> tuple[list[PointChips], list[int],
                                                                           list[Skipped]]:
    """The inputs of the points that have scenes (reads and phenology; no model), their indices, the skipped."""
    from treemap.cube import NoSceneReachesTile
    from treemap.grid import lonlat_bbox, scenes_for_tile
    from treemap.phenology_run import search_window
    from treemap.stac import Query

    cache: dict[tuple, PointChips | str] = {}
    chips, used, skipped = [], [], []
    for i, point in enumerate(points):
        tile, footprint = cell_tile(point.lon, point.lat, spec)
        key = (point.year, tile.epsg, tile.core_bounds)
        if key not in cache:
            year_spec = replace(spec, year=point.year)
            start, end = search_window(point.year, MARGIN_DAYS)
            read = fine_tile(tile, year_spec)
            scenes = catalog.search(Query(bbox=lonlat_bbox(read.read_bounds, tile.epsg), start=start, end=end))
            scenes = scenes_for_tile(scenes, tile)
            value: PointChips | str = "no_scenes"
            if scenes:
                try:
                    value = PointChips(tile, cached_seasonal(tile, scenes, footprint, year_spec), year_spec)
                except NoSceneReachesTile:
                    pass
            cache[key] = value
        value = cache[key]
        if isinstance(value, str):
            skipped.append(Skipped(point.row, point.key, value,
                                   f"no scene of {point.year} +- {MARGIN_DAYS} days has pixels at the point"))
            continue
        chips.append(value)
        used.append(i)
    return chips, used, skipped


def chips_key(tile, scenes: list, spec: SecoEmbedSpec) -> str:
    """The cache key of a cell's seasonal reflectance (see the module doc)."""
    import hashlib
    import json

    from treemap import __version__

    doc = {"version": __version__, "format": CACHE_FORMAT, "epsg": tile.epsg, "bounds": list(tile.core_bounds),
           "year": spec.year, "chip": spec.chip, "stride": spec.stride, "index": spec.index,
           "min_observations": spec.min_observations,
           "scenes": sorted([s.id, sorted(s.bands.items()), s.scale, s.offset] for s in scenes)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def cached_seasonal(tile, scenes: list, footprint, spec: SecoEmbedSpec) -> np.ndarray:
    """The cell's seasonal reflectance (:func:`treemap.embed_seco.seasonal_reflectance`), from the cache when a
    run before has made it from the same scenes."""
    import io

    from treemap.cache import cache_root
    from treemap.durable import atomic_write_bytes
    from treemap.outputs import NODATA_I16
    from treemap.phenology_run import LEVEL_SCALE, encode_reflectance

    path = cache_root() / "fewshot-seco" / f"{chips_key(tile, scenes, spec)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                stored = f["seasonal"]
            out = stored.astype(np.float32) * np.float32(LEVEL_SCALE)
            out[stored == NODATA_I16] = np.nan
            return out
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cached chips %s unreadable (%s): made again", path.name, exc)
    inputs = seco_tile_read(tile, scenes, footprint, spec)
    seasonal = seasonal_reflectance(inputs, spec)
    if not inputs.unreadable:
        buf = io.BytesIO()
        np.savez_compressed(buf, seasonal=encode_reflectance(seasonal))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())
        except OSError as exc:
            log.warning("cannot cache chips under %s (%s)", path.parent, exc.strerror or exc)
    return seasonal


def point_features(points: list[Point], catalog, spec: SecoEmbedSpec, model, batch_size: int = 256,
                   device: str = "cpu", chips: tuple | None = None) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """(features (M, D) float32, indices of the M points used, skipped points) for ``points``; the features are
    L2-normalised as in the map. ``chips``: the result of :func:`point_chips` for these points, to reuse."""
    found, used, skipped = chips if chips is not None else point_chips(points, catalog, spec)
    skipped = list(skipped)
    features, kept = [], []
    for i, c in zip(used, found):
        value = embed_seasonal(c.seasonal, c.tile, np.ones((1, 1), bool), c.spec, model, batch_size, device)[:, 0, 0]
        if not np.isfinite(value).all():
            p = points[i]
            skipped.append(Skipped(p.row, p.key, "no_clear_data", "no season of its chip has enough clear pixels"))
            continue
        features.append(value)
        kept.append(i)
    dim = int(model.config.feature_dim)
    out = np.stack(features).astype(np.float32) if features else np.empty((0, dim), np.float32)
    return out, kept, skipped
