"""Reading an asset that already lies on the tile's grid, without a warp.

stackstac reads every asset through a GDAL ``WarpedVRT`` onto the output grid unless the file *is* that grid (same
size and transform), which a tile never is. But a Sentinel-2 asset in the tile's UTM zone lies on the same 10 m
lattice as the tile: MGRS tile origins are multiples of 60 m, tile bounds multiples of 10 m. Then the warp's
nearest-neighbour answer is known in closed form: with ``k = asset resolution / tile resolution`` (1 for the 10 m
bands, 2 for the 20 m bands and SCL, 6 for 60 m) and the tile's pixel ``c`` counted on the asset's lattice
(``c = (tile x0 - asset x0) / tile resolution + col``), the source column is ``c // k`` (the pixel whose footprint
holds the tile pixel's centre; the centre never falls on a source edge, so there is no tie), likewise for rows.

:class:`GridReader` is a stackstac ``Reader`` that reads such an asset with one plain windowed read of the source
pixels the window needs and an index expansion (no warper, no VRT, no overviews), and hands every other asset
(another zone or CRS, a grid off the lattice, a resolution that is not a whole multiple of the tile's, scaling)
to stackstac's own ``AutoParallelRioReader``. Its values equal the warp's (``tests/test_gridread.py`` compares the
two on aligned, shifted, 20 m, partial-overlap and nodata cases; the demo products' checksums are unchanged). The
pickled state is the wrapped reader's, so dask can ship it like stackstac's. ``TREEMAP_GRID_READS=0`` sends every
asset through stackstac's warp (for comparison, or should a provider ever publish a grid this rule misreads).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

__all__ = ["GridMap", "GridReader", "held_env", "read_on_grid"]

#: How far (in tile pixels) an offset may be from a whole number and still count as on the lattice.
_TOLERANCE = 1e-6


_held = threading.local()


@contextmanager
def held_env(gdal_env):
    """One GDAL environment for a run of grid reads on this thread, instead of entering ``gdal_env.open`` and
    ``gdal_env.read`` around every open and every read (each entry sets and restores GDAL's config options; for the
    1,606 files of the demo tile that was about a tenth of the read stage's CPU). The open layer is the one held:
    it differs from the read layer only in ``VSI_CACHE`` (fixed for a file handle when it is opened, so opens must
    see it) and in ``GDAL_DISABLE_READDIR_ON_OPEN`` (only consulted when a file is opened). Readers of another
    environment, and stackstac's fallback reader, still enter their own."""
    if getattr(_held, "env", None) is not None:  # nested: the outer hold stands
        yield
        return
    with gdal_env.open:
        _held.env = gdal_env
        try:
            yield
        finally:
            _held.env = None


def _entered(gdal_env, layer: str):
    """``gdal_env``'s ``layer`` context, or nothing while :func:`held_env` holds this environment."""
    return nullcontext() if getattr(_held, "env", None) is gdal_env else getattr(gdal_env, layer)


@dataclass(frozen=True)
class GridMap:
    """Where a tile grid lies on an asset's lattice: the tile's pixel (0, 0) is the lattice's (row0, col0) in tile
    pixels, and ``k`` tile pixels make one asset pixel."""

    k: int
    row0: int
    col0: int

    @classmethod
    def between(cls, ds_transform, ds_epsg: int | None, spec_transform, spec_epsg: int) -> "GridMap | None":
        """The map when the tile grid lies on the asset's lattice, else None (the asset needs a warp)."""
        t, s = ds_transform, spec_transform
        if ds_epsg is None or ds_epsg != spec_epsg:
            return None
        if t.b != 0 or t.d != 0 or s.b != 0 or s.d != 0 or t.a <= 0 or s.a <= 0 or t.e != -t.a or s.e != -s.a:
            return None
        ratio = t.a / s.a
        k = round(ratio)
        if k < 1 or abs(ratio - k) > _TOLERANCE:
            return None
        col0, row0 = (s.c - t.c) / s.a, (t.f - s.f) / s.a
        if abs(col0 - round(col0)) > _TOLERANCE or abs(row0 - round(row0)) > _TOLERANCE:
            return None
        return cls(k, int(round(row0)), int(round(col0)))

    def source_indices(self, offset: int, length: int, origin: int) -> np.ndarray:
        """Asset pixel index of each of ``length`` tile pixels from ``offset`` (floor division: see the module)."""
        return (origin + offset + np.arange(length)) // self.k


def read_on_grid(ds, grid: GridMap, window, dtype, fill_value) -> np.ndarray:
    """The window (rows, cols of the tile grid) of band 1 of ``ds`` as the nearest-neighbour warp gives it:
    ``fill_value`` outside the asset and at its nodata."""
    from rasterio.windows import Window

    rows = grid.source_indices(int(window.row_off), int(window.height), grid.row0)
    cols = grid.source_indices(int(window.col_off), int(window.width), grid.col0)
    out = np.full((rows.size, cols.size), fill_value, dtype=dtype)
    r_in = (rows >= 0) & (rows < ds.height)
    c_in = (cols >= 0) & (cols < ds.width)
    if not r_in.any() or not c_in.any():
        return out
    r0, r1 = int(rows[r_in].min()), int(rows[r_in].max()) + 1
    c0, c1 = int(cols[c_in].min()), int(cols[c_in].max()) + 1
    block = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
    # The tile pixels inside the asset are a run of lattice indices g; repeating each source pixel k times puts g at
    # position g - k * (first source index), so the expansion is a repeat and a slice, not a gather.
    k = grid.k
    ri, ci = np.flatnonzero(r_in), np.flatnonzero(c_in)
    g_row = grid.row0 + int(window.row_off) + int(ri[0])
    g_col = grid.col0 + int(window.col_off) + int(ci[0])
    if k > 1:
        block = np.repeat(np.repeat(block, k, axis=0), k, axis=1)
    picked = block[g_row - k * r0: g_row - k * r0 + ri.size, g_col - k * c0: g_col - k * c0 + ci.size]
    target = out[ri[0]: ri[-1] + 1, ci[0]: ci[-1] + 1]
    target[...] = picked
    if ds.nodata is not None and ds.nodata != fill_value:
        target[picked == ds.nodata] = fill_value
    return out


class _Open:
    """One open dataset of :data:`open_files`, with the lock its reads take."""

    def __init__(self, key: tuple, ds):
        self.key = key
        self.ds = ds
        self.epsg = ds.crs.to_epsg() if ds.crs else None
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.ds.close()


class OpenFiles:
    """The datasets this process keeps open for grid reads, most recently used last, at most ``TREEMAP_OPEN_FILES``
    (default 0: off). With it, a tile's files are opened once for all its loads (phenology and SeCo-Eco tiles read
    their cube twice) and once for the neighbouring tiles of the same worker, and GDAL's block cache keeps their
    decoded blocks for those tiles. A local file is known by its path, inode, size and modification time, so a
    changed file is opened afresh; a remote one by its URL (signed URLs change per tile). A dataset whose read fails
    is dropped, so the next try (the cube's second pass) opens it again.

    Off by default because it trades memory for CPU: on the demo region in 16 tiles of 128 px (1,606 files per
    tile), ``TREEMAP_OPEN_FILES=4000`` took 21.0 CPU-s and 15.1 s against 32.7 CPU-s and 21.8 s, but peaked at
    3.05 GB against 1.07 GB (GDAL's block cache fills with the open files' blocks). A size below the files of one
    tile is worse than none (256: 35-36 CPU-s), since tiles read their files in the same order."""

    def __init__(self, size: int | None = None):
        self._items: OrderedDict[tuple, _Open] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size if size is not None else int(os.environ.get("TREEMAP_OPEN_FILES", "0"))
        self.opens = 0

    @staticmethod
    def key(url: str) -> tuple | None:
        if "://" in url or url.startswith("/vsi"):
            return (url,)
        try:
            st = os.stat(url)
        except OSError:
            return None  # let the open fail as it would
        return (url, st.st_ino, st.st_size, st.st_mtime_ns)

    def get(self, url: str, gdal_env) -> _Open:
        import rasterio

        key = self.key(url) if self.size > 0 else None
        if key is not None:
            with self._lock:
                entry = self._items.get(key)
                if entry is not None and not entry.closed:
                    self._items.move_to_end(key)
                    return entry
        with _entered(gdal_env, "open"):
            entry = _Open(key, rasterio.open(url, sharing=False))
        self.opens += 1
        if key is None:
            return entry
        evicted = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                evicted.append(old)
            self._items[key] = entry
            while len(self._items) > self.size:
                evicted.append(self._items.popitem(last=False)[1])
        for e in evicted:
            e.close()
        return entry

    def drop(self, entry: _Open) -> None:
        with self._lock:
            if entry.key is not None and self._items.get(entry.key) is entry:
                del self._items[entry.key]
        entry.close()

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for e in items:
            e.close()


open_files = OpenFiles()


class GridReader:
    """A stackstac ``Reader``: plain windowed reads for assets on the tile's lattice, stackstac's reader for the
    rest (see the module doc). Same constructor, ``read``, ``close`` and pickled state as
    ``stackstac.rio_reader.AutoParallelRioReader``."""

    def __init__(self, *, url: str, spec, resampling, dtype, fill_value, scale_offset, gdal_env=None,
                 errors_as_nodata: tuple = ()) -> None:
        import stackstac

        self._state = {"url": url, "spec": spec, "resampling": resampling, "dtype": dtype,
                       "fill_value": fill_value, "scale_offset": scale_offset,
                       "gdal_env": gdal_env or stackstac.DEFAULT_GDAL_ENV, "errors_as_nodata": errors_as_nodata}
        self._lock = threading.Lock()
        self._entry: _Open | None = None
        self._grid: GridMap | None = None
        self._fallback = None

    @property
    def url(self) -> str:
        return self._state["url"]

    @property
    def warped(self) -> bool | None:
        """Whether the asset goes through stackstac's warp (None before the first read)."""
        if self._fallback is not None:
            return True
        return None if self._entry is None else False

    def _open(self) -> None:
        from rasterio.enums import Resampling

        st = self._state
        enabled = os.environ.get("TREEMAP_GRID_READS", "1") != "0"
        if enabled and tuple(st["scale_offset"]) == (1, 0) and st["resampling"] == Resampling.nearest:
            entry = open_files.get(st["url"], st["gdal_env"])
            grid = None
            if entry.ds.count == 1:
                grid = GridMap.between(entry.ds.transform, entry.epsg, st["spec"].transform, st["spec"].epsg)
            if grid is not None:
                self._entry, self._grid = entry, grid
                return
            open_files.drop(entry)  # stackstac's reader opens it its own way
        from stackstac.rio_reader import AutoParallelRioReader

        self._fallback = AutoParallelRioReader(**st)

    def _grid_read(self, window) -> np.ndarray | None:
        """The window from the shared dataset; None when the cache closed it since this reader opened it."""
        st, entry = self._state, self._entry
        with entry.lock:
            if entry.closed:
                return None
            try:
                with _entered(st["gdal_env"], "read"):
                    return read_on_grid(entry.ds, self._grid, window, st["dtype"], st["fill_value"])
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the dataset is dropped
                error = exc
        open_files.drop(entry)  # a failed dataset is never reused: the next try opens the file again
        raise error

    def read(self, window, **kwargs) -> np.ndarray:
        with self._lock:
            for _ in range(3):
                if self._entry is None and self._fallback is None:
                    self._open()
                if self._fallback is not None:
                    break
                out = self._grid_read(window)
                if out is not None:
                    return out
                self._entry = None  # evicted (more files in flight than the cache holds): open it again
            else:
                raise OSError(f"{self.url}: evicted from the open-file cache three times in a row")
            fallback = self._fallback
        return fallback.read(window, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._entry is not None and self._entry.key is None:
                self._entry.close()  # not shared: open_files is off (or the file has no key)
            self._entry = None  # a shared dataset stays open in open_files for the next reader
            if self._fallback is not None:
                self._fallback.close()
                self._fallback = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        return dict(self._state)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
