"""`treemap model import`: turn an official GeoTreeCLIP ``.pth`` (or a treemap file) into a treemap
``.safetensors`` model with its card, optionally switching to fixed input statistics.

Batch ("official") normalisation scales every band by the min/max of the batch it is in, so a pixel's
probabilities depend on its neighbours in the batch and maps show seams between tiles. Fixed normalisation uses
per-band and per-variable statistics stored in the card: results no longer depend on batching, at the price of a
small shift from the official outputs (the statistics should describe the training data's range).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from treemap.documents import read_json
from treemap.errors import ModelError
from treemap.models.checkpoint import ModelCard, load_model, save_model
from treemap.models.config import AUX_VARIABLES, BANDS

_STAT_LENGTHS = {"band_min": len(BANDS), "band_max": len(BANDS), "aux_min": len(AUX_VARIABLES),
                 "aux_max": len(AUX_VARIABLES)}


def read_statistics(path: str | Path) -> dict[str, tuple[float, ...]]:
    """Fixed-normalisation statistics from JSON: band_min/band_max (10 values, model band order) and
    aux_min/aux_max (27 values, auxiliary-variable order)."""
    doc = read_json(path, what="statistics file", error=ModelError)
    return validate_statistics(doc, f"statistics file {path}")


def validate_statistics(doc: object, source: str = "statistics") -> dict[str, tuple[float, ...]]:
    if not isinstance(doc, dict):
        raise ModelError(f"{source}: expected an object with band_min, band_max, aux_min, aux_max")
    out = {}
    for key, n in _STAT_LENGTHS.items():
        values = doc.get(key)
        if not isinstance(values, (list, tuple)) or len(values) != n:
            raise ModelError(f"{source}: {key} must be a list of {n} numbers")
        try:
            out[key] = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ModelError(f"{source}: {key} must hold numbers only") from None
    for lo, hi in (("band_min", "band_max"), ("aux_min", "aux_max")):
        if any(a >= b for a, b in zip(out[lo], out[hi])):
            raise ModelError(f"{source}: every {lo} must be below its {hi}")
    return out


def import_checkpoint(src: str | Path, dst: str | Path, statistics: dict | None = None,
                      species_lists: tuple[str, ...] = (), notes: str | None = None) -> ModelCard:
    """Load ``src`` (official .pth or treemap .safetensors), optionally set fixed statistics, write ``dst``."""
    model, card = load_model(src)
    if statistics is not None:
        stats = validate_statistics(statistics)
        model.set_normalisation("fixed", **stats)
    card = ModelCard.for_model(
        model, source_sha256=card.source_sha256, species_lists=tuple(species_lists) or card.species_lists,
        notes=notes if notes is not None else card.notes)
    save_model(model, card, dst)
    return replace(card)
