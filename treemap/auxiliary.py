"""The model's 27 auxiliary inputs from the user's rasters: one layer set, the same values in maps and in training.

GeoTreeCLIP takes, per pixel, longitude, latitude, elevation, slope, aspect, SoilGrids water content at three depths
and the 19 WorldClim BIO variables (:data:`treemap.models.config.AUX_VARIABLES`). Longitude and latitude are the
pixel centre's; every other variable comes from a raster the user names in a *layer set* (a ``--aux`` YAML file,
or the ``auxiliary:`` section of an extraction recipe)::

    elevation: /data/copernicus-glo30.vrt             # a path or a GDAL source; slope and aspect derive from it
    soil_moisture_0_5cm: {path: /data/soilgrids/wv0033_0-5cm_mean.vrt, scale: 1.0}
    bio01: {path: /vsicurl/https://example.org/wc1/bio1.tif, band: 1, scale: 1.0, offset: 0.0, units: "0.1 degC"}

How a value is computed -- one function for a whole tile and for single training points, so a point's vector in a
shard equals the vector ``predict`` feeds the model at the pixel holding it, bit for bit:

* The grid is the UTM 10 m grid of treemap's tiles: pixel edges on multiples of 10 m, so a pixel centre is
  ``10 k + 5`` metres (exact in floating point) and a point's pixel is ``floor(x / 10)``.
* Each centre is projected into the layer's CRS with pyproj (per point, exactly), turned into a fractional pixel
  position with the layer's geotransform, and the layer is interpolated **bilinearly** between the four pixel
  centres around it; neighbours that are nodata or outside the raster drop out and the rest are re-weighted; with
  none left the value is missing. Then ``value * scale + offset``. Only the window of the layer around the
  requested centres is read (a 1 km WorldClim layer gives a few pixels per tile).
* **Slope and aspect** (when the layer set has no layer of their own) come from the elevation at the pixel centre
  and its eight neighbours 10 m apart on the same grid, by Horn's (1981) third-order finite differences: slope in
  degrees, aspect in degrees clockwise from grid north (the direction the slope faces, downhill); a flat pixel gets
  aspect 0 (as ``gdaldem aspect -zero_for_flat``). A missing neighbour makes both missing.
* A variable without a layer is missing (NaN), which the model masks, as the official data loader does for null
  values. The run says once which variables are missing.

Checks before a run (one line each, :class:`~treemap.errors.AuxError`): a layer that does not exist or GDAL cannot
open, one without a CRS, a band it does not have, an unknown variable name, and a layer that covers none of the
area. A layer that covers part of the area is a warning: its pixels outside are missing. A layer whose values over
the area look like other units than the model's (:data:`treemap.models.checkpoint.DEFAULT_AUX_RANGES`, e.g.
values a power of ten away from it, or a warmest-month temperature that never reaches 50 -- degC where WorldClim 1
stores 0.1 degC) is a warning naming the variable and the likely scale.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from treemap.errors import AuxError, AuxNotFoundError
from treemap.models.config import AUX_VARIABLES

log = logging.getLogger("treemap.auxiliary")

#: The variables a layer can give: every auxiliary variable but longitude and latitude.
LAYER_VARIABLES: tuple[str, ...] = AUX_VARIABLES[2:]
#: Variables derived from the elevation when the layer set has no layer for them.
DERIVED: tuple[str, ...] = ("slope", "aspect")
RES = 10.0  # the tile grid's pixel size (m)
_REMOTE = ("http://", "https://", "s3://", "gs://", "/vsi")
#: Max temperature of the warmest month and mean of the warmest quarter: above 5 degC (50 in 0.1 degC) nearly
#: everywhere trees grow, and below 50 everywhere when given in degC.
_WARM_TEMPERATURES = ("bio05", "bio10")


@dataclass(frozen=True)
class Layer:
    """One auxiliary variable: band ``band`` of ``path`` (a file or any GDAL source), as ``value * scale + offset``
    in the model's units."""

    variable: str
    path: str
    band: int = 1
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""

    def stamp(self) -> str:
        """What identifies the layer's content cheaply: size and modification time of a local file."""
        if self.path.startswith(_REMOTE):
            return self.path
        try:
            st = Path(self.path).stat()
        except OSError:
            return "missing"
        return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class LayerSet:
    """The layers of a run (see the module doc), by variable."""

    layers: tuple[Layer, ...] = ()
    source: str = ""  # the file it was read from, for messages

    def __post_init__(self) -> None:
        names = [layer.variable for layer in self.layers]
        unknown = sorted(set(names) - set(LAYER_VARIABLES))
        if unknown:
            raise AuxError(f"{self._where()}unknown auxiliary variable(s) {', '.join(unknown)}; known: "
                           f"{', '.join(LAYER_VARIABLES)}")
        if len(set(names)) != len(names):
            raise AuxError(f"{self._where()}a variable is given twice")

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    def __bool__(self) -> bool:
        return bool(self.layers)

    def layer(self, variable: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.variable == variable), None)

    def derives(self, variable: str) -> bool:
        """True when ``variable`` (slope or aspect) is computed from the elevation layer."""
        return variable in DERIVED and self.layer(variable) is None and self.layer("elevation") is not None

    def provided(self) -> tuple[str, ...]:
        return tuple(v for v in LAYER_VARIABLES if self.layer(v) is not None or self.derives(v))

    def missing(self) -> tuple[str, ...]:
        return tuple(v for v in LAYER_VARIABLES if v not in self.provided())

    def fingerprint(self) -> dict:
        return {layer.variable: [layer.path, layer.band, layer.scale, layer.offset, layer.stamp()]
                for layer in self.layers}

    def checksum(self) -> str:
        text = repr(sorted(self.fingerprint().items())).encode()
        return hashlib.sha256(text).hexdigest()[:16]

    def provenance(self) -> dict:
        return {"layers": {layer.variable: {"path": layer.path, "band": layer.band, "scale": layer.scale,
                                            "offset": layer.offset, "units": layer.units}
                           for layer in self.layers},
                "derived": [v for v in DERIVED if self.derives(v)], "missing": list(self.missing()),
                "checksum": self.checksum()}


