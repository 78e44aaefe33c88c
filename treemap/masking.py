"""Where the tree mask of ``treemap predict`` comes from: the built-in rule, a land-cover raster, or nothing.

``--mask builtin`` (the default) applies :func:`treemap.treemask.tree_mask` to the tile's own monthly composites:
no extra data. ``--mask RASTER`` takes any land-cover raster GDAL reads (a file, or a URL GDAL can open), in any
CRS: band 1 is warped with nearest-neighbour resampling onto each tile's 10 m core grid while the tile is read; the
classes in ``--mask-classes`` (default ESA WorldCover 10 "tree cover" and 95 "mangroves") are trees, every other
valid value is not tree, and the raster's nodata or no coverage is 255. ``--mask none`` maps every pixel.

Per pixel the mask is 1 (tree), 0 (not tree) or 255 (no decision: too few clear months for the rule, or outside the
raster). The species products are nodata where it is 0; where it is 255 the species are kept, and ``tree_mask.tif``
says so. Pixels the mask removes are not encoded at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from treemap.errors import MaskError, MaskNotFoundError
from treemap.grid import Tile
from treemap.treemask import DEFAULT_RULE, NODATA, NOT_TREE, TREE, MaskRule, tree_mask

BUILTIN, NONE, RASTER = "builtin", "none", "raster"
#: ESA WorldCover classes that are trees: 10 tree cover, 95 mangroves.
WORLDCOVER_TREES: tuple[int, ...] = (10, 95)
_REMOTE = ("http://", "https://", "s3://", "gs://", "/vsi")


@dataclass(frozen=True)
class MaskSpec:
    """How a predict run masks non-tree land (see the module doc)."""

    kind: str = BUILTIN
    raster: str | None = None  # RASTER: an absolute path or a URL GDAL opens
    classes: tuple[int, ...] = WORLDCOVER_TREES
    rule: MaskRule = field(default=DEFAULT_RULE)
    stamp: str = ""  # RASTER: size and modification time of a local file, so a changed raster is a new job

    @property
    def enabled(self) -> bool:
        return self.kind != NONE

    def describe(self) -> str:
        if self.kind == RASTER:
            return f"land-cover raster {self.raster}, tree classes {','.join(map(str, self.classes))}"
        return "built-in rule (treemap.treemask)" if self.kind == BUILTIN else "none"

    def fingerprint(self) -> dict:
        if self.kind == RASTER:
            return {"kind": RASTER, "raster": self.raster, "classes": list(self.classes), "stamp": self.stamp}
        if self.kind == BUILTIN:
            return {"kind": BUILTIN, "rule": repr(self.rule)}
        return {"kind": NONE}

    def provenance(self) -> dict:
        out = {"kind": self.kind, "description": self.describe()}
        if self.kind == RASTER:
            out.update(raster=self.raster, classes=list(self.classes))
        return out

    # -- per tile --------------------------------------------------------------------------------------------------
    def read(self, tile: Tile) -> np.ndarray | None:
        """I/O part: the land-cover mask on the tile's core grid (RASTER), else None."""
        return landcover_mask(self.raster, self.classes, tile) if self.kind == RASTER else None

    def compute(self, tile: Tile, composites: np.ndarray, counts: np.ndarray, read: np.ndarray | None,
                inside: np.ndarray) -> np.ndarray | None:
        """The tile's core mask (uint8 1/0/255, 255 outside the AOI too), or None with ``--mask none``."""
        if self.kind == NONE:
            return None
        if self.kind == RASTER:
            mask = read
        else:
            k, h, w = tile.halo, tile.height, tile.width
            mask = tree_mask(composites[..., k:k + h, k:k + w], self.rule, counts[..., k:k + h, k:k + w])
        return np.where(inside, mask, NODATA).astype(np.uint8)


def parse_classes(text: str | None) -> tuple[int, ...]:
    """``"10,95"`` -> (10, 95); one-line :class:`MaskError` for anything else."""
    if text is None:
        return WORLDCOVER_TREES
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        classes = tuple(int(p) for p in parts)
    except ValueError:
        raise MaskError(f"--mask-classes {text!r}: give the tree classes as integers separated by commas, "
                        "e.g. 10,95") from None
    if not classes:
        raise MaskError("--mask-classes is empty: give the tree classes, e.g. 10,95")
    return tuple(sorted(set(classes)))


def mask_spec(value: str | Path | None, classes: str | None = None) -> MaskSpec:
    """The :class:`MaskSpec` of ``--mask`` and ``--mask-classes``. A raster is opened once here, so a path that is
    not a georeferenced raster fails with one line before the search and the model load."""
    text = BUILTIN if value is None else str(value)
    if text in (BUILTIN, NONE):
        if classes is not None:
            raise MaskError(f"--mask-classes applies to a land-cover raster (--mask RASTER), not --mask {text}")
        return MaskSpec(kind=text)
    tree_classes = parse_classes(classes)
    remote = text.startswith(_REMOTE)
    stamp = ""
    if not remote:
        path = Path(text).expanduser().absolute()
        if not path.exists():
            raise MaskNotFoundError(f"--mask {text}: no such file (give a land-cover raster, 'builtin' or 'none')")
        if path.is_dir():
            raise MaskError(f"--mask {text} is a folder: give a land-cover raster file")
        st = path.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        text = str(path)
    check_raster(text)
    return MaskSpec(kind=RASTER, raster=text, classes=tree_classes, stamp=stamp)


def check_raster(source: str) -> None:
    """Open ``source`` and refuse, in one line, what cannot serve as a land-cover mask."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(source) as ds:
            crs, dtype = ds.crs, ds.dtypes[0]
    except RasterioIOError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MaskError(f"--mask {source}: GDAL cannot read it as a raster ({first})") from None
    if crs is None:
        raise MaskError(f"--mask {source} has no CRS: treemap cannot place it on the tile grid "
                        "(assign one with gdal_edit.py -a_srs EPSG:xxxx)")
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise MaskError(f"--mask {source} holds {dtype} values: a land-cover raster holds integer class codes")


def landcover_mask(source: str, classes: tuple[int, ...], tile: Tile) -> np.ndarray:
    """Band 1 of ``source`` warped (nearest neighbour) onto ``tile``'s core grid: 1 where it holds one of
    ``classes``, 0 at any other valid value, 255 at the raster's nodata and where it does not cover the tile."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject

    x0, _, _, y1 = tile.core_bounds
    dst = np.full((tile.height, tile.width), -1, dtype=np.int32)
    with rasterio.Env(GDAL_NUM_THREADS=os.environ.get("TREEMAP_MASK_THREADS", "1")), rasterio.open(source) as ds:
        reproject(rasterio.band(ds, 1), dst, src_nodata=ds.nodata, dst_transform=from_origin(
                  x0, y1, tile.resolution, tile.resolution), dst_crs=CRS.from_epsg(tile.epsg), dst_nodata=-1,
                  resampling=Resampling.nearest)
        nodata = ds.nodata
    out = np.where(np.isin(dst, np.asarray(classes, dtype=np.int64)), TREE, NOT_TREE).astype(np.uint8)
    out[dst == -1] = NODATA
    if nodata is not None and float(nodata).is_integer():
        out[dst == int(nodata)] = NODATA
    return out
