"""Species top-1 with and without auxiliary layers, on a demo world of a seed not used in training, and what the
layers cost in peak memory.

    python benchmarks/aux_accuracy.py [--seeds 1 2 3] [--model M] [--aux-model M] [--cache DIR] [--out DIR]
                                      [--no-region-rss]

Both models are tiny GeoTreeCLIPs from ``python -m train.demo_model`` on the same 4000 points of the seed-0 demo
world, the same recipe, seed and steps; they differ only in the auxiliary inputs they were trained with:

* ``demo-tiny.safetensors``: no layers (longitude and latitude only), mapped without ``--aux``, as it is used;
* ``demo-tiny-aux.safetensors`` (``train.demo_model --aux``): trained with the world's ``aux.yaml`` layers (DEM,
  soil water, BIO01/05/06/12; :mod:`treemap.demo.auxlayers`), mapped with ``--aux <world>/aux.yaml``.

Each maps the whole world of every ``--seeds`` (default 1 2 3: stands, clouds and layers neither model saw) with
``treemap predict --workers 1`` in its own process; the dominant species of every tree pixel is compared with
``truth/species.tif``. Worlds differ a lot in which species are hard (one world's Castanea stands look like Prunus),
so one world is a noisy judge: the figures of every world and their mean are reported. Peak RSS is that process's (``wait4``). Unless ``--no-region-rss``, the same pair also runs on
the demo region (``--catalog demo --aoi examples/region.geojson --mask none``, the seed-0 world), the acceptance's
memory measurement.

Prints one JSON line: ``species_top1_no_aux``, ``species_top1_aux``, ``delta_species_top1`` (means over the worlds),
and under ``worlds`` per seed: species/genus/family top-1 of both, per-species top-1, pixel counts, run times,
``peak_rss_mb`` of every run and the aux/no-aux ratio; the demo region's peak RSS pair; the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

TRAINED_ON_SEED = 0


def run_predict(args: list[str], out: Path) -> dict:
    """``python -m treemap predict ARGS --out OUT --workers 1 --json`` in a child process: its JSON summary, wall
    time and peak RSS (MB, of that process: ``wait4``)."""
    cmd = [sys.executable, "-m", "treemap", "-q", "predict", *args, "--out", str(out), "--workers", "1",
           "--device", "cpu", "--json"]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        stdout.seek(0)
        stderr.seek(0)
        text, err = stdout.read().decode(), stderr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    summary = json.loads(text.strip().splitlines()[-1])
    return {"summary": summary, "seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def dominant_of(run: dict, out: Path) -> Path:
    products = run["summary"].get("products") or {}
    return Path(products.get("dominant_species") or out / "dominant_species.tif")


def per_species(pred, truth, species) -> dict:
    import numpy as np

    out = {}
    for k, taxon in enumerate(species.taxa):
        sel = (truth == k + 1) & (pred != 255)
        out[taxon.species] = round(float(np.mean(pred[sel] == k)), 4) if sel.any() else None
    return out


def main() -> int:
    from train.demo_model import AUX_MODEL, MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="demo world seeds (default 1 2 3; the models saw seed 0)")
    parser.add_argument("--model", type=Path, default=MODEL, help="the model without layers (default demo-tiny)")
    parser.add_argument("--aux-model", type=Path, default=AUX_MODEL,
                        help="the model trained with the layers (default demo-tiny-aux)")
    parser.add_argument("--cache", type=Path, help="treemap cache holding the demo worlds (default: $TREEMAP_CACHE)")
    parser.add_argument("--out", type=Path, help="keep the products here (default: a temporary folder)")
    parser.add_argument("--no-region-rss", action="store_true",
                        help="skip the peak-memory pair on the demo region (examples/region.geojson)")
    args = parser.parse_args()
    if args.cache:
        os.environ["TREEMAP_CACHE"] = str(args.cache)
    from demo_accuracy import predicted_vs_truth, scores, world_aoi

    from treemap.auxiliary import read_layer_set
    from treemap.demo import ensure_demo_world
    from treemap.taxonomy import demo_species_list

    load_start = os.getloadavg()
    species = demo_species_list()
    trees = list(range(1, len(species) + 1))
    result: dict = {"benchmark": "aux_accuracy", "world_seeds": args.seeds, "trained_on_seed": TRAINED_ON_SEED}
    if TRAINED_ON_SEED in args.seeds:
        result["warning"] = "the models were trained on world seed 0"
    worlds = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            world = ensure_demo_world(seed=seed)
            layers = read_layer_set(world.aux_layers)
            result.setdefault("layers", list(layers.provided()))
            result.setdefault("missing", len(layers.missing()))
            here = work / f"seed{seed}"
            here.mkdir(exist_ok=True)
            aoi = world_aoi(world, here / "world.geojson")
            common = ["--catalog", str(world.catalog), "--aoi", str(aoi), "--year", str(world.spec.year),
                      "--species", "demo"]
            runs = {"no_aux": common + ["--model", str(args.model)],
                    "aux": common + ["--model", str(args.aux_model), "--aux", str(world.aux_layers)]}
            w: dict = {}
            for name, run_args in runs.items():
                run = run_predict(run_args, here / name)
                pred, truth = predicted_vs_truth(dominant_of(run, here / name), world.truth_species)
                s = scores(pred, truth, species, trees)
                w.update({f"species_top1_{name}": round(s["species"], 4), f"genus_top1_{name}": round(s["genus"], 4),
                          f"family_top1_{name}": round(s["family"], 4), f"tree_pixels_{name}": s["pixels"],
                          f"uncovered_tree_pixels_{name}": s["uncovered"],
                          f"per_species_top1_{name}": per_species(pred, truth, species),
                          f"predict_s_{name}": run["seconds"], f"peak_rss_mb_{name}": run["peak_rss_mb"]})
            w["delta_species_top1"] = round(w["species_top1_aux"] - w["species_top1_no_aux"], 4)
            w["rss_ratio_world"] = round(w["peak_rss_mb_aux"] / w["peak_rss_mb_no_aux"], 4)
            worlds[str(seed)] = w
        for key in ("species_top1_no_aux", "species_top1_aux", "delta_species_top1"):
            result[key] = round(sum(w[key] for w in worlds.values()) / len(worlds), 4)
        result["delta_min"] = min(w["delta_species_top1"] for w in worlds.values())
        result["delta_max"] = max(w["delta_species_top1"] for w in worlds.values())
        result["worlds"] = worlds
        if not args.no_region_rss:
            region = ["--catalog", "demo", "--aoi", str(REPO / "examples" / "region.geojson"), "--mask", "none"]
            demo_world = ensure_demo_world(seed=TRAINED_ON_SEED)
            base = run_predict(region + ["--model", str(args.model)], work / "region-no-aux")
            with_aux = run_predict(region + ["--model", str(args.aux_model), "--aux", str(demo_world.aux_layers)],
                                   work / "region-aux")
            result.update({"region_peak_rss_mb_no_aux": base["peak_rss_mb"],
                           "region_peak_rss_mb_aux": with_aux["peak_rss_mb"],
                           "rss_ratio_region": round(with_aux["peak_rss_mb"] / base["peak_rss_mb"], 4),
                           "region_predict_s_no_aux": base["seconds"], "region_predict_s_aux": with_aux["seconds"]})
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