# -- reading a layer set ------------------------------------------------------------------------------------------
def layer_set_from_mapping(doc: Mapping[str, Any], source: str = "", base: Path | None = None) -> LayerSet:
    """A :class:`LayerSet` from ``{variable: path | {path, band, scale, offset, units}}``; relative paths are taken
    from ``base``."""
    if not isinstance(doc, Mapping):
        raise AuxError(f"{source or 'the layer set'}: expected a mapping of variable names to layers")
    layers = []
    for variable, value in doc.items():
        where = f"{source}: {variable}" if source else str(variable)
        spec = {"path": value} if isinstance(value, (str, Path)) else value
        if not isinstance(spec, Mapping) or "path" not in spec:
            raise AuxError(f"{where}: give a raster path, or a mapping with 'path' (and 'band', 'scale', 'offset', "
                           "'units')")
        extra = sorted(set(spec) - {"path", "band", "scale", "offset", "units"})
        if extra:
            raise AuxError(f"{where}: unknown field(s) {', '.join(map(str, extra))}")
        try:
            band, scale, offset = int(spec.get("band", 1)), float(spec.get("scale", 1.0)), float(spec.get("offset", 0.0))
        except (TypeError, ValueError):
            raise AuxError(f"{where}: band must be an integer, scale and offset numbers") from None
        if band < 1 or not (math.isfinite(scale) and math.isfinite(offset)) or scale == 0:
            raise AuxError(f"{where}: band must be >= 1, scale non-zero and finite, offset finite")
        path = str(spec["path"])
        if base is not None and not path.startswith(_REMOTE) and not Path(path).expanduser().is_absolute():
            path = str((base / path).absolute())
        elif not path.startswith(_REMOTE):
            path = str(Path(path).expanduser().absolute())
        layers.append(Layer(str(variable), path, band, scale, offset, str(spec.get("units", ""))))
    return LayerSet(tuple(layers), source)


