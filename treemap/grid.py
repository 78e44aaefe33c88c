"""Tile plans: an AOI on the 10 m grid of its UTM zone, cut into tiles with a halo.

Everything here is pure geometry. A tile's *core* is the part of the output grid it writes; its *read* bounds add a
halo of ``halo`` pixels on each side so every core pixel has its full (2 halo + 1)^2 neighbourhood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import shapely
from pyproj import CRS, Transformer
from shapely.geometry import box

from treemap.aoi import AOI

Bounds = tuple[float, float, float, float]


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone holding a point (326xx north, 327xx south), with the Norway/Svalbard rules."""
    zone = int((lon + 180) // 6) + 1
    zone = min(max(zone, 1), 60)
    if 56 <= lat < 64 and 3 <= lon < 12:
        zone = 32
    if 72 <= lat < 84 and lon >= 0:
        for lo, hi, z in ((0, 9, 31), (9, 21, 33), (21, 33, 35), (33, 42, 37)):
            if lo <= lon < hi:
                zone = z
    return (32600 if lat >= 0 else 32700) + zone


def to_crs(geometry, epsg: int, src_epsg: int = 4326):
    """Reproject a shapely geometry (densified so long edges stay true)."""
    transformer = Transformer.from_crs(CRS.from_epsg(src_epsg), CRS.from_epsg(epsg), always_xy=True)
    dense = shapely.segmentize(geometry, max_segment_length=0.01 if src_epsg == 4326 else 500.0)
    return shapely.transform(dense, lambda x, y: transformer.transform(x, y), interleaved=False)


@dataclass(frozen=True)
class Tile:
    """One tile of a plan. Windows are (col_off, row_off, width, height) in the plan's output grid."""

    row: int
    col: int
    epsg: int
    resolution: float
    halo: int
    core_bounds: Bounds
    window: tuple[int, int, int, int]

    @property
    def id(self) -> str:
        return f"r{self.row:03d}c{self.col:03d}"

    @property
    def width(self) -> int:
        return self.window[2]

    @property
    def height(self) -> int:
        return self.window[3]

    @property
    def read_bounds(self) -> Bounds:
        pad = self.halo * self.resolution
        x0, y0, x1, y1 = self.core_bounds
        return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)

    @property
    def read_shape(self) -> tuple[int, int]:
        """(height, width) of the halo-padded read grid."""
        return (self.height + 2 * self.halo, self.width + 2 * self.halo)


@dataclass(frozen=True)
class TilePlan:
    """The output grid for an AOI and the tiles that cover it."""

    epsg: int
    resolution: float
    bounds: Bounds
    tile_size: int
    halo: int
    tiles: tuple[Tile, ...]

    @property
    def width(self) -> int:
        return round((self.bounds[2] - self.bounds[0]) / self.resolution)

    @property
    def height(self) -> int:
        return round((self.bounds[3] - self.bounds[1]) / self.resolution)

    @property
    def transform(self):
        from rasterio.transform import from_origin

        return from_origin(self.bounds[0], self.bounds[3], self.resolution, self.resolution)


def snap_bounds(bounds: Bounds, resolution: float) -> Bounds:
    """Grow bounds outward to multiples of the resolution (the grid has its origin at 0, 0 of the CRS)."""
    x0, y0, x1, y1 = bounds
    r = resolution
    return (math.floor(x0 / r) * r, math.floor(y0 / r) * r, math.ceil(x1 / r) * r, math.ceil(y1 / r) * r)


def plan_tiles(
    aoi: AOI, tile_size: int = 512, halo: int = 2, resolution: float = 10.0, epsg: int | None = None
) -> TilePlan:
    """Cover the AOI with tiles on the ``resolution`` grid of its UTM zone; tiles that miss the AOI are dropped."""
    if tile_size < 1:
        raise ValueError("tile_size must be positive")
    if epsg is None:
        centre = aoi.geometry.centroid
        epsg = utm_epsg(centre.x, centre.y)
    local = to_crs(aoi.geometry, epsg)
    bounds = snap_bounds(local.bounds, resolution)
    width = round((bounds[2] - bounds[0]) / resolution)
    height = round((bounds[3] - bounds[1]) / resolution)
    shapely.prepare(local)
    tiles = []
    for row, row_off in enumerate(range(0, height, tile_size)):
        for col, col_off in enumerate(range(0, width, tile_size)):
            w = min(tile_size, width - col_off)
            h = min(tile_size, height - row_off)
            x0 = bounds[0] + col_off * resolution
            y1 = bounds[3] - row_off * resolution
            core = (x0, y1 - h * resolution, x0 + w * resolution, y1)
            if local.intersects(box(*core)):
                tiles.append(Tile(row, col, epsg, resolution, halo, core, (col_off, row_off, w, h)))
    return TilePlan(epsg, resolution, bounds, tile_size, halo, tuple(tiles))


def lonlat_bbox(bounds: Bounds, epsg: int) -> Bounds:
    """The EPSG:4326 bounding box of projected bounds."""
    return tuple(to_crs(box(*bounds), 4326, src_epsg=epsg).bounds)  # type: ignore[return-value]


def pixel_centres_lonlat(tile: Tile):
    """Longitude and latitude of the centres of a tile's core pixels, shape (2, H, W), float32."""
    import numpy as np

    x0, _, _, y1 = tile.core_bounds
    res = tile.resolution
    xs = x0 + (np.arange(tile.width) + 0.5) * res
    ys = y1 - (np.arange(tile.height) + 0.5) * res
    gx, gy = np.meshgrid(xs, ys)
    transformer = Transformer.from_crs(CRS.from_epsg(tile.epsg), CRS.from_epsg(4326), always_xy=True)
    lon, lat = transformer.transform(gx, gy)
    return np.stack([lon, lat]).astype(np.float32)


def scenes_for_tile(scenes: list, tile: Tile) -> list:
    """The scenes (anything with a lon/lat ``bbox``) whose footprint box meets the tile's read bounds."""
    w, s, e, n = lonlat_bbox(tile.read_bounds, tile.epsg)
    return [sc for sc in scenes if sc.bbox[0] <= e and w <= sc.bbox[2] and sc.bbox[1] <= n and s <= sc.bbox[3]]


def core_mask(tile: Tile, local_aoi):
    """(H, W) bool over the tile's core: True for pixels whose centre lies in the AOI (in the plan's CRS)."""
    from rasterio.features import geometry_mask
    from rasterio.transform import from_origin

    x0, _, _, y1 = tile.core_bounds
    return geometry_mask([local_aoi], out_shape=(tile.height, tile.width), invert=True,
                         transform=from_origin(x0, y1, tile.resolution, tile.resolution))


def core_index(tile: Tile) -> tuple[slice, ...]:
    """Index of a tile's core pixels in a (T, bands, H, W) block of its halo-padded read grid."""
    return (slice(None), slice(None), slice(tile.halo, tile.halo + tile.height),
            slice(tile.halo, tile.halo + tile.width))
