"""Auxiliary variables of training samples, from the rasters an extraction recipe names (elevation, climate ...),
computed by :mod:`treemap.auxiliary` at the centre of the 10 m pixel holding each point: the numbers ``treemap
predict`` feeds the model at that pixel. A raster that cannot be opened or read leaves its variable null (named in
the report) instead of stopping the extraction; slope and aspect derive from the elevation when the recipe gives
no raster of their own."""

from __future__ import annotations

import logging

import numpy as np

from treemap.auxiliary import RES, AuxReader, Layer, LayerSet
from treemap.errors import AuxError
from treemap.extract_options import AuxSource

log = logging.getLogger("treemap.extract")


class AuxSampler:
    """Samples the auxiliary rasters of a recipe at points' pixels; a raster that cannot be opened or read leaves
    its variable null and is remembered in ``errors`` (variable -> one-line reason)."""

    def __init__(self, sources: dict[str, AuxSource]):
        self.layer_set = LayerSet(tuple(Layer(name, str(src.path), src.band, src.scale, src.offset, src.units)
                                        for name, src in sources.items()))
        self.errors: dict[str, str] = {}
        self._reader: AuxReader | None = None

    def _fail(self, name: str, message: str) -> None:
        log.warning("auxiliary variable %s is left null: %s", name, message)
        self.errors[name] = message

    def _open(self) -> AuxReader:
        if self._reader is None:
            good = []
            for layer in self.layer_set.layers:
                try:
                    AuxReader(LayerSet((layer,))).close()
                except AuxError as exc:
                    self._fail(layer.variable, str(exc))
                else:
                    good.append(layer)
            self._reader = AuxReader(LayerSet(tuple(good)))
        return self._reader

    def variables(self) -> tuple[str, ...]:
        return self._open().layer_set.provided()

    def sample_pixels(self, epsg: int, cols: np.ndarray, rows: np.ndarray) -> dict[str, list[float | None]]:
        """Values at the centres of 10 m pixels (``cols`` = x // 10, ``rows`` = y // 10 on EPSG:``epsg``'s grid),
        per variable the recipe gives; None where missing."""
        from treemap.auxiliary import LAYER_VARIABLES

        reader = self._open()
        xs = np.asarray(cols, dtype=np.float64) * RES + RES / 2
        ys = np.asarray(rows, dtype=np.float64) * RES + RES / 2
        try:
            values = reader.at_centres(epsg, xs, ys)
        except Exception as exc:  # noqa: BLE001 - a read that fails leaves the variables null, named in the report
            reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
            for name in reader.layer_set.provided():
                self._fail(name, f"cannot read: {reason}")
            self.close()
            self._reader = AuxReader(LayerSet())
            return {}
        out: dict[str, list[float | None]] = {}
        for name in reader.layer_set.provided():
            if name in self.errors:  # a raster the recipe names failed: null, not replaced by a derived value
                continue
            row = values[LAYER_VARIABLES.index(name)]
            out[name] = [float(v) if np.isfinite(v) else None for v in row]
        return out

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