def read_layer_set(path: str | Path) -> LayerSet:
    """A ``--aux`` YAML file; one-line :class:`AuxError` for anything wrong in it."""
    from treemap.documents import read_yaml

    path = Path(path)
    doc = read_yaml(path, what="auxiliary layer set", error=AuxError)
    if isinstance(doc, Mapping) and set(doc) == {"layers"}:
        doc = doc["layers"]
    return layer_set_from_mapping(doc, str(path), path.parent.absolute())


# -- sampling ------------------------------------------------------------------------------------------------------
def _open(layer: Layer):
    import rasterio
    from rasterio.errors import RasterioIOError

    if not layer.path.startswith(_REMOTE) and not Path(layer.path).exists():
        raise AuxNotFoundError(f"auxiliary layer {layer.variable}: no such file {layer.path}")
    try:
        return rasterio.open(layer.path)
    except RasterioIOError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AuxError(f"auxiliary layer {layer.variable}: GDAL cannot read {layer.path} ({first})") from None


class _Source:
    """An open layer: its dataset, transform, CRS and nodata."""

    def __init__(self, layer: Layer):
        self.layer = layer
        self.ds = _open(layer)
        if self.ds.crs is None:
            self.ds.close()
            raise AuxError(f"auxiliary layer {layer.variable}: {layer.path} has no CRS (assign one with "
                           "gdal_edit.py -a_srs EPSG:xxxx)")
        if not 1 <= layer.band <= self.ds.count:
            n = self.ds.count
            self.ds.close()
            raise AuxError(f"auxiliary layer {layer.variable}: {layer.path} has {n} band(s), not band {layer.band}")
        self.nodata = self.ds.nodatavals[layer.band - 1]
        self._transformers: dict[int, Any] = {}

    def to_pixels(self, epsg: int, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (col, row) in the layer of points in EPSG:``epsg``; pixel centres at k + 0.5."""
        from pyproj import Transformer

        if epsg not in self._transformers:
            self._transformers[epsg] = Transformer.from_crs(epsg, self.ds.crs.to_wkt(), always_xy=True)
        sx, sy = self._transformers[epsg].transform(xs, ys)
        inv = ~self.ds.transform
        cols = inv.a * np.asarray(sx, dtype=np.float64) + inv.b * np.asarray(sy, dtype=np.float64) + inv.c
        rows = inv.d * np.asarray(sx, dtype=np.float64) + inv.e * np.asarray(sy, dtype=np.float64) + inv.f
        return cols, rows

    def bilinear(self, epsg: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The layer interpolated at points (float64, NaN = missing), scale and offset applied."""
        from rasterio.windows import Window

        cols, rows = self.to_pixels(epsg, xs, ys)
        out = np.full(cols.shape, np.nan)
        ok = np.isfinite(cols) & np.isfinite(rows)
        if not ok.any():
            return out
        # pixel-centre coordinates: value k sits at k + 0.5
        u, v = cols[ok] - 0.5, rows[ok] - 0.5
        c0, r0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fu, fv = u - c0, v - r0
        lo_c, hi_c = max(int(c0.min()), 0), min(int(c0.max()) + 2, self.ds.width)
        lo_r, hi_r = max(int(r0.min()), 0), min(int(r0.max()) + 2, self.ds.height)
        if hi_c <= lo_c or hi_r <= lo_r:
            return out
        data = self.ds.read(self.layer.band, window=Window(lo_c, lo_r, hi_c - lo_c, hi_r - lo_r)).astype(np.float64)
        valid = np.isfinite(data)
        if self.nodata is not None and not (isinstance(self.nodata, float) and math.isnan(self.nodata)):
            valid &= data != self.nodata
        num = np.zeros(u.shape)
        den = np.zeros(u.shape)
        for dc, dr, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
            cc, rr = c0 + dc - lo_c, r0 + dr - lo_r
            inside = (cc >= 0) & (cc < data.shape[1]) & (rr >= 0) & (rr < data.shape[0])
            ci, ri = np.clip(cc, 0, data.shape[1] - 1), np.clip(rr, 0, data.shape[0] - 1)
            good = inside & valid[ri, ci] & (w > 0)
            num += np.where(good, w * np.where(good, data[ri, ci], 0.0), 0.0)
            den += np.where(good, w, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = np.where(den > 0, num / den, np.nan)
        out[ok] = vals * self.layer.scale + self.layer.offset
        return out

    def close(self) -> None:
        self.ds.close()


def horn(a, b, c, d, e, f, g, h, i, res: float = RES) -> tuple[np.ndarray, np.ndarray]:
    """Slope (degrees) and aspect (degrees clockwise from grid north, downhill; 0 where flat) of the 3 x 3
    neighbourhoods ``a b c / d e f / g h i`` (rows north to south) on a grid of ``res`` metres (Horn 1981)."""
    with np.errstate(invalid="ignore"):
        east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * res)  # dz/dx, x east
        north = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * res)  # dz/dy, y north
        slope = np.degrees(np.arctan(np.hypot(east, north)))
        aspect = np.degrees(np.arctan2(-east, -north)) % 360.0
        aspect = np.where((east == 0) & (north == 0), 0.0, aspect)
    aspect = np.where(np.isfinite(slope), aspect, np.nan)
    return slope, aspect


