"""Accuracy of the shipped demo model: `treemap predict` on the demo world, compared with the planted truth.

    python benchmarks/demo_accuracy.py [--model M] [--heldout-model M] [--cache DIR] [--seed 0] [--out DIR]

Runs ``treemap.run.predict`` over the whole demo world (the default world, seed 0, unless ``--seed``) with the demo
model and the demo species list, and compares the dominant species of every tree pixel with ``truth/species.tif``.
Then the same with the held-out model (trained without ``train.demo_model.HELD_OUT``), scored on the pixels of the
held-out species only: their predictions are zero-shot.

Prints one JSON line:

* ``species_top1`` / ``genus_top1`` / ``family_top1``: share of tree pixels whose most probable species (its genus,
  its family) is the planted one;
* ``heldout_genus_top1`` / ``heldout_family_top1`` / ``heldout_level0_top1``: the same for the held-out species with
  the held-out model (level0 = leaf type), and ``heldout_predicted_as``: which species their pixels went to;
* ``chance`` (genus level: 1 / number of genera of the list), ``chance_family`` and ``chance_level0`` (the expected
  top-1 of a uniform guess over the species list, on the held-out pixels);
* ``heldout_trained_species_top1``: the held-out model on the eight species it was trained on;
* pixel counts and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def world_aoi(world, path: Path, inset_px: int = 2) -> Path:
    """The demo world's extent (inset by a few pixels) as a GeoJSON AOI in lon/lat."""
    from shapely.geometry import box

    from treemap.grid import to_crs

    s = world.spec
    pad = inset_px * 10.0
    local = box(s.x_min + pad, s.y_max - s.height_px * 10.0 + pad, s.x_min + s.width_px * 10.0 - pad, s.y_max - pad)
    lonlat = to_crs(local, 4326, src_epsg=s.epsg)
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": lonlat.__geo_interface__}))
    return path


def predicted_vs_truth(dominant_tif: Path, truth_tif: Path):
    """Dominant species index (255 = nodata) and truth codes on the product's grid."""
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(dominant_tif) as ds:
        pred = ds.read(1)
        bounds = ds.bounds
    with rasterio.open(truth_tif) as ds:
        window = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        truth = ds.read(1, window=window, boundless=True, fill_value=0)
    return pred, truth


def scores(pred, truth, species, codes: list[int]) -> dict:
    """Top-1 at species / genus / family level over the pixels whose truth code is in ``codes`` (code k = species
    k - 1 of the demo list) and that have a prediction."""
    import numpy as np

    taxa = species.taxa
    mask = np.isin(truth, codes) & (pred != 255)
    t = truth[mask].astype(int) - 1
    p = pred[mask].astype(int)
    out = {"pixels": int(mask.sum())}
    for level in ("species", "genus", "family", "level0"):
        names = np.array([getattr(x, level) for x in taxa])
        out[level] = float((names[p] == names[t]).mean()) if mask.any() else float("nan")
        # a uniform guess over the species list: right with probability (species sharing the level) / species
        share = np.array([np.mean(names == names[i]) for i in range(len(taxa))])
        out[f"chance_{level}"] = float(share[t].mean()) if mask.any() else float("nan")
    out["uncovered"] = int((np.isin(truth, codes) & (pred == 255)).sum())
    out["predicted_as"] = {}
    for code in codes:
        sel = t == code - 1
        if sel.any():
            counts = np.bincount(p[sel], minlength=len(taxa)) / sel.sum()
            top = np.argsort(-counts)[:3]
            out["predicted_as"][taxa[code - 1].species] = {taxa[i].species: round(float(counts[i]), 3)
                                                             for i in top if counts[i] > 0}
    return out


def run_predict(model: Path, aoi: Path, out: Path, catalog: str, year: int) -> tuple[Path, float]:
    from datetime import date

    from treemap.run import PredictRequest, predict

    t0 = time.perf_counter()
    result = predict(PredictRequest(aoi=aoi, out=out, catalog=catalog, start=date(year, 1, 1), end=date(year, 12, 31),
                                    model=model, species="demo", device="cpu"))
    return result.products["dominant_species"], time.perf_counter() - t0


def measure(world, model: Path, heldout_model: Path | None, work: Path, catalog: str) -> dict:
    from train.demo_model import HELD_OUT
    from treemap.taxonomy import demo_species_list

    species = demo_species_list()
    trees = list(range(1, len(species) + 1))
    held = [species.species.index(name) + 1 for name in HELD_OUT]
    aoi = world_aoi(world, work / "world.geojson")
    dominant, seconds = run_predict(model, aoi, work / "all", catalog, world.spec.year)
    main = scores(*predicted_vs_truth(dominant, world.truth_species), species, trees)
    genera = {t.genus for t in species.taxa}
    result = {
        "benchmark": "demo_accuracy",
        "species_top1": round(main["species"], 4),
        "genus_top1": round(main["genus"], 4),
        "family_top1": round(main["family"], 4),
        "tree_pixels": main["pixels"],
        "uncovered_tree_pixels": main["uncovered"],
        "predict_s": round(seconds, 1),
        "chance": round(1 / len(genera), 4),
    }
    if heldout_model is not None:
        dominant, seconds = run_predict(heldout_model, aoi, work / "heldout", catalog, world.spec.year)
        pred, truth = predicted_vs_truth(dominant, world.truth_species)
        h = scores(pred, truth, species, held)
        trained = scores(pred, truth, species, [c for c in trees if c not in held])
        result.update({
            "heldout_species": list(HELD_OUT),
            "heldout_genus_top1": round(h["genus"], 4),
            "heldout_family_top1": round(h["family"], 4),
            "heldout_level0_top1": round(h["level0"], 4),
            "chance_family": round(h["chance_family"], 4),
            "chance_level0": round(h["chance_level0"], 4),
            "heldout_pixels": h["pixels"],
            "heldout_predicted_as": h["predicted_as"],
            "heldout_trained_species_top1": round(trained["species"], 4),
            "heldout_predict_s": round(seconds, 1),
        })
    return result


def main() -> int:
    from train.demo_model import HELDOUT_MODEL, MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--heldout-model", type=Path, default=HELDOUT_MODEL)
    parser.add_argument("--no-heldout", action="store_true", help="skip the held-out model")
    parser.add_argument("--cache", type=Path, help="treemap cache holding the demo world (default: $TREEMAP_CACHE)")
    parser.add_argument("--seed", type=int, default=0, help="demo world seed (the demo model is trained on seed 0)")
    parser.add_argument("--out", type=Path, help="keep the predict products here (default: a temporary folder)")
    args = parser.parse_args()
    if args.cache:
        os.environ["TREEMAP_CACHE"] = str(args.cache)
    from treemap.demo import ensure_demo_world

    world = ensure_demo_world(seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(world, args.model, None if args.no_heldout else args.heldout_model, work,
                         str(world.catalog))
    result["world_seed"] = args.seed
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
