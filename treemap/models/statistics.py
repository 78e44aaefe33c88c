"""Fixed-normalisation statistics from training shards (official GeoTreeCLIP format).

Used by ``treemap model import --stats-from-shards`` (switching an official checkpoint to batch-independent
normalisation) and by ``train/`` (statistics of a pretraining run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from treemap.models.config import AUX_VARIABLES, BANDS
from treemap.shards import Record, ShardError, decode_record, iter_records

log = logging.getLogger("treemap.models.statistics")


def shard_statistics(shards: Sequence[Path], samples: int = 20000,
                     band_quantiles: tuple[float, float] = (0.001, 0.999),
                     aux_ranges: dict[str, tuple[float, float]] | None = None,
                     keep: Callable[[Record], bool] | None = None) -> dict[str, list[float]]:
    """``band_min``/``band_max``/``aux_min``/``aux_max`` from up to ``samples`` samples (an equal share from each
    shard, in file order; ``keep`` can skip records).

    Bands: the ``band_quantiles`` of the present reflectance values per band (model band order), so a few extreme
    pixels do not stretch the range. Auxiliary variables: min and max of the present values, replaced by
    ``aux_ranges`` where given; a variable with no present value gets
    ``treemap.models.checkpoint.DEFAULT_AUX_RANGES``.
    """
    from treemap.models.checkpoint import DEFAULT_AUX_RANGES

    per_shard = max(1, math.ceil(samples / max(1, len(shards))))
    bands: list[np.ndarray] = []
    aux: list[np.ndarray] = []
    for path in shards:
        taken = 0
        for record in iter_records(path):
            if taken >= per_shard:
                break
            if keep is not None and not keep(record):
                continue
            try:
                sample = decode_record(record)
            except ShardError as exc:
                log.warning("statistics: skipping %s", exc)
                continue
            x = sample.images.numpy()  # (12, 10, H, W)
            bands.append(x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1))
            aux.append(sample.aux_tensor().numpy())
            taken += 1
    if not bands:
        raise ShardError("no readable samples to compute normalisation statistics from")
    values = np.concatenate(bands, axis=1)  # (10, N)
    lo, hi = [], []
    for band in range(values.shape[0]):
        v = values[band][~np.isnan(values[band])]
        if v.size == 0:
            lo.append(0.0)
            hi.append(1.0)
            continue
        q = np.quantile(v.astype(np.float64), band_quantiles)
        lo.append(float(q[0]))
        hi.append(float(max(q[1], q[0] + 1e-6)))
    a = np.stack(aux)  # (N, 27)
    aux_min, aux_max = [], []
    ranges = dict(aux_ranges or {})
    for j, name in enumerate(AUX_VARIABLES):
        if name in ranges:
            r = ranges[name]
        else:
            col = a[:, j][~np.isnan(a[:, j])]
            r = (float(col.min()), float(col.max())) if col.size else DEFAULT_AUX_RANGES[name]
            if r[1] <= r[0]:
                r = (r[0], r[0] + 1.0)
        aux_min.append(float(r[0]))
        aux_max.append(float(r[1]))
    log.info("normalisation statistics from %d samples: bands %s", len(bands),
             ", ".join(f"{b} {lo_:.3f}..{hi_:.3f}" for b, lo_, hi_ in zip(BANDS, lo, hi)))
    return {"band_min": lo, "band_max": hi, "aux_min": aux_min, "aux_max": aux_max}
