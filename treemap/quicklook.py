"""Quicklook PNGs of the products: the dominant-species map with legend, scale bar and north arrow, and small
thumbnails of single probability bands.

Both read a decimated copy of one band (``out_shape=``: GDAL serves it from the COG's overviews), so the time and
memory a quicklook takes are bounded by ``max_pixels``, not by the size of the map: a 100,000 x 100,000 px product
renders like a 1,600 x 1,600 px one. Figures are plain :class:`matplotlib.figure.Figure` objects drawn by the Agg
canvas: no pyplot, no GUI, no change to matplotlib's global state (rcParams, backend). The PNG is rendered into
memory and written with :func:`treemap.durable.atomic_write_bytes` (temporary sibling, fsync, rename).

What the legend says is also embedded in the PNG as text chunks, for software and tests:

``treemap:legend``
    JSON list, one object per class that occurs in the map and per extra class the caller passed:
    ``{"value", "name", "pixels", "share_pct", "rgba", "kind": "class"|"extra", "shown"}``. ``share_pct`` is the
    share of the *mapped* (not nodata) pixels of the decimated read; ``shown`` is false for the classes folded
    into the "… N more" line of a long legend.
``treemap:quicklook``
    JSON object: source file name, CRS, source and read shapes, nodata share of the extent, scale bar length, the
    north arrow's reference and the grid convergence.

North arrow: the map is drawn in its own CRS (UTM metres), so "up" is *grid* north, which differs from true north
by the meridian convergence (0 on the zone's central meridian, up to about 2-3 degrees at the zone edges at
mid-latitudes). The arrow points to *true* north at the map centre, computed with pyproj (the grid point one
hundredth of a degree of latitude north of the centre); the footer states the angle between them, e.g. "true north
at the map centre, 1.3° west of grid north". Where no CRS is known, or the convergence cannot be computed, the
arrow points up and is labelled "grid N"; without a CRS there is no arrow. The scale bar is in grid metres (the UTM
scale factor, 0.9996-1.0010 within a zone, is ignored); a map in a geographic CRS (degrees) has none, and is drawn
at one degree of longitude = one degree of latitude.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the figure parts; errors, results and readers are re-exported here, where callers have always found them
from treemap.mapfigure import (RGBA, QuicklookError, QuicklookInfo, QuicklookNotFoundError,  # noqa: F401
                               _add_map_axes, _crs_label, _figure, _fit_shape, _fit_text, _map_box, _north, _pct,
                               _text_width, _unit_metres, _write_png, decimated_shape, length_label, nice_length,
                               read_class_table, read_decimated)

#: Figure resolution of the class-map quicklook, and the longest side of its map box (inches).
DPI = 120
MAP_IN = 8.0
#: Smallest side of the map box (inches): a very thin map is centred in a box this size, so the scale bar and the
#: north arrow fit.
MIN_BOX_IN = 3.0
#: The legend column (widest, narrowest, where its names start, the gap before the shares) and the margins (inches).
PANEL_IN = 4.5
PANEL_MIN_IN = 2.4
LEGEND_TEXT_X = 0.42
LEGEND_SEP_IN = 0.3
MARGIN_IN = 0.3
GAP_IN = 0.3
ROW_IN = 0.25
#: Legend entries shown before the rest is folded into one "… N more" line.
MAX_LEGEND = 20
#: The colour of a class that has neither a colour nor an extra-class entry.
UNKNOWN_RGBA: RGBA = (255, 0, 255, 255)
NOT_TREE_RGBA: RGBA = (217, 217, 217, 255)
#: The value not-tree pixels take in a quicklook drawn with a tree mask.
NOT_TREE_VALUE = 254


# -- the class map ----------------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    value: int
    name: str
    rgba: RGBA
    pixels: int
    share: float
    kind: str  # "class" | "extra" | "more"
    shown: bool = True

    def line(self) -> str:
        return f"{self.name} {_pct(self.share)}"


def _legend_entries(values: np.ndarray, counts: np.ndarray, names: list[str], colours: list[RGBA],
                    extra: dict[int, tuple[str, RGBA]], valid: int) -> list[_Entry]:
    share = (lambda n: 100.0 * n / valid) if valid else (lambda n: 0.0)
    present = dict(zip(values.tolist(), counts.tolist()))
    classes = []
    for value, n in present.items():
        if value in extra:
            continue
        name = names[value] if 0 <= value < len(names) else f"class {value}"
        rgba = colours[value] if 0 <= value < len(colours) else UNKNOWN_RGBA
        classes.append(_Entry(value, name, rgba, int(n), share(n), "class"))
    if len(classes) > MAX_LEGEND:
        keep = {e.value for e in sorted(classes, key=lambda e: (-e.pixels, e.value))[:MAX_LEGEND]}
        for e in classes:
            e.shown = e.value in keep
    classes.sort(key=lambda e: e.value)
    extras = [_Entry(v, name, tuple(int(c) for c in rgba), int(present.get(v, 0)), share(present.get(v, 0)),
                     "extra") for v, (name, rgba) in sorted(extra.items())]
    return classes + extras


def _palette(values: np.ndarray, names: list[str], colours: list[RGBA],
             extra: dict[int, tuple[str, RGBA]], nodata: int | None) -> np.ndarray:
    """RGBA (0..255) per value in ``values``; nodata is transparent."""
    out = np.empty((len(values), 4), dtype=np.uint8)
    for i, v in enumerate(values.tolist()):
        if nodata is not None and v == nodata:
            out[i] = (0, 0, 0, 0)
        elif v in extra:
            out[i] = extra[v][1]
        elif 0 <= v < len(colours):
            out[i] = colours[v]
        else:
            out[i] = UNKNOWN_RGBA
    return out


def _complete_colours(names: list[str], colours: list[RGBA]) -> list[RGBA]:
    from treemap.outputs import class_colours

    colours = [tuple(int(c) for c in (list(rgba) + [255])[:4]) for rgba in colours]
    if len(colours) < len(names):
        colours += class_colours(len(names))[len(colours):]
    return colours


def render_quicklook(
    raster: Path,
    out_png: Path,
    names: list[str],
    colours: list[RGBA],
    title: str,
    subtitle: str = "",
    nodata: int | None = 255,
    max_pixels: int = 1600,
    extra_classes: dict[int, tuple[str, RGBA]] | None = None,
    not_tree: Path | None = None,
) -> QuicklookInfo:
    """Draw the class map in band 1 of ``raster`` (class index 0..n-1 = ``names``, drawn in ``colours``) into
    ``out_png``, written atomically.

    The map is read decimated to at most ``max_pixels`` on its longest side and drawn in its own CRS at equal
    scale, with nodata transparent (white). The legend lists each class that occurs in the read, by class index,
    with its share of the mapped pixels ("Fagus sylvatica 23.4 %"); past :data:`MAX_LEGEND` classes only the most
    frequent are listed and the rest folded into "… N more". ``extra_classes`` maps further raster values to a
    (name, RGBA) pair, e.g. ``{254: ("not tree", NOT_TREE_RGBA)}``; they are always listed, after the classes.
    ``nodata=None`` takes the raster's own nodata value. A map without any mapped pixel still renders, saying
    "no data". ``not_tree``: a tree-mask raster on the same grid (0 = not tree); its not-tree pixels are drawn in
    grey as an extra class "not tree" (value :data:`NOT_TREE_VALUE`). See the module docstring for the scale bar, the north arrow and the PNG text chunks."""
    from matplotlib.offsetbox import AnchoredOffsetbox, AuxTransformBox, TextArea, VPacker
    from matplotlib.patches import Circle, Polygon, Rectangle
    from matplotlib.transforms import ScaledTranslation

    raster, out_png = Path(raster), Path(out_png)
    extra = {int(v): (str(name), tuple(int(c) for c in (list(rgba) + [255])[:4]))
             for v, (name, rgba) in (extra_classes or {}).items()}
    band = read_decimated(raster, 1, max_pixels)
    if not np.issubdtype(band.data.dtype, np.integer):
        raise QuicklookError(f"{raster} is not a class map: band 1 holds {band.data.dtype} values")
    if nodata is None:
        import rasterio

        with rasterio.open(raster) as ds:
            nodata = None if ds.nodata is None else int(ds.nodata)
    if nodata is not None and nodata in extra:
        raise QuicklookError(f"extra class {nodata} is the nodata value")
    colours = _complete_colours(list(names), list(colours))

    data = band.data
    if not_tree is not None:
        mask = read_decimated(Path(not_tree), 1, max_pixels).data
        if mask.shape != data.shape:
            raise QuicklookError(f"{not_tree} is not on the grid of {raster}")
        extra.setdefault(NOT_TREE_VALUE, ("not tree", NOT_TREE_RGBA))
        data = np.where(mask == 0, np.asarray(NOT_TREE_VALUE, dtype=data.dtype), data)
    if data.dtype == np.uint8:  # the products: a 256-entry palette, no per-pixel index array
        counts = np.bincount(data.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        counts = counts[values]
        palette = np.zeros((256, 4), np.uint8)
        palette[values] = _palette(values, list(names), colours, extra, nodata)
        codes = data
    else:
        values, codes, counts = np.unique(data, return_inverse=True, return_counts=True)
        codes = codes.reshape(data.shape)
        palette = _palette(values, list(names), colours, extra, nodata)
    is_nodata = values == nodata if nodata is not None else np.zeros(len(values), bool)
    nodata_px = int(counts[is_nodata].sum())
    valid = int(data.size - nodata_px)
    entries = _legend_entries(values[~is_nodata], counts[~is_nodata], list(names), colours, extra, valid)

    # -- layout (inches) --
    left, bottom, right, top = band.bounds
    width_u, height_u = right - left, top - bottom
    s, mw, mh, box_w, box_h = _map_box(width_u, height_u, MAP_IN, MIN_BOX_IN)
    # RGBA no larger than the map on the PNG: matplotlib resamples images in float (16 bytes a pixel)
    rgba = palette[_fit_shape(codes, (math.ceil(mh * DPI), math.ceil(mw * DPI)))]
    del codes
    shown = [e for e in entries if e.kind == "class" and e.shown]
    hidden = [e for e in entries if e.kind == "class" and not e.shown]
    extras = [e for e in entries if e.kind == "extra"]
    rows: list[_Entry] = list(shown)
    if hidden:
        n_more = sum(e.pixels for e in hidden)
        rows.append(_Entry(-1, f"… {len(hidden)} more", (0, 0, 0, 0), n_more,
                           100.0 * n_more / valid if valid else 0.0, "more"))
    rows += extras
    if valid == 0:
        rows = []
    heading = "Share of mapped area" if valid else "Legend"
    nodata_line = f"no data: {_pct(100.0 * nodata_px / data.size)} of the extent" if nodata_px else ""
    # the legend column's width, from the texts it holds (measured on a scratch figure)
    scratch = _figure(1, 1, DPI)
    pct_w = max([_text_width(scratch, _pct(e.share), 9.5) for e in rows] + [0.0])
    name_w = min(max([_text_width(scratch, e.name, 9.5) for e in rows] + [0.0]),
                 PANEL_IN - LEGEND_TEXT_X - LEGEND_SEP_IN - pct_w)
    panel_w = max(LEGEND_TEXT_X + name_w + LEGEND_SEP_IN + pct_w, _text_width(scratch, heading, 9),
                  LEGEND_TEXT_X + _text_width(scratch, nodata_line, 9), PANEL_MIN_IN) + 0.05
    del scratch
    n_rows = len(rows) + (1 if nodata_px else 0)
    legend_h = 0.45 + ROW_IN * n_rows + (0.15 if nodata_px and rows else 0) + 0.2
    header_h = 0.95 if subtitle else 0.72
    footer_h = 0.55
    body_h = max(box_h, legend_h)
    fig_w = MARGIN_IN + box_w + GAP_IN + panel_w + MARGIN_IN
    fig_h = header_h + body_h + footer_h
    fig = _figure(fig_w, fig_h, DPI)
    renderer = fig.canvas.get_renderer()
    px = DPI  # pixels per inch

    # -- the map --
    map_bottom = footer_h + body_h - box_h
    ax = _add_map_axes(fig, (MARGIN_IN, map_bottom, box_w, box_h), fig_w, fig_h, band.bounds, s, box_w, box_h)
    ax.imshow(rgba, extent=(left, right, bottom, top), origin="upper", interpolation="nearest", zorder=1)
    ax.add_patch(Rectangle((left, bottom), width_u, height_u, fill=False, edgecolor="0.35", linewidth=0.8,
                           clip_on=False, zorder=2))
    if not valid:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=22,
                color="0.45", zorder=3)

    # scale bar (grid metres, drawn in map units)
    unit_m = _unit_metres(band.crs)
    scale_m = 0.0
    if unit_m:
        width_m = width_u * unit_m
        scale_m = nice_length(0.2 * width_m, limit=width_m)
        bar_u = scale_m / unit_m
        thick_u = 0.07 / s
        bar = AuxTransformBox(ax.transData)
        bar.add_artist(Rectangle((0, 0), bar_u / 2, thick_u, facecolor="black", edgecolor="black", linewidth=0.8))
        bar.add_artist(Rectangle((bar_u / 2, 0), bar_u / 2, thick_u, facecolor="white", edgecolor="black",
                                 linewidth=0.8))
        label = TextArea(length_label(scale_m), textprops=dict(fontsize=9, color="black"))
        pack = VPacker(children=[label, bar], align="center", pad=0, sep=3)
        sb = AnchoredOffsetbox(loc="lower left", child=pack, pad=0.35, borderpad=0.6, frameon=True)
        sb.patch.set_facecolor("white")
        sb.patch.set_alpha(0.85)
        sb.patch.set_edgecolor("none")
        sb.set_zorder(5)
        ax.add_artist(sb)

    # north arrow: true north at the map centre where known (see the module docstring)
    angle, north_note = _north(band.crs, ((left + right) / 2, (bottom + top) / 2))
    theta = math.radians(angle or 0.0)

    def rot(x: float, y: float) -> tuple[float, float]:
        return x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)

    if band.crs is not None:  # without a CRS nothing says where north is
        anchor = ScaledTranslation(1 - 0.5 / box_w, 1 - 0.62 / box_h, ax.transAxes)
        trans = fig.dpi_scale_trans + anchor
        ax.add_patch(Circle((0, 0.02), 0.36, transform=trans, facecolor="white", alpha=0.8, edgecolor="none",
                            zorder=5))
        tip, notch, bl, br = rot(0, 0.1), rot(0, -0.18), rot(-0.1, -0.28), rot(0.1, -0.28)
        ax.add_patch(Polygon([tip, bl, notch], closed=True, transform=trans, facecolor="black", edgecolor="black",
                             linewidth=0.8, zorder=6))
        ax.add_patch(Polygon([tip, notch, br], closed=True, transform=trans, facecolor="white", edgecolor="black",
                             linewidth=0.8, zorder=6))
        nx, ny = rot(0, 0.2)
        ax.text(nx, ny, "N" if angle is not None else "grid N", transform=trans, ha="center", va="center",
                fontsize=11 if angle is not None else 8, fontweight="bold", rotation=-(angle or 0.0), zorder=7)

    # -- the legend: colour patch, name (cut to fit), share right-aligned in a column after the longest name --
    lx = MARGIN_IN + box_w + GAP_IN
    lax = fig.add_axes((lx / fig_w, footer_h / fig_h, panel_w / fig_w, body_h / fig_h))
    lax.set_xlim(0, panel_w)
    lax.set_ylim(body_h, 0)  # inches from the top of the panel
    lax.set_axis_off()
    lax.text(0, 0.05, heading, fontsize=9, color="0.35", style="italic", va="top")
    pct_x = LEGEND_TEXT_X + name_w + LEGEND_SEP_IN + pct_w
    y = 0.45
    for e in rows:
        if e.kind != "more":
            lax.add_patch(Rectangle((0, y - 0.08), 0.3, 0.16, facecolor=np.array(e.rgba) / 255, edgecolor="0.3",
                                    linewidth=0.5))
        t = lax.text(LEGEND_TEXT_X, y, e.name, fontsize=9.5, va="center",
                     color="0.25" if e.kind == "more" else "black")
        _fit_text(t, name_w * px + 1, renderer, min_size=9.5)  # one size for all names: cut, never shrink
        lax.text(pct_x, y, _pct(e.share), fontsize=9.5, ha="right", va="center")
        y += ROW_IN
    if nodata_px:
        y += 0.15 if rows else 0.0
        lax.add_patch(Rectangle((0, y - 0.08), 0.3, 0.16, facecolor="white", edgecolor="0.5", linewidth=0.5))
        lax.text(LEGEND_TEXT_X, y, nodata_line, fontsize=9, va="center", color="0.3")

    # -- title, subtitle, footer --
    text_w = (fig_w - 2 * MARGIN_IN) * px
    t = fig.text(MARGIN_IN / fig_w, 1 - 0.2 / fig_h, title, fontsize=15, fontweight="bold", va="top")
    _fit_text(t, text_w, renderer, min_size=10)
    if subtitle:
        t = fig.text(MARGIN_IN / fig_w, 1 - 0.55 / fig_h, subtitle, fontsize=10.5, color="0.25", va="top")
        _fit_text(t, text_w, renderer, min_size=8)
    rows_px, cols_px = band.source_shape
    rx, ry = band.resolution
    unit = " m" if unit_m == 1.0 else " map units" if band.crs is not None else ""
    pixel = f"{rx:g}{unit}" if rx == ry else f"{rx:g} × {ry:g}{unit}"
    line1 = f"{_crs_label(band.crs)} · pixel {pixel} · {cols_px} × {rows_px} px"
    if data.shape != band.source_shape:
        line1 += f", drawn from a {data.shape[1]} × {data.shape[0]} px decimated read"
    line2 = north_note + (" · scale bar in grid metres" if scale_m else
                          " · no scale bar (not a projected CRS)" if band.crs is not None else ", no scale bar")
    for i, line in enumerate((line1, line2)):
        t = fig.text(MARGIN_IN / fig_w, (0.38 - 0.17 * i) / fig_h, line, fontsize=8, color="0.35", va="center")
        _fit_text(t, text_w, renderer, min_size=6)

    legend_lines = tuple(e.line() for e in rows) if valid else ("no data",)
    listed = entries if valid else []
    metadata = {
        "Title": title,
        "Description": subtitle or title,
        "Software": "treemap quicklook (matplotlib)",
        "treemap:legend": json.dumps([
            {"value": e.value, "name": e.name, "pixels": e.pixels, "share_pct": round(e.share, 3),
             "rgba": list(e.rgba), "kind": e.kind, "shown": e.shown} for e in listed]),
        "treemap:quicklook": json.dumps({
            "source": raster.name, "crs": _crs_label(band.crs), "source_shape": list(band.source_shape),
            "read_shape": list(data.shape), "valid_pixels": valid,
            "nodata_pct": round(100.0 * nodata_px / data.size, 3),
            "scale_bar_m": scale_m, "north": "grid" if angle is None else "true",
            "convergence_deg": None if angle is None else round(angle, 4), "legend": list(legend_lines)}),
    }
    width_px, height_px = _write_png(fig, out_png, metadata)
    return QuicklookInfo(path=out_png, width_px=width_px, height_px=height_px, legend=legend_lines,
                         scale_bar_m=scale_m, read_shape=tuple(data.shape), source_shape=band.source_shape)


# -- probability thumbnails -------------------------------------------------------------------------------------------
def render_probability_thumbnail(
    raster: Path,
    band: int,
    out_png: Path,
    title: str,
    scale: float = 0.005,
    nodata: int | None = 255,
    max_pixels: int = 512,
    cmap: str = "viridis",
) -> QuicklookInfo:
    """A small PNG of probability band ``band`` (probability = DN x ``scale``; ``nodata`` white) in a perceptually
    uniform ramp with a colour bar 0..1. The read and the PNG are at most about ``max_pixels`` on their longest
    side (the PNG at least 300 px, for the title and the colour bar). The info's ``legend`` names the band and
    ``scale_bar_m`` is 0.0 (no scale bar)."""
    import matplotlib

    raster, out_png = Path(raster), Path(out_png)
    b = read_decimated(raster, band, max_pixels)
    data = b.data
    mask = data == nodata if nodata is not None else np.zeros(data.shape, bool)
    probs = np.ma.masked_array(np.clip(data.astype(np.float32) * scale, 0.0, 1.0), mask=mask)
    ramp = matplotlib.colormaps[cmap].with_extremes(bad=(1, 1, 1, 0))

    dpi = 100
    size_in = max(max_pixels, 300) / dpi
    bar_in, title_in, foot_in, margin = 0.95, 0.5, 0.3, 0.15
    longest = max(1.2, min(size_in - bar_in - 2 * margin, size_in - title_in - foot_in))
    left, bottom, right, top = b.bounds
    s, mw, mh, box_w, box_h = _map_box(right - left, top - bottom, longest, 1.2)
    fig_w = margin + box_w + bar_in + margin
    fig_h = title_in + box_h + foot_in
    fig = _figure(fig_w, fig_h, dpi)
    renderer = fig.canvas.get_renderer()
    ax = _add_map_axes(fig, (margin, foot_in, box_w, box_h), fig_w, fig_h, b.bounds, s, box_w, box_h)
    im = ax.imshow(probs, cmap=ramp, vmin=0.0, vmax=1.0, extent=(left, right, bottom, top), origin="upper",
                   interpolation="nearest")
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((left, bottom), right - left, top - bottom, fill=False, edgecolor="0.35",
                           linewidth=0.6, clip_on=False))
    valid = int((~mask).sum())
    if not valid:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.45")
    cax = fig.add_axes(((margin + box_w + 0.15) / fig_w, (foot_in + 0.1) / fig_h, 0.15 / fig_w,
                        (box_h - 0.2) / fig_h))
    cbar = fig.colorbar(im, cax=cax, ticks=[0, 0.25, 0.5, 0.75, 1.0])
    cbar.ax.tick_params(labelsize=7.5)
    cbar.set_label("probability", fontsize=8)
    t = fig.text(margin / fig_w, 1 - 0.12 / fig_h, title, fontsize=11, fontweight="bold", va="top")
    _fit_text(t, (fig_w - 2 * margin) * dpi, renderer, min_size=7)
    name = b.description or f"band {band}"
    foot = f"{_crs_label(b.crs).split(' (')[0]} · band {band}: {name}"
    t = fig.text(margin / fig_w, 0.14 / fig_h, foot, fontsize=7, color="0.35", va="center")
    _fit_text(t, (fig_w - 2 * margin) * dpi, renderer, min_size=5)

    stats = {"source": raster.name, "band": band, "description": b.description, "read_shape": list(data.shape),
             "source_shape": list(b.source_shape), "valid_pixels": valid}
    if valid:
        stats.update(min=round(float(probs.min()), 4), mean=round(float(probs.mean()), 4),
                     max=round(float(probs.max()), 4))
    width_px, height_px = _write_png(fig, out_png, {"Title": title, "Software": "treemap quicklook (matplotlib)",
                                                    "treemap:thumbnail": json.dumps(stats)})
    return QuicklookInfo(path=out_png, width_px=width_px, height_px=height_px, legend=(f"{name}: probability 0-1",),
                         scale_bar_m=0.0, read_shape=tuple(data.shape), source_shape=b.source_shape)
