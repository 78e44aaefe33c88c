"""Scenes -> a lazy (time, band, y, x) cube on one tile's read grid, and harmonised reflectance from it.

stackstac does the lazy loading. Its 0.5 releases ignore ``proj:code`` and, under numpy 2, need an explicit uint16
fill value with ``rescale=False``; so the grid (epsg, resolution, bounds) is always passed explicitly and scaling is
applied here, per scene, from the normalised scale/offset. Assets are read by ``treemap.io_env.SkippingReader``, an
implementation of stackstac's public ``Reader`` protocol that wraps stackstac's own reader and turns an asset that
cannot be read into nodata, recorded and named (see :meth:`TileCube.load`); it touches no private stackstac code, so
the dependency is a range, ``stackstac>=0.5.1,<0.6`` (products were bit-identical with 0.5.0 too, but 0.5.0 passes
pandas an argument pandas 2 deprecates; 0.4 has another ``Reader`` protocol).

Why stackstac and not odc-stac (``odc.stac.load``, 0.5.3 with odc-loader 0.6.5): measured on the demo region's one
tile (146 scenes x 11 assets, 206 x 306 px, local COGs; 2 shared CPU cores; wall/CPU seconds, best and median of 3
interleaved repeats after a warm-up; a second series of 5 on a busier machine ranked them the same):

====================================================  ==================  ==========
loader                                                wall best / median  CPU median
====================================================  ==================  ==========
stackstac 0.5.1 + the former reader (private _open)   6.03 / 6.26         8.6
stackstac 0.5.1 + SkippingReader (public protocol)    6.08 / 6.14         8.5
odc-stac, ``groupby="id"`` (one slice per scene)      6.72 / 6.81         8.4
odc-stac, ``groupby="solar_day"``                     5.50 / 5.63         7.2
====================================================  ==================  ==========

The two stackstac readers return identical arrays, and so does odc-stac with ``groupby="id"`` (0 of 101 million
values differ), which is about 10 % slower in wall time. ``groupby="solar_day"`` is faster only because it fuses
the scenes of one day into one slice before treemap sees them, by DN, before the per-scene SCL mask and offset:
that is not treemap's mosaic (mask and harmonise each scene, then take the first clear one), so products would
change wherever overlapping scenes disagree (the demo world's overlaps happen to agree), and the compositing code
would need rebuilding around acquisitions. On broken assets (``fail_on_error=False``)
odc-stac logged a missing and a truncated file with their URL only, raised ``AssertionError`` for a file without a
CRS (ending the load), and silently read band 1 of a two-band file; stackstac with SkippingReader made all four
nodata, recorded each and named scene and band. So odc-stac is not clearly better, and stackstac stays.
"""

from __future__ import annotations

import logging
import os
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


