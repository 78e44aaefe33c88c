"""The parts of a map figure: errors and results of the drawing functions, a band read decimated from a COG's
overviews, scale-bar lengths, true north from the CRS, text fitting and the PNG written atomically. Drawing the
class map and the thumbnails is :mod:`treemap.quicklook`'s."""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from treemap.durable import atomic_write_bytes, write_error
from treemap.errors import TreemapError

RGBA = tuple[int, int, int, int]


class QuicklookError(TreemapError, ValueError):
    """A raster that cannot be drawn: unreadable, not a class map, a band that does not exist."""


class QuicklookNotFoundError(QuicklookError, FileNotFoundError):
    """The raster to draw does not exist."""


# See the end of treemap.errors: an error that is a ValueError and an OSError must build itself as an OSError.
QuicklookNotFoundError.__new__ = OSError.__new__  # type: ignore[method-assign]


@dataclass(frozen=True)
class QuicklookInfo:
    """What was rendered: the PNG, its size, the legend lines as drawn, the scale bar length (0.0: none)."""

    path: Path
    width_px: int
    height_px: int
    legend: tuple[str, ...]
    scale_bar_m: float
    #: (rows, cols) of the decimated read and of the source band.
    read_shape: tuple[int, int] = (0, 0)
    source_shape: tuple[int, int] = (0, 0)


# -- reading ----------------------------------------------------------------------------------------------------------
def decimated_shape(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """(rows, cols) of a read whose longest side is at most ``max_pixels``, keeping the aspect; never below 1."""
    if max_pixels < 1:
        raise QuicklookError(f"max_pixels must be at least 1, got {max_pixels}")
    longest = max(height, width, 1)
    if longest <= max_pixels:
        return height, width
    factor = longest / max_pixels
    return (min(max_pixels, max(1, math.floor(height / factor + 0.5))),
            min(max_pixels, max(1, math.floor(width / factor + 0.5))))


@dataclass(frozen=True)
class _Band:
    data: np.ndarray
    source_shape: tuple[int, int]
    bounds: tuple[float, float, float, float]  # left, bottom, right, top (map units)
    crs: object  # rasterio CRS or None
    resolution: tuple[float, float]
    description: str


def _open(raster: Path):
    import rasterio

    raster = Path(raster)
    if not raster.exists():
        raise QuicklookNotFoundError(f"cannot read {raster}: no such file")
    try:
        return rasterio.open(raster)
    except Exception as exc:  # noqa: BLE001 - rasterio raises RasterioIOError and friends
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuicklookError(f"cannot read {raster}: {reason}") from None


def read_decimated(raster: Path, band: int = 1, max_pixels: int = 1600) -> _Band:
    """Band ``band`` of ``raster`` at a resolution whose longest side is at most ``max_pixels`` (nearest
    neighbour; GDAL reads the best overview), with the raster's georeferencing."""
    from rasterio.enums import Resampling

    with _open(raster) as ds:
        if not 1 <= band <= ds.count:
            raise QuicklookError(f"{raster} has no band {band} (it has {ds.count})")
        t = ds.transform
        if t.b != 0 or t.d != 0:
            raise QuicklookError(f"cannot draw {raster}: rotated or sheared rasters are not supported")
        shape = decimated_shape(ds.height, ds.width, max_pixels)
        try:
            data = ds.read(band, out_shape=shape, resampling=Resampling.nearest)
        except Exception as exc:  # noqa: BLE001
            raise QuicklookError(f"cannot read {raster}: {str(exc).strip() or type(exc).__name__}") from None
        if ds.crs is None and t.is_identity:  # not georeferenced: pixel coordinates, row 0 at the top
            bounds = (0.0, 0.0, float(ds.width), float(ds.height))
        else:
            if t.e > 0:  # south-up: row 0 is the southern edge
                data = data[::-1]
            b = ds.bounds
            bounds = (min(b.left, b.right), min(b.bottom, b.top), max(b.left, b.right), max(b.bottom, b.top))
        return _Band(data=data, source_shape=(ds.height, ds.width), bounds=bounds, crs=ds.crs,
                     resolution=(abs(t.a), abs(t.e)), description=ds.descriptions[band - 1] or "")


def read_class_table(raster: Path, band: int = 1) -> tuple[list[str], list[RGBA]]:
    """The class names (band metadata ``CLASS_i``) and colours (the colour table) of a class map written by
    :mod:`treemap.outputs`, for :func:`render_quicklook`. Missing colours are filled in later."""
    with _open(raster) as ds:
        tags = ds.tags(band)
        names: list[str] = []
        i = 0
        while f"CLASS_{i}" in tags:
            names.append(tags[f"CLASS_{i}"])
            i += 1
        try:
            cmap = ds.colormap(band)
        except ValueError:  # no colour table
            cmap = {}
    colours = [tuple(int(c) for c in cmap[i]) for i in range(len(names)) if i in cmap]
    return names, colours if len(colours) == len(names) else []


# -- geometry helpers -------------------------------------------------------------------------------------------------
def nice_length(target: float, limit: float | None = None) -> float:
    """The 1, 2 or 5 x 10^k closest (in ratio) to ``target``, below ``limit`` when given."""
    if not target > 0 or not math.isfinite(target):
        return 0.0
    k0 = math.floor(math.log10(target))
    candidates = [m * 10.0 ** k for k in range(k0 - 1, k0 + 2) for m in (1, 2, 5)]
    if limit is not None:
        candidates = [c for c in candidates if c < limit] or [min(candidates)]
    best = min(candidates, key=lambda c: abs(math.log(c / target)))
    return float(f"{best:.12g}")  # 0.30000000000000004 -> 0.3


def length_label(metres: float) -> str:
    if metres >= 1000:
        return f"{metres / 1000:g} km"
    return f"{metres:g} m"


def _pct(share: float) -> str:
    if share <= 0:
        return "0 %"
    if share < 0.05:
        return "<0.1 %"
    return f"{share:.1f} %"


def _north(crs, centre: tuple[float, float]) -> tuple[float | None, str]:
    """(angle of true north clockwise from grid up in degrees, or None when unknown; the footer's words)."""
    if crs is None:
        return None, "no CRS: no north arrow"
    try:
        from pyproj import CRS, Transformer

        pcrs = CRS.from_user_input(crs.to_wkt())
        if pcrs.is_geographic:
            return 0.0, "north is up"
        to_geo = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
        to_map = Transformer.from_crs(pcrs.geodetic_crs, pcrs, always_xy=True)
        lon, lat = to_geo.transform(*centre)
        step = 0.01 if lat < 89.0 else -0.01
        x2, y2 = to_map.transform(lon, lat + step)
        dx, dy = (x2 - centre[0]) * math.copysign(1, step), (y2 - centre[1]) * math.copysign(1, step)
        angle = math.degrees(math.atan2(dx, dy))
        if not math.isfinite(angle):
            raise ValueError("not finite")
    except Exception:  # noqa: BLE001 - any failure of the projection: fall back to grid north
        return None, "north arrow: grid north (true north could not be computed)"
    if abs(angle) < 0.05:
        return angle, "north arrow: true north at the map centre (= grid north)"
    side = "east" if angle > 0 else "west"
    return angle, f"north arrow: true north at the map centre, {abs(angle):.1f}° {side} of grid north"


def _crs_label(crs) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    name = ""
    try:
        from pyproj import CRS

        name = CRS.from_user_input(crs.to_wkt()).name
    except Exception:  # noqa: BLE001
        pass
    code = f"EPSG:{epsg}" if epsg else "CRS (no EPSG code)"
    return f"{code} ({name})" if name and name != "unknown" else code


def _unit_metres(crs) -> float | None:
    """Metres per map unit of a projected CRS; None for a geographic CRS or none."""
    if crs is None or not crs.is_projected:
        return None
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001
        return 1.0


def _fit_text(text, max_width_px: float, renderer, min_size: float = 7.0) -> None:
    """Shrink a Text's font, then cut it with "…", until it is at most ``max_width_px`` wide."""
    if max_width_px <= 0:
        return
    size = text.get_fontsize()
    while text.get_window_extent(renderer).width > max_width_px and size > min_size:
        size -= 0.5
        text.set_fontsize(size)
    if text.get_window_extent(renderer).width <= max_width_px:
        return
    full = text.get_text()
    lo, hi = 1, len(full)  # the longest prefix that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        text.set_text(full[:mid].rstrip() + "…")
        if text.get_window_extent(renderer).width <= max_width_px:
            lo = mid
        else:
            hi = mid - 1
    text.set_text(full[:lo].rstrip() + "…")


def _text_width(fig, text: str, size: float) -> float:
    """Width in inches of ``text`` at ``size`` points on ``fig``."""
    if not text:
        return 0.0
    t = fig.text(0, 0, text, fontsize=size)
    width = t.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    t.remove()
    return width


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _write_png(fig, out_png: Path, metadata: dict[str, str]) -> tuple[int, int]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf, metadata=metadata)  # not savefig: no rcParams (savefig.bbox, dpi) can change the size
    data = buf.getvalue()
    out_png = Path(out_png)
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out_png, exc) from None
    atomic_write_bytes(out_png, data)
    return _png_size(data)


