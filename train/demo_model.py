"""Rebuild the shipped demo models from the offline demo world, reproducibly.

    python -m train.demo_model [--work out/demo-model] [--n-points 4000] [--threads 1] [--aux]
    treemap train demo-model ...  (the same program)

1. The default demo world (``treemap.demo.ensure_demo_world()``, seed 0).
2. ``--n-points`` random tree pixels of it (seeded), labelled from ``truth/species.tif`` with the taxonomy of
   ``truth/classes.json``, written as a GlobalGeoTree-style points CSV.
3. ``treemap.extract.extract_points`` on the demo catalog -> shards (the treemap compositing, as ``predict`` does).
4. ``recipes/pretrain-tiny-demo.yaml`` on those shards, twice:
   * all ten species -> ``treemap/data/models/demo-tiny.safetensors`` (the demo model);
   * without :data:`HELD_OUT` -> ``treemap/data/models/demo-tiny-heldout.safetensors``, whose predictions for the
     held-out species are zero-shot (``benchmarks/demo_accuracy.py`` scores them).

With ``--aux`` the same points are extracted again, now with the world's auxiliary layers (``aux.yaml`` of the
demo world, :mod:`treemap.demo.auxlayers`: DEM, soil water, four WorldClim-like BIO layers) through an extraction
recipe's ``auxiliary:`` section (written to ``WORK/extract-aux.yaml``), and the same recipe trains one ten-species
model on them -> ``treemap/data/models/demo-tiny-aux.safetensors`` (map with it with ``--aux <world>/aux.yaml``).
Only the auxiliary inputs differ from ``demo-tiny``: same points, recipe, seed and steps. Its card's ``aux_min`` /
``aux_max`` are the min/max of each variable over the training shards (the recipe's normalisation step; longitude
and latitude stay pinned to the globe), so the layers' values span [-1, 1]; ``benchmarks/aux_accuracy.py``
compares the two models on a world of another seed.

Why those two: every demo species is alone in its genus, so "genus level" cannot credit a near miss for them; each
held-out species shares its family with one trained species (Carpinus with Betula, Larix with Pinus), so the
family level measures whether the text tower places an unseen taxon next to its relatives. A tiny text tower that
has read eight prompts is not expected to know an unseen genus name: the benchmark reports the figures against
chance, whatever they are.

Everything is seeded (points, shuffling, initialisation), so the same command on the same software gives the same
models up to floating-point differences between machines and thread counts. Prints one JSON line: timings, losses,
paths.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "pretrain-tiny-demo.yaml"
MODELS = REPO / "treemap" / "data" / "models"
MODEL = MODELS / "demo-tiny.safetensors"
HELDOUT_MODEL = MODELS / "demo-tiny-heldout.safetensors"
AUX_MODEL = MODELS / "demo-tiny-aux.safetensors"
HELD_OUT = ("Carpinus betulus", "Larix decidua")
#: ``train.aux_dropout`` of the aux model: each layer variable is hidden from half the samples, so the model cannot
#: lean on layers alone that, over one 6 km world, name the stands of that world rather than the habitats.
AUX_DROPOUT = 0.5

log = logging.getLogger("train.demo_model")


def sample_points(world, n: int, seed: int, out: Path) -> Path:
    """``n`` distinct random tree pixels of a demo world as a points CSV (GlobalGeoTree columns)."""
    import rasterio
    from pyproj import Transformer

    with rasterio.open(world.truth_species) as ds:
        codes = ds.read(1)
        transform, crs = ds.transform, ds.crs
    classes = json.loads(Path(world.classes).read_text(encoding="utf-8"))
    trees = sorted(int(c) for c, e in classes.items() if e["kind"] == "tree")
    rows, cols = np.nonzero(np.isin(codes, trees))
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    xs, ys = transform * (cols[pick] + 0.5, rows[pick] + 0.5)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", "longitude", "latitude", "year", "level0", "level1_family", "level2_genus",
                         "level3_species"])
        for k, (i, x, y) in enumerate(zip(pick, lon, lat)):
            e = classes[str(int(codes[rows[i], cols[i]]))]
            writer.writerow([k, f"{x:.7f}", f"{y:.7f}", world.spec.year, e["level0"], e["family"], e["genus"],
                             e["species"]])
    return out


def aux_recipe(world, work: Path, shard_size: int = 500) -> Path:
    """An extraction recipe whose ``auxiliary:`` section is the world's layer set (absolute paths)."""
    import yaml

    from treemap.auxiliary import read_layer_set

    layers = read_layer_set(world.aux_layers)
    doc = {"shard_size": shard_size,
           "auxiliary": {layer.variable: {"path": layer.path, "band": layer.band, "scale": layer.scale,
                                          "offset": layer.offset, "units": layer.units} for layer in layers.layers}}
    path = work / "extract-aux.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# the auxiliary layers of the demo world {world.root}\n" + yaml.safe_dump(doc, sort_keys=False),
                    encoding="utf-8")
    return path