class NoSceneReachesTile(LookupError):
    """No scene given to a cube has pixels on its tile (only their footprint boxes meet it)."""


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
        from treemap.io_env import SkippingReader, UnreadableLog, bound_block_cache, stackstac_gdal_env

        bound_block_cache()  # a dask worker's first tile: before its first GDAL read

        if not scenes:
            raise ValueError("a cube needs at least one scene")
        self.scenes = list(scenes)
        self.tile = tile
        self.scale = np.array([s.scale for s in scenes], dtype=np.float32)
        self.offset = np.array([s.offset for s in scenes], dtype=np.float32)
        # Items for stackstac; Planetary Computer hrefs are signed here, per tile, so tokens are fresh at read time.
        self._items = [s.to_stac() for s in self.scenes]
        #: href -> (scene index, band) of every asset of the cube.
        self._assets = {asset["href"]: (i, band) for i, item in enumerate(self._items)
                        for band, asset in item["assets"].items()}
        #: (scene id, band, href, reason) of assets read as nodata because they could not be read, twice.
        self.unreadable: list[tuple[str, str, str, str]] = []
        self._failed = UnreadableLog()  # this cube's failures of the read in progress
        self._gdal_env = gdal_env if gdal_env is not None else stackstac_gdal_env()
        self._reader = SkippingReader.reporting_to(self._failed, strict=False)
        self._strict_reader = SkippingReader.reporting_to(self._failed, strict=True)
        self.data = self._stack(self._items, list(ASSETS), self._gdal_env)
        self._keep_reaching()
        expected = tile.read_shape
        if tuple(self.data.shape[-2:]) != expected:
            raise RuntimeError(f"stackstac grid {self.data.shape[-2:]} != tile read grid {expected}")

    def _keep_reaching(self) -> None:
        """Align the scene list with the stack. stackstac leaves out an item none of whose assets' grids meets the
        read bounds, even when its lon/lat footprint box does (at MGRS tile edges, the box of a UTM square in
        degrees is larger than the square); the cube's time axis would then no longer match :attr:`scenes`. The
        items keep their order (``sortby_date=False``), so the kept ones are matched by id in order."""
        kept = [str(v) for v in np.atleast_1d(self.data.coords["id"].values)] if self.data.sizes["time"] else []
        if len(kept) == len(self.scenes):
            return
        if not kept:
            raise NoSceneReachesTile(f"none of the {len(self.scenes)} scenes whose footprint meets tile "
                                     f"{self.tile.id} has pixels on it")
        keep, k = [], 0
        for i, scene in enumerate(self.scenes):
            if k < len(kept) and scene.id == kept[k]:
                keep.append(i)
                k += 1
        if k != len(kept) or self.data.sizes["band"] != len(ASSETS):
            raise RuntimeError(f"stackstac kept scenes {kept} of {[s.id for s in self.scenes]} out of order")
        log.debug("tile %s: %d of %d scenes have no pixels on it (footprint box only)", self.tile.id,
                  len(self.scenes) - len(keep), len(self.scenes))
        self.scenes = [self.scenes[i] for i in keep]
        self.scale, self.offset = self.scale[keep], self.offset[keep]
        self._items = [self._items[i] for i in keep]
        self._assets = {asset["href"]: (i, band) for i, item in enumerate(self._items)
                        for band, asset in item["assets"].items()}

    def _stack(self, items: list[dict], assets: list[str], gdal_env, reader=None):
        import stackstac
        from rasterio.enums import Resampling

        return stackstac.stack(
            items,
            assets=assets,
            epsg=self.tile.epsg,
            resolution=self.tile.resolution,
            bounds=self.tile.read_bounds,
            snap_bounds=False,
            dtype="uint16",
            fill_value=np.uint16(0),
            rescale=False,
            resampling=Resampling.nearest,
            chunksize=(1, 1, 1024, 1024),
            sortby_date=False,
            errors_as_nodata=(),  # the reader turns read errors into nodata, naming the asset
            reader=reader or self._reader,
            gdal_env=gdal_env,
        )

    def load(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """DN (T, 10, H, W) uint16 and SCL (T, H, W) uint8 for the given scene indices (reads happen here).

        An asset that fails even after GDAL's retries is read again after the others (a second pass, with GDAL's
        memory of the failure bypassed), up to ``TREEMAP_HTTP_RETRIES`` more times with growing pauses: some
        faults, such as an answer cut short, are not retried by GDAL at all. Only when every try fails is it nodata,
        recorded in :attr:`unreadable` and logged. An error that is not a read error and recurs on the last try,
        from a file that reads sound, is a bug and propagates."""
        indices = list(indices)
        if os.environ.get("TREEMAP_GRID_READS", "1") != "0":
            values = self._read(indices)
        else:
            values = _compute(self.data.isel(time=indices))
        failed = self._failed.take()
        if failed:
            self._second_pass(indices, values, failed)
        return values[:, : len(BANDS)], values[:, len(BANDS)].astype(np.uint8)

    def _read(self, indices: list[int]) -> np.ndarray:
        """(T, 11, H, W) DN of the given scenes: every asset read whole onto the tile's read grid by the cube's
        reader (:class:`treemap.io_env.SkippingReader` over :class:`treemap.gridread.GridReader`) in a thread
        pool, straight into one array. The same readers, windows and values as computing the stackstac array
        (``TREEMAP_GRID_READS=0`` does that), without building and running a dask graph per call: measured on the
        demo tile, 29 % less CPU and 40 % less wall time for the loads."""
        from concurrent.futures import ThreadPoolExecutor

        from rasterio.enums import Resampling
        from rasterio.windows import Window
        from stackstac.raster_spec import RasterSpec

        from treemap.gridread import held_env

        h, w = self.tile.read_shape
        res = self.tile.resolution
        spec = RasterSpec(self.tile.epsg, self.tile.read_bounds, (res, res))
        values = np.zeros((len(indices), len(ASSETS), h, w), dtype=np.uint16)
        jobs = [(k, b, self._items[i]["assets"][band]["href"]) for k, i in enumerate(indices)
                for b, band in enumerate(ASSETS) if band in self._items[i]["assets"]]

        def read(job) -> None:
            k, b, href = job
            reader = self._reader(url=href, spec=spec, resampling=Resampling.nearest, dtype=np.dtype("uint16"),
                                  fill_value=np.uint16(0), scale_offset=(1, 0), gdal_env=self._gdal_env)
            try:
                values[k, b] = reader.read(Window(0, 0, w, h))
            finally:
                reader.close()

        def read_run(run) -> None:
            with held_env(self._gdal_env):  # one GDAL environment per run of files, not two per file
                for job in run:
                    read(job)

        remote = any("://" in href or href.startswith("/vsi") for _, _, href in jobs)
        threads = read_threads(remote)
        size = max(1, -(-len(jobs) // (threads * 4)))  # four runs per thread: balanced, few environment entries
        runs = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        with ThreadPoolExecutor(threads, thread_name_prefix="treemap-read") as pool:
            for _ in pool.map(read_run, runs):  # re-raises a reader's exception (a bug: read errors are nodata)
                pass
        return values

    def _second_pass(self, indices: list[int], values: np.ndarray, failed: dict[str, str]) -> None:
        import time

        from treemap.io_env import HttpSettings, uncached_env

        settings = HttpSettings.from_env()
        tries = max(settings.retries, 1)
        position = {scene: k for k, scene in enumerate(indices)}
        known = {entry[2] for entry in self.unreadable}
        pending = dict(failed)
        for attempt in range(tries):
            time.sleep(min(settings.backoff * 2 ** attempt, 5.0))  # let a struggling server breathe
            last = attempt == tries - 1
            for href in list(pending):
                scene, band = self._assets[href]
                stack = self._stack([self._items[scene]], [band], uncached_env(href, self._gdal_env),
                                    reader=self._strict_reader if last else self._reader)
                again = _compute(stack)
                reason = self._failed.take().get(href)
                if reason is None:
                    values[position[scene], ASSETS.index(band)] = again[0, 0]
                    log.info("scene %s band %s read on try %d (first: %s)", self.scenes[scene].id, band,
                             attempt + 2, pending.pop(href))
                else:
                    pending[href] = reason
            if not pending:
                return
        for href, reason in pending.items():
            scene, band = self._assets[href]
            if href not in known:
                self.unreadable.append((self.scenes[scene].id, band, href, reason))
                log.warning("scene %s band %s is unreadable (%s): read as nodata; %s", self.scenes[scene].id, band,
                            reason, _display_href(href))


def read_threads(remote: bool = False) -> int:
    """Threads reading a tile's assets: ``TREEMAP_READ_THREADS``, else one per CPU core for local files and twice
    that, at least 8, when some are remote (threads then mostly wait on the network). On the demo tile's local
    files, 2 threads on 2 cores took 4.5 CPU-s, 4 threads 4.7, 8 threads 5.2."""
    value = os.environ.get("TREEMAP_READ_THREADS")
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    cores = os.cpu_count() or 1
    return max(8, 2 * cores) if remote else cores


def _compute(block) -> np.ndarray:
    import dask

    with dask.config.set(scheduler="threads"):
        return np.asarray(block.data.compute())


def _display_href(href: str) -> str:
    """The href without its query string (which may carry an access token)."""
    return href.split("?", 1)[0]