def _figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _fit_shape(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` sampled (nearest) down to at most ``shape``; unchanged when it is no larger."""
    rows = min(a.shape[0], max(1, shape[0]))
    cols = min(a.shape[1], max(1, shape[1]))
    if (rows, cols) == a.shape[:2]:
        return a
    ri = ((np.arange(rows) + 0.5) * a.shape[0] / rows).astype(np.intp)
    ci = ((np.arange(cols) + 0.5) * a.shape[1] / cols).astype(np.intp)
    return a[np.ix_(ri, ci)]


def _map_box(width_m: float, height_m: float, longest_in: float, min_in: float):
    """(inches per map unit, map width in, map height in, box width in, box height in)."""
    width_m, height_m = max(width_m, 1e-9), max(height_m, 1e-9)
    s = longest_in / max(width_m, height_m)
    mw, mh = width_m * s, height_m * s
    return s, mw, mh, max(mw, min_in), max(mh, min_in)


def _add_map_axes(fig, rect_in, fig_w, fig_h, bounds, s, box_w, box_h):
    """An axes at ``rect_in`` (inches: left, bottom, width, height) showing ``bounds`` centred at equal scale."""
    left, bottom, right, top = bounds
    x0, y0, w, h = rect_in
    ax = fig.add_axes((x0 / fig_w, y0 / fig_h, w / fig_w, h / fig_h))
    cx, cy = (left + right) / 2, (bottom + top) / 2
    ax.set_xlim(cx - box_w / (2 * s), cx + box_w / (2 * s))
    ax.set_ylim(cy - box_h / (2 * s), cy + box_h / (2 * s))
    ax.set_aspect("equal", adjustable="box")
    ax.set_axis_off()
    ax.set_facecolor("white")
    return ax