_NEIGHBOURS = ((-1, 1), (0, 1), (1, 1), (-1, 0), (0, 0), (1, 0), (-1, -1), (0, -1), (1, -1))  # a..i: (dx, dy)


class AuxReader:
    """Reads a :class:`LayerSet` at pixel centres of the 10 m grid (see the module doc). Open it once per process
    and tile job; :meth:`close` when done."""

    def __init__(self, layer_set: LayerSet):
        self.layer_set = layer_set
        self._sources: dict[str, _Source] = {}
        try:
            for layer in layer_set.layers:
                self._sources[layer.variable] = _Source(layer)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for s in self._sources.values():
            s.close()
        self._sources.clear()

    def __enter__(self) -> AuxReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def at_centres(self, epsg: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """(len(LAYER_VARIABLES), N) float32 at the pixel centres (xs, ys) in EPSG:``epsg``; NaN = missing."""
        xs, ys = np.asarray(xs, dtype=np.float64).ravel(), np.asarray(ys, dtype=np.float64).ravel()
        out = np.full((len(LAYER_VARIABLES), xs.size), np.nan, dtype=np.float32)
        for k, variable in enumerate(LAYER_VARIABLES):
            if variable in self._sources:
                out[k] = self._sources[variable].bilinear(epsg, xs, ys)
        if any(self.layer_set.derives(v) for v in DERIVED):
            elev = self._sources["elevation"]
            z = [elev.bilinear(epsg, xs + dx * RES, ys + dy * RES) for dx, dy in _NEIGHBOURS]
            slope, aspect = horn(*z)
            for variable, values in (("slope", slope), ("aspect", aspect)):
                if self.layer_set.derives(variable):
                    out[LAYER_VARIABLES.index(variable)] = values
        return out

    def tile(self, epsg: int, core_bounds: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
        """(len(LAYER_VARIABLES), H, W) float32 on a tile's core grid (upper-left corner from ``core_bounds``)."""
        x0, _, _, y1 = core_bounds
        h, w = shape
        cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        return self.at_centres(epsg, x0 + RES * cols + RES / 2, y1 - RES * rows - RES / 2).reshape(-1, h, w)

    def points(self, epsg: int, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The values at the pixels holding points (xs, ys) in EPSG:``epsg``: (variables, N) and the pixel centres
        (cx, cy) they were computed at."""
        cx = np.floor(np.asarray(xs, dtype=np.float64) / RES) * RES + RES / 2
        cy = np.floor(np.asarray(ys, dtype=np.float64) / RES) * RES + RES / 2
        return self.at_centres(epsg, cx, cy), cx, cy


def pixel_centre(epsg: int, lon: float, lat: float) -> tuple[float, float, float, float]:
    """The centre of the 10 m pixel holding (lon, lat) on the grid of EPSG:``epsg``: (x, y, lon, lat)."""
    from pyproj import Transformer

    fwd = Transformer.from_crs(4326, epsg, always_xy=True)
    x, y = fwd.transform(lon, lat)
    cx, cy = math.floor(x / RES) * RES + RES / 2, math.floor(y / RES) * RES + RES / 2
    clon, clat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(cx, cy)
    return cx, cy, clon, clat


# -- checks over an area ------------------------------------------------------------------------------------------
def check_layers(layer_set: LayerSet, epsg: int, bounds: tuple[float, float, float, float],
                 n: int = 24) -> dict[str, float]:
    """Open every layer (one-line errors), sample it on an ``n`` x ``n`` grid over ``bounds`` (EPSG:``epsg``)
    and return the share of the area each layer covers; refuse a layer that covers none of it, warn for one that
    covers part, and for values that look like other units than the model's. Logs once which variables are
    missing."""
    from treemap.models.checkpoint import DEFAULT_AUX_RANGES

    x0, y0, x1, y1 = bounds
    gx, gy = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    coverage: dict[str, float] = {}
    with AuxReader(layer_set) as reader:
        for layer in layer_set.layers:
            values = reader._sources[layer.variable].bilinear(epsg, gx.ravel(), gy.ravel())
            share = float(np.isfinite(values).mean())
            coverage[layer.variable] = share
            if share == 0.0:
                raise AuxError(f"auxiliary layer {layer.variable} ({layer.path}) does not cover the area (or is "
                               "nodata all over it)")
            if share < 1.0:
                log.warning("auxiliary layer %s covers %.0f %% of the area; %s is missing elsewhere",
                            layer.variable, 100 * share, layer.variable)
            hint = units_hint(layer.variable, values[np.isfinite(values)], DEFAULT_AUX_RANGES.get(layer.variable))
            if hint:
                log.warning("auxiliary layer %s (%s): %s", layer.variable, layer.path, hint)
    missing = layer_set.missing()
    if missing:
        log.warning("%d auxiliary variable(s) have no layer and are masked: %s", len(missing), ", ".join(missing))
    return coverage


def units_hint(variable: str, values: np.ndarray, expected: tuple[float, float] | None) -> str:
    """A warning when ``values`` of ``variable`` fall outside the model's range and a power of ten would bring them
    inside ('' otherwise)."""
    if expected is None or values.size == 0:
        return ""
    lo, hi = expected
    span = hi - lo
    vmin, vmax = float(np.min(values)), float(np.max(values))
    if vmin >= lo - 0.05 * span and vmax <= hi + 0.05 * span:
        # inside the range; but a warmest-month or warmest-quarter temperature (WorldClim 1: 0.1 degC) that never
        # reaches 50 anywhere in the area is degC, unless the area is polar
        if variable in _WARM_TEMPERATURES and vmax < 50.0:
            return (f"values {vmin:g} .. {vmax:g} look like degC, but the model takes WorldClim 1's 0.1 degC "
                    "(set scale: 10 in the layer set)")
        return ""
    for factor in (0.1, 0.01, 10.0, 100.0):
        if vmin * factor >= lo - 0.05 * span and vmax * factor <= hi + 0.05 * span:
            return (f"values {vmin:g} .. {vmax:g} are outside the model's range {lo:g} .. {hi:g}; with scale "
                    f"{factor:g} they would fit: the layer looks like other units")
    return f"values {vmin:g} .. {vmax:g} are outside the model's range {lo:g} .. {hi:g}"
