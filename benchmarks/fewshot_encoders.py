"""GeoTreeCLIP against SeCo-Eco on the same labelled points: few-shot heads on each encoder's features.

    python benchmarks/fewshot_encoders.py [--world-seed 1] [--per-species 8] [--steps 2000] [--cache DIR]

1. The demo world of ``--world-seed`` (default 1: a world neither shipped GeoTreeCLIP demo model was trained on) and
   its ``seasonal_composites.tif`` from ``treemap phenology --seasonal`` (cached, as ``seco_probe.py`` does).
2. SeCo-Eco: the tiny CPU recipe pretrained for ``--steps`` steps on the world's composites (self-supervised: no
   labels, but it sees the whole world, test half included), and the same architecture with that seed's random
   weights and the pretrained model's input statistics as a control.
3. Points: ``--per-species`` per tree species drawn from the west half of the truth raster (training) and as many
   from the east half (test).
4. Features at the points, as the commands compute them: GeoTreeCLIP's location embedding (``treemap fewshot``'s
   extraction and the shipped ``demo`` model), and SeCo-Eco's features of each point's map cell
   (``treemap.fewshot_seco``: chip 16, stride 8, mean of the usable seasons) for both SeCo-Eco networks.
5. Per encoder and head kind (prototype, linear; ``treemap.heads.fit_head``): the cross-validated top-1 on the
   training points and the top-1 on the test points. Chance is 0.1.

Prints one JSON line; stderr gets progress. Caveat: the demo GeoTreeCLIP was trained with species labels on another
demo world (the same ten species), SeCo-Eco without any labels, so this compares what a user gets from each
encoder here, not two pretraining methods on equal terms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def log(msg: str) -> None:
    print(f"[fewshot_encoders] {msg}", file=sys.stderr, flush=True)


def draw_points(world, per_species: int, seed: int, folder: Path) -> dict[str, Path]:
    """GeoJSON points per half: ``train`` from the west half, ``test`` from the east half."""
    import rasterio
    from shapely.geometry import Point

    from treemap.grid import to_crs

    classes = json.loads(world.classes.read_text())
    with rasterio.open(world.truth_species) as ds:
        codes, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    half = codes.shape[1] // 2
    rng = np.random.default_rng(seed)
    out = {}
    for name, lo, hi in (("train", 0, half), ("test", half, codes.shape[1])):
        feats = []
        for code, c in classes.items():
            if c["kind"] != "tree":
                continue
            rows, cols = np.nonzero(codes[:, lo:hi] == int(code))
            for i in rng.choice(rows.size, min(per_species, rows.size), replace=False):
                p = to_crs(Point(*(transform * (cols[i] + lo + 0.5, rows[i] + 0.5))), 4326, src_epsg=epsg)
                feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.x, p.y]},
                              "properties": {"species": c["name"], "year": world.spec.year}})
        path = folder / f"{name}.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        out[name] = path
    return out


def geotreeclip_features(points_geojson: Path, catalog: str, folder: Path):
    """(features (N, D), species names) through ``treemap fewshot``'s extraction and the demo model."""
    import torch

    from treemap.fewshot import FewShotRequest, _samples, geojson_to_csv
    from treemap.modelset import resolve_model

    taxonomy = REPO / "treemap" / "data" / "species" / "demo.csv"
    csv = geojson_to_csv(points_geojson, folder / (points_geojson.stem + ".csv"))
    request = FewShotRequest(points=csv, model="demo", catalog=catalog, taxonomy=taxonomy)
    images, aux, taxa, skipped = _samples(request, csv)
    model, _, key = resolve_model("demo")
    with torch.inference_mode():
        emb = model.eval().encode_location(torch.stack(images), torch.stack(aux)).float()
    return emb, taxa, skipped, key


def seco_features(points_geojson: Path, catalog: str, models: dict, folder: Path):
    """Per SeCo-Eco model: (features, taxa); the reads and seasonal composites are shared."""
    import torch

    from treemap.embed_seco import SecoEmbedSpec
    from treemap.fewshot import geojson_to_csv
    from treemap.fewshot_seco import point_chips, point_features
    from treemap.points import read_points
    from treemap.stac import open_catalog
    from treemap.taxonomy import Taxon

    taxonomy = REPO / "treemap" / "data" / "species" / "demo.csv"
    csv = geojson_to_csv(points_geojson, folder / (points_geojson.stem + "-seco.csv"))
    points, bad = read_points(csv, taxonomy=str(taxonomy))
    spec = SecoEmbedSpec()
    chips = point_chips(points, open_catalog(catalog), spec)
    out = {}
    for name, model in models.items():
        features, used, skipped = point_features(points, None, spec, model, chips=chips)
        taxa = []
        for i in used:
            t = dict(points[i].text)
            taxa.append(Taxon(t["level0"], t["level1_family"], t["level2_genus"], t["level3_species"]))
        out[name] = (torch.from_numpy(features), taxa, len(bad) + len(skipped))
    return out


