"""Raster products: per-tile GeoTIFFs, their mosaic as Cloud-Optimized GeoTIFFs, band metadata and colour tables.

Nothing is ever written at a final path directly: files are written under a temporary name in the same folder, run
with GDAL errors raised, synced, read back, and only then renamed into place (:mod:`treemap.durable`), so an
interrupted or failed write never leaves a partial raster behind. Whole product sets are staged and published by
:mod:`treemap.publish`.
"""

from __future__ import annotations

import colorsys
import errno
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.shutil import copy as gdal_copy

from treemap.durable import (atomic_write_json, commit_raster, gdal_errors, replace, sync_file,
                             temporary_sibling, write_error)
from treemap.errors import OutputError
from treemap.grid import Tile, TilePlan

#: Probabilities are stored as uint8: probability = DN * PROB_SCALE; 255 is nodata.
PROB_SCALE = 0.005
PROB_MAX_DN = 200
NODATA_U8 = 255


BLOCK = 512

#: Signed 16-bit products (phenology): nodata value.
NODATA_I16 = -32768

#: numpy dtype name -> GDAL data type name, for the dtypes products use.
_GDAL_TYPES = {"uint8": "Byte", "int16": "Int16", "uint16": "UInt16", "int32": "Int32", "float32": "Float32"}


def overview_count(width: int, height: int, block: int = BLOCK) -> int:
    """Halve until the coarsest overview fits in one block; at least one level, so every product has overviews."""
    return max(1, math.ceil(math.log2(max(width, height, 1) / block)))


def encode_probability(probs: np.ndarray) -> np.ndarray:
    """Float probabilities (NaN = nodata) -> uint8 DN."""
    out = np.full(probs.shape, NODATA_U8, dtype=np.uint8)
    ok = ~np.isnan(probs)
    out[ok] = np.clip(np.rint(probs[ok] / PROB_SCALE), 0, PROB_MAX_DN).astype(np.uint8)
    return out


def dominant_class(probs: np.ndarray) -> np.ndarray:
    """Index of the most probable class along axis 0 as uint8; nodata where the pixel has no probabilities."""
    if probs.shape[0] >= NODATA_U8:
        raise OutputError(f"dominant class map supports at most {NODATA_U8 - 1} classes, got {probs.shape[0]}")
    missing = np.isnan(probs).all(axis=0)
    out = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=0).astype(np.uint8)
    out[missing] = NODATA_U8
    return out


