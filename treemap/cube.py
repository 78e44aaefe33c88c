"""Scenes -> a lazy (time, band, y, x) cube on one tile's read grid, and harmonised reflectance from it.

stackstac does the lazy loading. Its 0.5.1 release ignores ``proj:code`` and, under numpy 2, needs an explicit uint16
fill value with ``rescale=False``; so the grid (epsg, resolution, bounds) is always passed explicitly and scaling is
applied here, per scene, from the normalised scale/offset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np

from treemap.grid import Tile
from treemap.stac.scene import BANDS, SCL, Scene

log = logging.getLogger("treemap.cube")

#: SCL classes counted as clear sky: vegetation, not vegetated, water, unclassified, snow/ice.
CLEAR_SCL: tuple[int, ...] = (4, 5, 6, 7, 11)
#: The band order of GeoTreeCLIP inputs.
MODEL_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")
ASSETS: tuple[str, ...] = BANDS + (SCL,)


@dataclass(frozen=True)
class Acquisition:
    """Scenes of one overpass (same platform, same UTC day): overlapping MGRS tiles of one acquisition."""

    key: tuple[str, date]
    indices: tuple[int, ...]


def acquisitions(scenes: list[Scene]) -> list[Acquisition]:
    """Group scene indices by acquisition, in time order."""
    groups: dict[tuple[str, date], list[int]] = {}
    for i, scene in enumerate(scenes):
        groups.setdefault(((scene.platform or "").lower(), scene.datetime.date()), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (min(scenes[i].datetime for i in kv[1]), kv[0]))
    return [Acquisition(key, tuple(idx)) for key, idx in ordered]


class TileCube:
    """The lazy cube of one tile: DN for the ten bands (Sentinel-2 order) + SCL, from every scene."""

    def __init__(self, scenes: list[Scene], tile: Tile, gdal_env=None):
        import stackstac
        from rasterio.enums import Resampling

        if not scenes:
            raise ValueError("a cube needs at least one scene")
        self.scenes = list(scenes)
        self.tile = tile
        self.scale = np.array([s.scale for s in scenes], dtype=np.float32)
        self.offset = np.array([s.offset for s in scenes], dtype=np.float32)
        kwargs = {}
        if gdal_env is not None:
            kwargs["gdal_env"] = gdal_env
        self.data = stackstac.stack(
            [s.to_stac() for s in self.scenes],
            assets=list(ASSETS),
            epsg=tile.epsg,
            resolution=tile.resolution,
            bounds=tile.read_bounds,
            snap_bounds=False,
            dtype="uint16",
            fill_value=np.uint16(0),
            rescale=False,
            resampling=Resampling.nearest,
            chunksize=(1, 1, 1024, 1024),
            sortby_date=False,
            errors_as_nodata=(),
            **kwargs,
        )
        expected = tile.read_shape
        if tuple(self.data.shape[-2:]) != expected:
            raise RuntimeError(f"stackstac grid {self.data.shape[-2:]} != tile read grid {expected}")

    def load(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """DN (T, 10, H, W) uint16 and SCL (T, H, W) uint8 for the given scene indices (reads happen here)."""
        import dask

        block = self.data.isel(time=list(indices))
        with dask.config.set(scheduler="threads"):
            values = np.asarray(block.data.compute())
        return values[:, : len(BANDS)], values[:, len(BANDS)].astype(np.uint8)