def scores(train, test, key: str) -> dict:
    """Per head kind: cross-validated top-1 on the training points, top-1 on the test points."""
    import torch

    from treemap.heads import fit_head

    (xtr, ttr), (xte, tte) = train, test
    out = {}
    for kind in ("prototype", "linear"):
        head = fit_head(xtr, ttr, kind, key)
        names = list(head.species.species)
        known = [i for i, t in enumerate(tte) if t.species in names]
        truth = torch.tensor([names.index(tte[i].species) for i in known])
        predicted = head.probabilities(xte[known]).argmax(dim=1)
        out[kind] = {"cv_top1": None if head.cv_top1 is None else round(float(head.cv_top1), 4),
                     "test_top1": round(float((predicted == truth).float().mean()), 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-seed", type=int, default=1)
    ap.add_argument("--per-species", type=int, default=8, help="points per species in each half")
    ap.add_argument("--point-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="pretraining / random-weight seed")
    ap.add_argument("--steps", type=int, default=2000, help="SeCo-Eco pretraining steps")
    ap.add_argument("--cache", default=None, help="folder for the phenology run, model and points")
    args = ap.parse_args(argv)

    import torch

    from seco_probe import pretrain, seasonal_composites
    from treemap.cache import cache_root, file_sha256
    from treemap.models.seco import SecoConfig, load_seco, random_seco

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    cache = Path(args.cache) if args.cache else cache_root() / "benchmarks" / "fewshot-encoders"
    world, composites, phen_s = seasonal_composites(args.world_seed, cache)
    catalog = "demo" if args.world_seed == 0 else str(world.catalog)
    folder = cache / f"world-{args.world_seed}"
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = folder / f"seco-seed{args.seed}-steps{args.steps}"
    model_path = model_dir / "seco.safetensors"
    pretrain_info = None
    if not model_path.exists():
        log(f"pretraining SeCo-Eco ({args.steps} steps)")
        pretrain_args = argparse.Namespace(pretrain_patch=16, pretrain_stride=8, steps=args.steps, batch_size=128,
                                           queue_size=1024, lr=0.06, key_momentum=0.99)
        pretrain_info = pretrain(composites, pretrain_args, args.seed, model_dir)
    pretrained = load_seco(model_path)
    random_net = random_seco(SecoConfig.tiny(), pretrained.stats, seed=args.seed)
    paths = draw_points(world, args.per_species, args.point_seed, folder)

    t1 = time.perf_counter()
    log("GeoTreeCLIP features")
    gtc = {name: geotreeclip_features(p, catalog, folder) for name, p in paths.items()}
    gtc_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    log("SeCo-Eco features")
    seco = {name: seco_features(p, catalog, {"seco_pretrained": pretrained, "seco_random": random_net}, folder)
            for name, p in paths.items()}
    seco_s = time.perf_counter() - t2

    result = {"geotreeclip_demo": scores(gtc["train"][:2], gtc["test"][:2], gtc["train"][3])}
    key = file_sha256(model_path)
    for name in ("seco_pretrained", "seco_random"):
        tr, te = seco["train"][name], seco["test"][name]
        result[name] = scores(tr[:2], te[:2], key)
    counts = {"geotreeclip_demo": {h: len(gtc[h][1]) for h in paths},
              "seco": {h: len(seco[h]["seco_pretrained"][1]) for h in paths}}
    summary = {"benchmark": "fewshot_encoders", "world_seed": args.world_seed, "per_species": args.per_species,
               "point_seed": args.point_seed, "seed": args.seed, "steps": args.steps, "chance": 0.1,
               "points_used": counts, "scores": result, "pretrain": pretrain_info,
               "seco_recipe": {"chip": 16, "stride": 8, "season": "mean"},
               "seconds": {"phenology": None if phen_s is None else round(phen_s, 1),
                           "geotreeclip_features": round(gtc_s, 1), "seco_features": round(seco_s, 1),
                           "total": round(time.perf_counter() - t0, 1)},
               "load_average": {"start": [round(v, 2) for v in load_start],
                                "end": [round(v, 2) for v in os.getloadavg()]}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
