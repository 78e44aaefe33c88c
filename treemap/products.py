"""The species products: the band layout of a predict tile raster and the COGs mosaicked from it.

A tile raster holds, in this order: the species probabilities, their genus, family and leaf-type roll-ups (uint8,
DN x :data:`~treemap.outputs.PROB_SCALE`), the dominant species index, three uncertainty bands (normalised entropy,
top-1 probability, top-1/top-2 margin, same scale), then (with a tree mask) the tree mask (1 tree, 0 not tree,
255 no decision), then (``top_k`` > 0) the top-k species indices and their
probabilities. :func:`species_products` says which bands of it each product takes, and gives each product its QGIS
style (:mod:`treemap.styles`).
"""

from __future__ import annotations

from datetime import date

import numpy as np

from treemap import __version__
from treemap.outputs import NODATA_U8, PROB_SCALE, ProductSpec, dominant_class, encode_probability
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


#: The bands of uncertainty.tif, in order.
UNCERTAINTY_BANDS = (
    ("normalised entropy", "Shannon entropy of the species probabilities divided by ln(number of species): 0 = "
                           "certain, 1 = every species equally likely"),
    ("top-1 probability", "probability of the most probable species"),
    ("top-1/top-2 margin", "probability of the most probable species minus that of the second"),
)


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """(3, H, W) float: normalised entropy, top-1 probability and top-1/top-2 margin of (S, H, W) probabilities;
    NaN where the pixel has none. One species: entropy 0 and margin 1."""
    s = probs.shape[0]
    valid = ~np.isnan(probs).any(axis=0)
    p = np.where(valid[None], probs, 0.0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = np.clip(-plogp.sum(axis=0) / np.log(s), 0.0, 1.0) if s > 1 else np.zeros(p.shape[1:])
    ordered = -np.sort(-p, axis=0)
    top1 = ordered[0]
    margin = top1 - ordered[1] if s > 1 else top1
    out = np.stack([entropy, top1, margin]).astype(np.float32)
    out[:, ~valid] = np.nan
    return out


def tile_bands(probs: np.ndarray, species: SpeciesList, top_k: int = 0, tree: np.ndarray | None = None) -> np.ndarray:
    """The band stack of a tile raster (see the module doc) from (S, H, W) float probabilities (NaN = none) and
    the tile's tree mask (H, W) uint8, if the run has one."""
    _, genus = species.roll_up(probs, "genus")
    _, family = species.roll_up(probs, "family")
    _, leaf = species.roll_up(probs, "level0")
    parts = [encode_probability(probs), encode_probability(genus), encode_probability(family),
             encode_probability(leaf), dominant_class(probs)[None], encode_probability(uncertainty(probs))]
    if tree is not None:
        parts.append(np.asarray(tree, dtype=np.uint8)[None])
    if top_k:
        parts.extend(top_k_bands(probs, top_k))
    return np.concatenate(parts)


def run_tags(start: date, end: date, n_scenes: int) -> dict[str, str]:
    """Tags every product of a run carries (the engine adds the unreadable assets)."""
    return {"TREEMAP_VERSION": __version__, "TREEMAP_PERIOD": f"{start.isoformat()}/{end.isoformat()}",
            "TREEMAP_SCENES": str(n_scenes)}


def species_products(species: SpeciesList, tags: dict[str, str], top_k: int = 0,
                     tree_mask: str | None = None) -> list[ProductSpec]:
    """The products of a predict run, over tile rasters laid out by :func:`tile_bands`, each with its QGIS style.
    ``tree_mask``: how the run's tree mask was made (it adds ``tree_mask.tif``), or None without one."""
    from treemap.qml import categorical_qml, probability_qml, ramp_qml, species_qml
    from treemap.styles import TREE_MASK_COLOURS, TREE_MASK_NAMES, species_colours

    prob_tags = tuple({**tags, "PROBABILITY_SCALE": str(PROB_SCALE), "PROBABILITY_NODATA": "255"}.items())
    genera, _ = species.groups("genus")
    families, _ = species.groups("family")
    leaf_types, _ = species.groups("level0")
    layers = [
        ("species_probability", [
            {"description": t.species, "metadata": {"genus": t.genus, "family": t.family, "level0": t.level0}}
            for t in species.taxa]),
        ("genus_probability", [{"description": g} for g in genera]),
        ("family_probability", [{"description": f} for f in families]),
        ("leaf_type_probability", [{"description": k} for k in leaf_types]),
    ]
    specs: list[ProductSpec] = []
    offset = 0
    for name, bands in layers:
        bands = tuple({**b, "scale": PROB_SCALE, "offset": 0.0} for b in bands)
        specs.append(ProductSpec(name, bands, offset, resampling="AVERAGE", tags=prob_tags, style=probability_qml()))
        offset += len(bands)
    classes = {f"CLASS_{i}": name for i, name in enumerate(species.species)}
    dominant = ({"description": "dominant species", "categories": list(species.species),
                 "colours": species_colours(species), "metadata": classes},)
    specs.append(ProductSpec("dominant_species", dominant, offset, tags=tuple(tags.items()),
                             style=species_qml(species)))
    offset += 1
    unc = tuple({"description": name, "scale": PROB_SCALE, "offset": 0.0, "metadata": {"long_name": text}}
                for name, text in UNCERTAINTY_BANDS)
    specs.append(ProductSpec("uncertainty", unc, offset, resampling="AVERAGE", tags=prob_tags,
                             style=ramp_qml(1, 0.0, 1.0, ramp="cividis", label_unit="normalised entropy", raw=False,
                                            scale=PROB_SCALE, nodata=NODATA_U8)))
    offset += len(unc)
    if tree_mask is not None:
        names = list(TREE_MASK_NAMES)
        band = {"description": "tree mask", "categories": names, "colours": list(TREE_MASK_COLOURS),
                "metadata": {**{f"CLASS_{i}": n for i, n in enumerate(names)}, "CLASS_255": "no decision",
                             "source": tree_mask}}
        specs.append(ProductSpec("tree_mask", (band,), offset, tags=tuple(tags.items()),
                                 style=categorical_qml(names, TREE_MASK_COLOURS)))
        offset += 1
    if top_k:
        top = [{"description": f"rank {r} species", "categories": list(species.species), "metadata": classes}
               for r in range(1, top_k + 1)]
        top += [{"description": f"rank {r} probability", "scale": PROB_SCALE, "offset": 0.0}
                for r in range(1, top_k + 1)]
        specs.append(ProductSpec("top_species", tuple(top), offset,
                                 tags=tuple({**tags, "PROBABILITY_SCALE": str(PROB_SCALE)}.items()),
                                 style=species_qml(species)))
    return specs