def build(work: Path, points: int = 4000, seed: int = 0, ship: bool = True, steps: int | None = None,
          aux: bool = False) -> dict:
    from train.geotreeclip import run
    from train.recipe import load_recipe
    from treemap.demo import ensure_demo_world
    from treemap.extract import ExtractOptions, extract_points
    from treemap.extract_options import load_recipe as load_extract_recipe

    t0 = time.perf_counter()
    world = ensure_demo_world()
    csv_path = sample_points(world, points, seed, work / "points.csv")
    if aux:
        shards = work / "shards-aux"
        options = load_extract_recipe(aux_recipe(world, work))
        variants = (("aux", [], AUX_MODEL),)
    else:
        shards = work / "shards"
        options = ExtractOptions(shard_size=500)
        variants = (("all", [], MODEL), ("heldout", list(HELD_OUT), HELDOUT_MODEL))
    extract_points(csv_path, shards, world.catalog, options=options)
    t_extract = time.perf_counter() - t0
    summary = {"points": points, "extract_s": round(t_extract, 1)}
    if aux:
        summary["auxiliary"] = sorted(options.auxiliary)
    for name, exclude, target in variants:
        overrides = {"data.shards": [str(shards.absolute())],
                     "output.dir": str((work / f"tiny-{name}").absolute()),
                     "data.exclude_species": exclude}
        if aux:
            overrides["train.aux_dropout"] = AUX_DROPOUT
        if steps is not None:
            overrides.update({"train.steps": steps, "train.epochs": None})
        if exclude:
            overrides["output.notes"] = ("Demo model with " + " and ".join(exclude) + " held out of training "
                                         "(zero-shot for them).")
        elif aux:
            overrides["output.notes"] = ("Demo model with auxiliary layers: tiny GeoTreeCLIP trained on the offline "
                                         "demo world (seed 0) with its aux.yaml layers (elevation, derived slope and "
                                         "aspect, soil_moisture_0_5cm, bio01, bio05, bio06, bio12); map with "
                                         "--aux <world>/aux.yaml.")
        else:
            overrides["output.notes"] = "Demo model: tiny GeoTreeCLIP trained on the offline demo world (seed 0)."
        recipe = load_recipe(RECIPE, overrides)
        t1 = time.perf_counter()
        result = run(recipe, resume=True, device="cpu")
        summary[name] = {"train_s": round(time.perf_counter() - t1, 1), "steps": result.steps,
                         "final_loss": round(result.final_loss, 4), "model": str(result.model)}
        if ship:
            MODELS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.model, target)
            summary[name]["shipped"] = str(target.relative_to(REPO))
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    return summary


class _OldPoints(argparse.Action):
    """``--points N``, the spelling before --n-points (``--points`` is a points file in treemap extract/fewshot)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: --points N is deprecated and goes away in the next release: use --n-points "
              f"{values}", file=sys.stderr)
        namespace.n_points = values


def build_parser(prog: str = "python -m train.demo_model") -> argparse.ArgumentParser:
    """The options of ``python -m train.demo_model`` = ``treemap train demo-model``."""
    from train import Parser

    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "out" / "demo-model",
                        help="work folder: points, shards and training runs (default: out/demo-model)")
    parser.add_argument("--n-points", type=int, default=4000, metavar="N",
                        help="random tree pixels sampled for training (default 4000)")
    parser.add_argument("--points", type=int, dest="n_points", action=_OldPoints, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the point sample (the world is always the default seed-0 demo world)")
    parser.add_argument("--steps", type=int, help="override the recipe's length (quick trials)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-ship", action="store_true", help="train only; leave treemap/data/models alone")
    parser.add_argument("--aux", action="store_true",
                        help="train the model with the world's auxiliary layers instead (demo-tiny-aux.safetensors); "
                             "the other two models are left alone")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m train.demo_model`` and ``treemap train demo-model``: prints one JSON line."""
    args = build_parser(*([prog] if prog else [])).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    summary = build(args.work, args.n_points, args.seed, ship=not args.no_ship, steps=args.steps, aux=args.aux)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
