"""Auxiliary variables of training samples sampled from the rasters an extraction recipe names (elevation, climate
...); a raster that cannot be read leaves its variable null instead of stopping the extraction."""

from __future__ import annotations

import logging
import math

import numpy as np

from treemap.extract_options import AuxSource

log = logging.getLogger("treemap.extract")


class AuxSampler:
    """Samples the auxiliary rasters of a recipe at points; a raster that cannot be opened or read leaves its
    variable null and is remembered in ``errors`` (variable -> one-line reason)."""

    def __init__(self, sources: dict[str, AuxSource]):
        self.sources = sources
        self.errors: dict[str, str] = {}
        self._open: dict[str, object] = {}

    def _dataset(self, name: str):
        import rasterio

        if name in self.errors:
            return None
        if name not in self._open:
            src = self.sources[name]
            try:
                ds = rasterio.open(src.path)
                if not 1 <= src.band <= ds.count:
                    raise ValueError(f"has {ds.count} band(s), not band {src.band}")
            except Exception as exc:  # rasterio raises RasterioIOError, CPLE_* and others
                self._fail(name, f"cannot open {src.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
                return None
            self._open[name] = ds
        return self._open[name]

    def _fail(self, name: str, message: str) -> None:
        log.warning("auxiliary variable %s is left null: %s", name, message)
        self.errors[name] = message

    def sample(self, lons: np.ndarray, lats: np.ndarray) -> dict[str, list[float | None]]:
        from pyproj import Transformer
        from rasterio.windows import Window as RWindow

        out: dict[str, list[float | None]] = {}
        for name, src in self.sources.items():
            values: list[float | None] = [None] * len(lons)
            ds = self._dataset(name)
            if ds is not None:
                try:
                    crs = ds.crs
                    if crs is not None and crs.to_epsg() != 4326:
                        xs, ys = Transformer.from_crs(4326, crs, always_xy=True).transform(lons, lats)
                    else:
                        xs, ys = lons, lats
                    fcols, frows = ~ds.transform * (np.atleast_1d(np.asarray(xs, dtype=float)),
                                                    np.atleast_1d(np.asarray(ys, dtype=float)))
                    nodata = ds.nodatavals[src.band - 1]
                    for i, (r, c) in enumerate(zip(np.floor(frows), np.floor(fcols))):
                        if 0 <= r < ds.height and 0 <= c < ds.width:
                            v = float(ds.read(src.band, window=RWindow(int(c), int(r), 1, 1))[0, 0])
                            if math.isfinite(v) and (nodata is None or v != nodata):
                                values[i] = v * src.scale
                except Exception as exc:
                    self._fail(name, f"cannot read {src.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
                    values = [None] * len(lons)
            out[name] = values
        return out

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()
