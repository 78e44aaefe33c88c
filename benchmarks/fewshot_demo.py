"""Few-shot heads on the demo world: species a model never saw, named from a few labelled points.

    python benchmarks/fewshot_demo.py [--per-species 8] [--seed 0] [--kinds prototype,linear]

The model is the shipped held-out demo model (trained without ``train.demo_model.HELD_OUT``). ``--per-species``
labelled points per tree species are drawn at random from the truth raster of the west half of the demo world;
``treemap fewshot`` fits a head on them; ``treemap predict --head --top-k 3`` maps the east half, which is scored
against the planted truth. The same east half mapped zero-shot with the demo species list is the baseline.

Prints one JSON line: per head kind ``heldout_top1`` (pixels of the held-out species named right), ``top1`` and
``top3`` over all tree pixels, ``cv_top1`` from the fit, and the zero-shot ``zero_shot_heldout_top1`` and
``zero_shot_top1``; chance is 0.1 (ten species).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def labelled_points(world, per_species: int, path: Path, seed: int) -> Path:
    import rasterio
    from shapely.geometry import Point

    from treemap.grid import to_crs

    classes = json.loads(world.classes.read_text())
    with rasterio.open(world.truth_species) as ds:
        codes, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    west = codes[:, : codes.shape[1] // 2]
    rng = np.random.default_rng(seed)
    feats = []
    for code, c in classes.items():
        if c["kind"] != "tree":
            continue
        rows, cols = np.nonzero(west == int(code))
        for i in rng.choice(rows.size, min(per_species, rows.size), replace=False):
            x, y = transform * (cols[i] + 0.5, rows[i] + 0.5)
            p = to_crs(Point(x, y), 4326, src_epsg=epsg)
            feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.x, p.y]},
                          "properties": {"species": c["name"], "year": world.spec.year}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def east_aoi(world, path: Path) -> Path:
    from shapely.geometry import box

    from treemap.grid import to_crs

    s = world.spec
    half = s.width_px * 10.0 / 2
    local = box(s.x_min + half + 20, s.y_max - s.height_px * 10.0 + 20, s.x_min + 2 * half - 20, s.y_max - 20)
    path.write_text(json.dumps(to_crs(local, 4326, src_epsg=s.epsg).__geo_interface__))
    return path


def score(folder: Path, world, held_out) -> dict:
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(folder / "dominant_species.tif") as ds:
        pred, bounds = ds.read(1), ds.bounds
        names = [ds.tags(1)[f"CLASS_{i}"] for i in range(int(pred[pred != 255].max()) + 1)]
    top = None
    if (folder / "top_species.tif").exists():
        with rasterio.open(folder / "top_species.tif") as ds:
            top = ds.read([1, 2, 3])
    with rasterio.open(world.truth_species) as ds:
        truth = ds.read(1, window=from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths())
    classes = json.loads(world.classes.read_text())
    by_code = {int(k): c["name"] for k, c in classes.items() if c["kind"] == "tree"}
    lookup = {n: i for i, n in enumerate(names)}
    want = np.full(truth.shape, -1)
    for code, name in by_code.items():
        want[truth == code] = lookup.get(name, -2)
    trees = (want != -1) & (pred != 255)
    held = trees & np.isin(truth, [k for k, v in by_code.items() if v in held_out])
    out = {"top1": round(float((pred[trees] == want[trees]).mean()), 4),
           "heldout_top1": round(float((pred[held] == want[held]).mean()), 4), "tree_pixels": int(trees.sum())}
    if top is not None:
        out["top3"] = round(float((top[:, trees] == want[trees]).any(axis=0).mean()), 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-species", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the point draw")
    parser.add_argument("--kinds", default="prototype,linear")
    args = parser.parse_args()

    from train.demo_model import HELD_OUT, HELDOUT_MODEL
    from treemap.demo import ensure_demo_world
    from treemap.fewshot import FewShotRequest, fit_from_points
    from treemap.run import PredictRequest, predict

    world = ensure_demo_world()
    result = {"benchmark": "fewshot_demo", "per_species": args.per_species, "heldout_species": list(HELD_OUT)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        points = labelled_points(world, args.per_species, tmp / "points.geojson", args.seed)
        aoi = east_aoi(world, tmp / "east.geojson")
        year = world.spec.year
        from datetime import date

        window = dict(start=date(year, 1, 1), end=date(year, 12, 31), catalog=str(world.catalog), device="cpu")
        predict(PredictRequest(aoi=aoi, out=tmp / "zero", model=HELDOUT_MODEL, species="demo", **window))
        zero = score(tmp / "zero", world, HELD_OUT)
        result.update(zero_shot_top1=zero["top1"], zero_shot_heldout_top1=zero["heldout_top1"])
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            fit = fit_from_points(FewShotRequest(points=points, model=HELDOUT_MODEL, catalog=str(world.catalog),
                                                 kind=kind, out=tmp / f"{kind}.safetensors",
                                                 taxonomy=REPO / "treemap" / "data" / "species" / "demo.csv"))
            fit_s = time.perf_counter() - t0
            predict(PredictRequest(aoi=aoi, out=tmp / kind, model=HELDOUT_MODEL, head=tmp / f"{kind}.safetensors",
                                   top_k=3, **window))
            result[kind] = {**score(tmp / kind, world, HELD_OUT), "cv_top1": round(fit.cv_top1, 4),
                            "samples": fit.samples, "fit_s": round(fit_s, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
