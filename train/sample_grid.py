"""Where ``train.sample`` samples: points of a square grid in an equal-area CRS, kept on land and inside the AOI.

The grid (:class:`GridSpec`) has its nodes at ``origin + (i, j) * spacing`` metres of an equal-area CRS (default
EPSG:6933, the global Lambert cylindrical equal-area grid of EASE-Grid 2.0), so every node stands for the same
ground area wherever it lies. A location's id names its node, ``x{i:+d}y{j:+d}``: the same node keeps its id in any
run with the same spacing, origin and CRS, whatever the AOI.

The land mask (:func:`read_land`) is a GeoJSON file of polygons (EPSG:4326, or the CRS its legacy ``crs`` member
names) or any raster GDAL reads, in any CRS, where nonzero values are land (nodata and zero are not). Without a land
mask every node inside the AOI counts as land, with a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import shapely
from pyproj import CRS, Transformer

from treemap.errors import TreemapError

log = logging.getLogger("train.sample")

#: The default equal-area CRS of the grid.
DEFAULT_CRS = "EPSG:6933"
#: The most grid nodes one run enumerates (a spacing far too small for the area is a mistake).
MAX_NODES = 20_000_000


class SampleError(TreemapError, ValueError):
    """A sampling input that cannot be used (an empty land mask, no grid point on land, a bad CRS)."""


@dataclass(frozen=True)
class GridSpec:
    spacing_m: float
    origin: tuple[float, float] = (0.0, 0.0)
    crs: str = DEFAULT_CRS

    def to_json(self) -> dict:
        return {"spacing_m": self.spacing_m, "origin": list(self.origin), "crs": self.crs}


@dataclass(frozen=True)
class Location:
    """One grid node: its indices, equal-area coordinates and longitude/latitude."""

    id: str
    i: int
    j: int
    x: float
    y: float
    lon: float
    lat: float


def location_id(i: int, j: int) -> str:
    return f"x{i:+d}y{j:+d}"


def grid_crs(name: str) -> CRS:
    """The grid's CRS: projected, in metres; a warning when its projection is not known to be equal-area."""
    try:
        crs = CRS.from_user_input(name)
    except Exception as exc:  # noqa: BLE001 - pyproj raises CRSError and others
        raise SampleError(f"--crs {name}: not a CRS pyproj knows ({str(exc).splitlines()[0][:120]})") from None
    if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
        raise SampleError(f"--crs {name}: the grid needs a projected CRS in metres (an equal-area one)")
    method = (crs.coordinate_operation.method_name if crs.coordinate_operation else "").lower()
    if not any(word in method for word in ("equal area", "equal earth", "mollweide", "sinusoidal", "eckert iv")):
        log.warning("--crs %s (%s) is not a known equal-area projection: grid cells will differ in area", name,
                    method or "unknown projection")
    return crs


def _transform(src: CRS, dst: CRS) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def reproject(geometry, src: CRS, dst: CRS):
    """A shapely geometry from ``src`` to ``dst``, densified so long edges stay true."""
    step = 0.05 if src.is_geographic else 5000.0
    t = _transform(src, dst)
    dense = shapely.segmentize(geometry, max_segment_length=step)
    return shapely.transform(dense, lambda x, y: t.transform(x, y), interleaved=False)


# -- land mask ------------------------------------------------------------------------------------------------------
@dataclass
class LandMask:
    """``contains(x, y)`` in the grid CRS -> bool array; ``bounds`` of the land in the grid CRS (None: unbounded)."""

    source: str
    contains: Callable[[np.ndarray, np.ndarray], np.ndarray]
    bounds: tuple[float, float, float, float] | None


def _polygons(doc, source: str) -> list:
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        return [p for f in doc.get("features") or [] for p in _polygons(f, source)]
    if kind == "GeometryCollection":
        return [p for g in doc.get("geometries") or [] for p in _polygons(g, source)]
    if kind == "Feature":
        return _polygons(doc.get("geometry") or {}, source)
    if kind in ("Polygon", "MultiPolygon"):
        try:
            geom = shapely.geometry.shape(doc)
        except Exception as exc:  # noqa: BLE001 - shapely raises several kinds for broken coordinates
            raise SampleError(f"land mask {source}: invalid {kind} ({exc})") from None
        return [geom if geom.is_valid else shapely.make_valid(geom)]
    return []


def _vector_land(path: Path, grid: CRS) -> LandMask:
    from treemap.documents import read_json

    doc = read_json(path, what="land mask", kind="GeoJSON", error=SampleError)
    name = ((doc.get("crs") or {}).get("properties") or {}).get("name") if isinstance(doc, dict) else None
    try:
        src = CRS.from_user_input(name) if name else CRS.from_epsg(4326)
    except Exception:  # noqa: BLE001
        raise SampleError(f"land mask {path}: unknown crs {name!r}") from None
    parts = [p for p in _polygons(doc, str(path)) if not p.is_empty and p.area > 0]
    if not parts:
        raise SampleError(f"land mask {path} is empty: it holds no polygon with an area")
    land = reproject(shapely.union_all(parts), src, grid)
    shapely.prepare(land)
    return LandMask(str(path), lambda x, y: shapely.contains_xy(land, x, y), tuple(land.bounds))


