"""Windows of an extraction (see :mod:`treemap.extract`): the occurrence points located on their UTM zone's 10 m grid
and grouped, per year, into windows of at most ``window_px`` pixels in spatial order (:func:`plan`); one window read
as a small tile into the points' 5 x 5 patches of monthly composites (:func:`window_patches`) and turned into
training samples (:func:`window_samples`), or the reason each point is skipped."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date

import numpy as np
import torch

from treemap.extract_aux import AuxSampler
from treemap.extract_options import Compositing
from treemap.models.config import AUX_VARIABLES
from treemap.points import Point, Skipped
from treemap.shards import Sample

RESOLUTION = 10.0
PATCH = 5
HALO = PATCH // 2


# -- planning -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Located:
    point: Point
    epsg: int
    col: int  # pixel column on the zone's 10 m grid (x // 10)
    row: int  # pixel row counted northward (y // 10)


@dataclass
class Window:
    year: int
    epsg: int
    cell: tuple[int, int]
    members: list[int]  # indices into the plan's point order


def locate(points: list[Point]) -> list[Located]:
    from pyproj import Transformer

    from treemap.grid import utm_epsg

    by_zone: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(points):
        by_zone[utm_epsg(p.lon, p.lat)].append(i)
    out: list[Located | None] = [None] * len(points)
    for epsg, idx in by_zone.items():
        tr = Transformer.from_crs(4326, epsg, always_xy=True)
        xs, ys = tr.transform(np.array([points[i].lon for i in idx]), np.array([points[i].lat for i in idx]))
        for i, x, y in zip(idx, np.atleast_1d(xs), np.atleast_1d(ys)):
            out[i] = Located(points[i], epsg, int(math.floor(x / RESOLUTION)), int(math.floor(y / RESOLUTION)))
    return out  # type: ignore[return-value]


def plan(points: list[Point], window_px: int) -> tuple[list[Located], list[Window]]:
    """Points in shard order (grouped by window, windows in spatial order) and the windows."""
    located = locate(points)

    def cell(loc: Located) -> tuple[int, int]:
        return (-(loc.row // window_px), loc.col // window_px)  # north to south, then west to east

    located.sort(key=lambda loc: (loc.point.year, loc.epsg, cell(loc), -loc.row, loc.col, loc.point.row))
    windows: list[Window] = []
    for i, loc in enumerate(located):
        key = (loc.point.year, loc.epsg, cell(loc))
        if not windows or (windows[-1].year, windows[-1].epsg, windows[-1].cell) != key:
            windows.append(Window(loc.point.year, loc.epsg, cell(loc), []))
        windows[-1].members.append(i)
    return located, windows


# -- composites ---------------------------------------------------------------------------------------------------
ALL_SCL = tuple(range(256))


def _window_tile(members: list[Located], epsg: int):
    from treemap.grid import Tile

    c0 = min(m.col for m in members)
    c1 = max(m.col for m in members) + 1
    r0 = min(m.row for m in members)
    r1 = max(m.row for m in members) + 1
    core = (c0 * RESOLUTION, r0 * RESOLUTION, c1 * RESOLUTION, r1 * RESOLUTION)
    return Tile(0, 0, epsg, RESOLUTION, HALO, core, (0, 0, c1 - c0, r1 - r0)), c0, r1


def window_patches(catalog, members: list[Located], year: int, epsg: int, compositing: Compositing
                   ) -> tuple[dict[int, np.ndarray], dict[int, Skipped], int]:
    """Patches (12, 10, 5, 5) of the points of one window (by position in ``members``), the skipped ones, and the
    number of scenes used."""
    from treemap.composite import monthly_composites
    from treemap.cube import CLEAR_SCL, NoSceneReachesTile, TileCube
    from treemap.grid import lonlat_bbox
    from treemap.patches import fill_present_months
    from treemap.stac import Query

    tile, c0, r1 = _window_tile(members, epsg)
    query = Query(bbox=lonlat_bbox(tile.read_bounds, epsg), start=date(year, 1, 1), end=date(year, 12, 31),
                  max_cloud=compositing.max_cloud)
    scenes = catalog.search(query)
    skipped: dict[int, Skipped] = {}
    cube = None
    if scenes:
        try:
            cube = TileCube(scenes, tile)
        except NoSceneReachesTile:
            pass  # footprint boxes only: as if none was found
    if cube is None:
        cloud = f" with at most {compositing.max_cloud:g} % cloud" if compositing.max_cloud < 100 else ""
        for i, m in enumerate(members):
            skipped[i] = Skipped(m.point.row, m.point.key, "no_scenes",
                                 f"no Sentinel-2 L2A scene of {year}{cloud} in {catalog.name} covers the point")
        return {}, skipped, 0
    comps, _ = monthly_composites(cube, CLEAR_SCL if compositing.scl_mask else ALL_SCL)
    patches: dict[int, np.ndarray] = {}
    for i, m in enumerate(members):
        r = (r1 - 1 - m.row) + HALO  # read-grid row of the point's pixel
        c = (m.col - c0) + HALO
        patch = comps[:, :, r - HALO:r + HALO + 1, c - HALO:c + HALO + 1][None].copy()
        patch = fill_present_months(patch)[0]
        if np.isnan(patch).all():
            inside = any(s.bbox[0] <= m.point.lon <= s.bbox[2] and s.bbox[1] <= m.point.lat <= s.bbox[3]
                         for s in scenes)
            if inside:
                skipped[i] = Skipped(m.point.row, m.point.key, "no_clear_data",
                                     f"no clear observation of the point in any month of {year}")
            else:
                skipped[i] = Skipped(m.point.row, m.point.key, "outside_scenes",
                                     f"the point lies outside every scene footprint of {year}")
            continue
        patches[i] = patch.astype(np.float32)
    return patches, skipped, len(cube.scenes)


# -- samples -----------------------------------------------------------------------------------------------------
def pixel_centre_lonlat(epsg: int, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (float32) of the centres of 10 m pixels, computed as
    :func:`treemap.grid.pixel_centres_lonlat` computes them for a tile."""
    from pyproj import CRS, Transformer

    xs = np.asarray(cols, dtype=np.float64) * RESOLUTION + RESOLUTION / 2
    ys = np.asarray(rows, dtype=np.float64) * RESOLUTION + RESOLUTION / 2
    lon, lat = Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(4326), always_xy=True).transform(xs, ys)
    return np.asarray(lon).astype(np.float32), np.asarray(lat).astype(np.float32)


