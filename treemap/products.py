"""The species products: the band layout of a predict tile raster and the COGs mosaicked from it.

A tile raster holds, in this order: the species probabilities, their genus and family roll-ups (uint8, DN x
:data:`~treemap.outputs.PROB_SCALE`), the dominant species index, then (``top_k`` > 0) the top-k species indices
and their probabilities. :func:`species_products` says which bands of it each product takes.
"""

from __future__ import annotations

from datetime import date

import numpy as np

from treemap import __version__
from treemap.outputs import (NODATA_U8, PROB_SCALE, ProductSpec, class_colours, dominant_class,
                             encode_probability)
from treemap.taxonomy import SpeciesList


def top_k_bands(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable species per pixel of (S, H, W) probabilities: their indices (k, H, W) uint8 with
    255 where there is no prediction, and their probabilities (k, H, W) uint8-encoded, most probable first."""
    valid = ~np.isnan(probs).any(axis=0)
    filled = np.where(valid[None], probs, -1.0)
    order = np.argsort(-filled, axis=0, kind="stable")[:k]
    top = np.take_along_axis(filled, order, axis=0)
    classes = np.where(valid[None], order, NODATA_U8).astype(np.uint8)
    return classes, encode_probability(np.where(valid[None], top, np.nan))


def tile_bands(probs: np.ndarray, species: SpeciesList, top_k: int = 0) -> np.ndarray:
    """The band stack of a tile raster (see the module doc) from (S, H, W) float probabilities (NaN = none)."""
    _, genus = species.roll_up(probs, "genus")
    _, family = species.roll_up(probs, "family")
    parts = [encode_probability(probs), encode_probability(genus), encode_probability(family),
             dominant_class(probs)[None]]
    if top_k:
        parts.extend(top_k_bands(probs, top_k))
    return np.concatenate(parts)


def run_tags(start: date, end: date, n_scenes: int) -> dict[str, str]:
    """Tags every product of a run carries (the engine adds the unreadable assets)."""
    return {"TREEMAP_VERSION": __version__, "TREEMAP_PERIOD": f"{start.isoformat()}/{end.isoformat()}",
            "TREEMAP_SCENES": str(n_scenes)}


def species_products(species: SpeciesList, tags: dict[str, str], top_k: int = 0) -> list[ProductSpec]:
    """The products of a predict run, over tile rasters laid out by :func:`tile_bands`."""
    prob_tags = tuple({**tags, "PROBABILITY_SCALE": str(PROB_SCALE), "PROBABILITY_NODATA": "255"}.items())
    genera, _ = species.groups("genus")
    families, _ = species.groups("family")
    layers = [
        ("species_probability", [
            {"description": t.species, "metadata": {"genus": t.genus, "family": t.family, "level0": t.level0}}
            for t in species.taxa]),
        ("genus_probability", [{"description": g} for g in genera]),
        ("family_probability", [{"description": f} for f in families]),
    ]
    specs: list[ProductSpec] = []
    offset = 0
    for name, bands in layers:
        bands = tuple({**b, "scale": PROB_SCALE, "offset": 0.0} for b in bands)
        specs.append(ProductSpec(name, bands, offset, resampling="AVERAGE", tags=prob_tags))
        offset += len(bands)
    classes = {f"CLASS_{i}": name for i, name in enumerate(species.species)}
    dominant = ({"description": "dominant species", "categories": list(species.species),
                 "colours": class_colours(len(species)), "metadata": classes},)
    specs.append(ProductSpec("dominant_species", dominant, offset, tags=tuple(tags.items())))
    if top_k:
        top = [{"description": f"rank {r} species", "categories": list(species.species), "metadata": classes}
               for r in range(1, top_k + 1)]
        top += [{"description": f"rank {r} probability", "scale": PROB_SCALE, "offset": 0.0}
                for r in range(1, top_k + 1)]
        specs.append(ProductSpec("top_species", tuple(top), offset + 1,
                                 tags=tuple({**tags, "PROBABILITY_SCALE": str(PROB_SCALE)}.items())))
    return specs