def _raster_land(path: Path, grid: CRS) -> LandMask:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise SampleError(f"land mask {path} has no CRS")
            src, nodata, transform = CRS.from_user_input(ds.crs.to_wkt()), ds.nodata, ds.transform
            shape, bounds = (ds.height, ds.width), ds.bounds
    except RasterioIOError as exc:
        raise SampleError(f"cannot read land mask {path}: {str(exc).splitlines()[0][:200]}") from None
    box = reproject(shapely.box(*bounds), src, grid)
    to_src = _transform(grid, src)

    def contains(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape, dtype=bool)
        if not x.size:
            return out
        sx, sy = to_src.transform(x, y)
        col, row = ~transform * (np.asarray(sx), np.asarray(sy))
        row, col = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
        inside = (row >= 0) & (row < shape[0]) & (col >= 0) & (col < shape[1])
        idx = np.flatnonzero(inside)
        idx = idx[np.argsort(row[idx], kind="stable")]
        with rasterio.open(path) as ds:  # strips of rows: bounded memory for a global raster
            for start in range(0, idx.size, 1 << 16):
                part = idx[start:start + (1 << 16)]
                r0, r1 = int(row[part].min()), int(row[part].max()) + 1
                c0, c1 = int(col[part].min()), int(col[part].max()) + 1
                block = ds.read(1, window=((r0, r1), (c0, c1)))
                values = block[row[part] - r0, col[part] - c0]
                ok = values != 0
                if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
                    ok &= values != nodata
                if np.issubdtype(values.dtype, np.floating):
                    ok &= np.isfinite(values)
                out[part] = ok
        return out

    return LandMask(str(path), contains, tuple(box.bounds))


def read_land(path: str | Path | None, grid: CRS) -> LandMask | None:
    """The land mask of ``--land``: a GeoJSON (``.geojson``/``.json``) of polygons or a raster (nonzero = land)."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise SampleError(f"land mask not found: {path} does not exist")
    if path.suffix.lower() in (".geojson", ".json"):
        return _vector_land(path, grid)
    return _raster_land(path, grid)


# -- grid -----------------------------------------------------------------------------------------------------------
def grid_locations(spec: GridSpec, aoi=None, land: LandMask | None = None) -> list[Location]:
    """The grid nodes inside the AOI (an :class:`treemap.aoi.AOI`) and on land, north to south, west to east.

    At least one of ``aoi`` and ``land`` is needed. Without ``land`` every node in the AOI counts as land (warned).
    No node left is a :class:`SampleError`."""
    crs = grid_crs(spec.crs)
    if aoi is None and land is None:
        raise SampleError("give --aoi, --land or both: they say where to sample")
    area = None
    bounds = [-math.inf, -math.inf, math.inf, math.inf]
    if aoi is not None:
        area = reproject(aoi.geometry, CRS.from_epsg(4326), crs)
        shapely.prepare(area)
        bounds = list(area.bounds)
    if land is None:
        log.warning("no --land mask: every grid point inside the AOI counts as land")
    elif land.bounds is not None:
        lb = land.bounds
        bounds = [max(bounds[0], lb[0]), max(bounds[1], lb[1]), min(bounds[2], lb[2]), min(bounds[3], lb[3])]
    s, (ox, oy) = float(spec.spacing_m), spec.origin
    if not s > 0:
        raise SampleError(f"--spacing-km must be positive, got {s / 1000:g}")
    i0, i1 = math.ceil((bounds[0] - ox) / s), math.floor((bounds[2] - ox) / s)
    j0, j1 = math.ceil((bounds[1] - oy) / s), math.floor((bounds[3] - oy) / s)
    where = f"inside {'the AOI' if aoi is not None else 'the land mask'}"
    if i1 < i0 or j1 < j0:
        raise SampleError(f"no grid point (spacing {s / 1000:g} km) lies {where} on land")
    if (i1 - i0 + 1) * (j1 - j0 + 1) > MAX_NODES:
        raise SampleError(f"--spacing-km {s / 1000:g} gives more than {MAX_NODES:,} grid points for this area")
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j1, j0 - 1, -1))
    ii, jj = ii.ravel(), jj.ravel()
    x, y = ox + ii * s, oy + jj * s
    keep = np.ones(x.shape, dtype=bool)
    if area is not None:
        keep &= shapely.contains_xy(area, x, y)
    if land is not None:
        keep[keep] = land.contains(x[keep], y[keep])
    if not keep.any():
        raise SampleError(f"no grid point (spacing {s / 1000:g} km) lies {where} on land"
                          + (f" ({land.source})" if land is not None else ""))
    ii, jj, x, y = ii[keep], jj[keep], x[keep], y[keep]
    lon, lat = _transform(crs, CRS.from_epsg(4326)).transform(x, y)
    return [Location(location_id(int(a), int(b)), int(a), int(b), float(px), float(py), float(lo), float(la))
            for a, b, px, py, lo, la in zip(ii, jj, x, y, lon, lat)]