def window_samples(catalog, members: list[Located], year: int, epsg: int, compositing: Compositing,
                   aux: AuxSampler | None = None) -> tuple[list[Sample | Skipped], int]:
    """The sample of each of the points ``members`` of one window (in order), or why it is skipped, and the number
    of scenes used. The auxiliary variables are those of the pixel holding the point, as ``treemap predict`` feeds
    them to the model there: longitude and latitude of the pixel centre (float32), the others from ``aux`` (the
    recipe's rasters, :mod:`treemap.auxiliary`), null where it has none."""
    patches, skipped, n_scenes = window_patches(catalog, members, year, epsg, compositing)
    cols = np.array([m.col for m in members], dtype=np.int64)
    rows = np.array([m.row for m in members], dtype=np.int64)
    lons, lats = pixel_centre_lonlat(epsg, cols, rows)
    values = aux.sample_pixels(epsg, cols, rows) if aux is not None else {}
    results: list[Sample | Skipped] = []
    for j, m in enumerate(members):
        if j in skipped:
            results.append(skipped[j])
            continue
        aux_values = {v: None for v in AUX_VARIABLES}
        aux_values.update(longitude=float(lons[j]), latitude=float(lats[j]))
        for name, vals in values.items():
            aux_values[name] = vals[j]
        results.append(Sample(m.point.key, torch.from_numpy(patches[j]), dict(m.point.text), aux_values))
    return results, n_scenes