def class_colours(n: int) -> list[tuple[int, int, int, int]]:
    """n distinct, deterministic RGBA colours (golden-angle hues)."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.85 - 0.25 * ((i // 2) % 2))
        colours.append((round(r * 255), round(g * 255), round(b * 255), 255))
    return colours


def ensure_writable_dir(path: Path) -> Path:
    """Create the output folder if needed and prove it is writable. The probe is an unnamed file (``O_TMPFILE``)
    where the filesystem supports it, so even a kill at that moment leaves nothing in the folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, getattr(os, "O_TMPFILE", 0) | os.O_WRONLY, 0o600))
        except (OSError, ValueError) as exc:  # no O_TMPFILE here (or on this filesystem): a named probe
            if getattr(exc, "errno", None) in (errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                raise
            probe = path / f".treemap-write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
    except FileExistsError:
        raise OutputError(f"output path exists and is not a folder: {path}") from None
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


def write_tile_raster(path: Path, tile: Tile, data: np.ndarray, nodata: int | float = NODATA_U8) -> Path:
    """A plain tiled GeoTIFF of one tile's core (bands, H, W) in ``data``'s dtype, written atomically."""
    from rasterio.transform import from_origin

    x0, _, _, y1 = tile.core_bounds
    profile = dict(driver="GTiff", width=tile.width, height=tile.height, count=data.shape[0], dtype=data.dtype.name,
                   crs=f"EPSG:{tile.epsg}", transform=from_origin(x0, y1, tile.resolution, tile.resolution),
                   nodata=nodata, compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    tmp = temporary_sibling(path)
    try:
        with gdal_errors(path):
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
        commit_raster(tmp, path, expected=data)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _vrt_xml(plan: TilePlan, sources: list[tuple[Tile, Path]], bands: list[dict], tags: dict[str, str],
             source_band_offset: int = 0, dtype: str = "uint8", nodata: int | float = NODATA_U8) -> str:
    gdal_type = _GDAL_TYPES[np.dtype(dtype).name]
    x0, _, _, y1 = plan.bounds
    res = plan.resolution
    parts = [f'<VRTDataset rasterXSize="{plan.width}" rasterYSize="{plan.height}">',
             f"<SRS>EPSG:{plan.epsg}</SRS>", f"<GeoTransform>{x0!r}, {res!r}, 0, {y1!r}, 0, {-res!r}</GeoTransform>"]
    if tags:
        parts.append("<Metadata>")
        parts.extend(f'<MDI key="{escape(k)}">{escape(str(v))}</MDI>' for k, v in tags.items())
        parts.append("</Metadata>")
    for b, band in enumerate(bands, start=1):
        parts.append(f'<VRTRasterBand dataType="{gdal_type}" band="{b}">')
        parts.append(f"<NoDataValue>{nodata}</NoDataValue>")
        parts.append(f"<Description>{escape(band['description'])}</Description>")
        if "scale" in band:
            parts.append(f"<Offset>{band.get('offset', 0.0)!r}</Offset><Scale>{band['scale']!r}</Scale>")
        if "categories" in band:
            if band.get("colours"):  # a palette: only for single-band class maps (a GeoTIFF limit)
                parts.append("<ColorInterp>Palette</ColorInterp><ColorTable>")
                for r, g, bl, a in band["colours"]:
                    parts.append(f'<Entry c1="{r}" c2="{g}" c3="{bl}" c4="{a}"/>')
                parts.append("</ColorTable>")
            parts.append("<CategoryNames>")
            parts.extend(f"<Category>{escape(c)}</Category>" for c in band["categories"])
            parts.append("</CategoryNames>")
        if band.get("metadata"):
            parts.append("<Metadata>")
            parts.extend(f'<MDI key="{escape(k)}">{escape(str(v))}</MDI>' for k, v in band["metadata"].items())
            parts.append("</Metadata>")
        for tile, path in sources:
            col, row, w, h = tile.window
            parts.append(
                f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>'
                f"<SourceBand>{b + source_band_offset}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            )
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts)


@dataclass(frozen=True)
class ProductSpec:
    """One product of a job: ``OUT/<name>.tif`` mosaicked from bands ``source_band_offset ..`` of the tile rasters.

    ``bands`` holds per output band: ``description``, optional ``scale``/``offset``, ``metadata``, and for a class
    map ``categories`` + ``colours``. ``style``: a QGIS layer style (.qml text) published beside the COG."""

    name: str
    bands: tuple[dict, ...]
    source_band_offset: int = 0
    dtype: str = "uint8"
    nodata: int | float = NODATA_U8
    resampling: str = "NEAREST"
    tags: tuple[tuple[str, str], ...] = ()
    style: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.tif"


def write_product(target: Path, plan: TilePlan, sources: list[tuple[Tile, Path]], spec: ProductSpec,
                  final: Path | None = None) -> Path:
    """:func:`write_cog_mosaic` for a :class:`ProductSpec`."""
    return write_cog_mosaic(target, plan, sources, list(spec.bands), tags=dict(spec.tags),
                            resampling=spec.resampling, source_band_offset=spec.source_band_offset,
                            dtype=spec.dtype, nodata=spec.nodata, final=final)


def write_cog_mosaic(
    target: Path,
    plan: TilePlan,
    sources: list[tuple[Tile, Path]],
    bands: list[dict],
    tags: dict[str, str] | None = None,
    resampling: str = "NEAREST",
    source_band_offset: int = 0,
    dtype: str = "uint8",
    nodata: int | float = NODATA_U8,
    final: Path | None = None,
) -> Path:
    """Mosaic per-tile rasters into one COG on the plan's grid (VRT + GDAL's COG driver) at ``target``.

    ``bands`` holds per output band: ``description``, optional ``scale``/``offset``, ``metadata``, and for a class map
    ``categories`` + ``colours``. Output band b reads band b + ``source_band_offset`` of each tile raster; all bands
    share ``dtype`` and ``nodata`` (those of the tile rasters). Category names are also written to the ``.aux.xml``
    sidecar GDAL and QGIS read. The COG is written under a temporary name with GDAL errors raised, synced and read
    back before it is renamed to ``target``; ``final`` (default ``target``) is the path errors name, for a product
    written into a staging folder.
    """
    target = Path(target)
    final = Path(final) if final is not None else target
    vrt = temporary_sibling(target).with_suffix(".vrt")
    tmp = temporary_sibling(target)
    aux_tmp = Path(str(tmp) + ".aux.xml")
    has_categories = any("categories" in b for b in bands)
    try:
        try:
            vrt.write_text(_vrt_xml(plan, sources, bands, tags or {}, source_band_offset, dtype, nodata),
                           encoding="utf-8")
        except OSError as exc:
            raise write_error(final, exc) from None
        with gdal_errors(final):
            with rasterio.Env(GDAL_PAM_ENABLED="YES" if has_categories else "NO"):
                gdal_copy(str(vrt), str(tmp), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=BLOCK,
                          OVERVIEW_COUNT=overview_count(plan.width, plan.height), OVERVIEW_RESAMPLING=resampling,
                          BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
        if has_categories:
            _check_sidecar(aux_tmp, Path(str(final) + ".aux.xml"))
        commit_raster(tmp, target, final=final)
        if aux_tmp.exists():
            replace(aux_tmp, Path(str(target) + ".aux.xml"))
    finally:
        vrt.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        aux_tmp.unlink(missing_ok=True)
    return target


def _check_sidecar(path: Path, final: Path) -> None:
    """A PAM sidecar GDAL wrote: synced and well-formed XML, or a :class:`WriteError` naming ``final``."""
    from xml.etree import ElementTree

    if not path.exists():  # GDAL only warns when it cannot create a sidecar
        raise write_error(final, "GDAL could not create it")
    try:
        sync_file(path)
        ElementTree.parse(path)
    except OSError as exc:
        raise write_error(final, exc) from None
    except ElementTree.ParseError:
        raise write_error(final, "the sidecar reads back damaged") from None


def write_json_atomic(final: Path, payload: dict) -> Path:
    return atomic_write_json(final, payload)
