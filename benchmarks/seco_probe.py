"""Does seasonal pretraining help? Frozen SeCo-Eco features against the same network with random weights and raw
band means, probed on the demo world's tree species.

    python benchmarks/seco_probe.py [--world-seed 0] [--seeds 0 1 2] [--steps 5000] [--cache DIR]
                                    [--pretrain-on composites|samples]

1. Data. The demo world of ``--world-seed`` (``treemap.demo.ensure_demo_world``) and ``treemap phenology
   --catalog demo --aoi <the whole world> --year 2022 --seasonal`` (the real command, one worker) for its
   ``seasonal_composites.tif`` (4 phenological seasons x 10 bands, 642 x 401 px). Both are kept: the world in
   treemap's cache, the phenology run under ``--cache`` (default ``<treemap cache>/benchmarks/seco-probe``), so a
   rerun skips them (``phenology_seconds`` is then null).
2. Species task. ``truth/species.tif`` (codes 1-10 = the ten species, 101-104 other land cover) is put on the
   composites' grid (nearest neighbour) and cut into ``--patch`` x ``--patch`` px patches on a grid without overlap.
   A patch's label is the species covering most of its pixels; the patch is kept when that species covers at least
   ``--purity`` (0.6) of all its pixels (land cover and other species make up the rest). Spatial split: patches
   whose centre lies more than one patch width west of the world's middle column are the training split, more than
   one patch width east of it the test split; the patches between are left out, so the nearest train and test
   patches are ``2 * patch`` px apart (stands are ~5 ha, about 22 x 22 px). With ``--both-ways`` (the default) the
   probe is also run east -> west and every score is the mean of the two directions. A species needs at least
   ``--min-per-class`` patches in each half or it is left out of the task.
3. Per seed (``--seeds``): SeCo-Eco pretraining with the tiny CPU recipe (``treemap train seco-eco --tiny``'s
   ``train.seco_train.train``: ``SecoConfig.tiny()``, MoCo v2 seasonal contrast) on ``--pretrain-patch`` px
   patches of the whole world's composites every ``--pretrain-stride`` px, for ``--steps`` steps (batch
   ``--batch-size``, queue ``--queue-size``, lr ``--lr``, key momentum ``--key-momentum``; all other settings are
   the recipe defaults). Pretraining sees no labels, but it does see the test half's pixels (as self-supervised
   pretraining on the map's own region would). With ``--pretrain-on samples`` the pretraining locations come from
   ``treemap train sample`` instead (SSL4Eco sampling, the real command: one ``--pretrain-patch`` px patch per grid
   node every ``--sample-spacing-km``, four phenological seasons, one scene each, over the world less a 100 m
   margin, no land mask; cached under ``--cache`` like the phenology run) read by ``train.seco_samples.
   read_samples``, as ``treemap train seco-eco --samples`` reads them. Then ``train.probe.probe`` (what ``treemap
   train probe`` runs) on
   the frozen features of three encoders:

   - ``seco``: the pretrained backbone;
   - ``random``: the same architecture with the same seed's random weights (the weights pretraining started from)
     and the pretrained model's input statistics;
   - ``band_means``: the spatial means of the 10 bands and of the NDVI (11 numbers per image, no network).

   Each with ``--season mean`` (the mean of the embeddings of the patch's usable seasons), and, as variants,
   ``concat`` (the four seasons' embeddings side by side; patches need all four seasons) and one season
   (``--one-season``, default ``maturity_senescence``: high summer). Probes: weighted k-NN (cosine, k 20,
   temperature 0.07) and the early-stopped linear probe (20 % of the training split as validation, Adam lr 0.01,
   at most 3000 epochs, patience 100): ``treemap train probe``'s defaults.

Prints one JSON line:

* ``task``: world seed, patch size, purity rule, split, ``train_per_class`` / ``test_per_class`` (west / east
  halves), the species left out;
* ``pretrain``: the settings, ``on`` (``composites`` or ``samples``; with samples ``sample_spacing_km``,
  ``sample_seconds`` (null when cached) and ``sample_index`` counts), ``locations`` (pretraining patches), per-seed
  ``seconds`` and first/last-50-step mean ``loss``;
* ``per_seed``: per seed, per season mode (``mean``, ``concat``, the one season) and encoder: ``knn`` and
  ``linear`` accuracy (the mean of the two directions; stderr gets each seed's figures per direction, with the
  linear probe's best epoch, as it finishes);
* ``summary``: per season mode and encoder, ``[mean, std]`` over seeds (population std) of ``knn`` and ``linear``
  accuracy and ``linear_macro_f1``; ``seco_minus_random_points``: the gain of pretraining in accuracy points
  and ``seco_minus_band_means_points`` (mean, std over seeds of the per-seed difference); ``task.chance`` (1 / number
  of species). ``band_means`` has no seed-dependent weights: its k-NN std is 0 and its linear std comes from the
  seed of the validation split and the probe's initialisation only;
* ``seconds`` (world + phenology, pretraining, probes, total), ``load_average`` (``uptime``'s 1/5/15-minute loads at
  the start and the end), ``torch_threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ENCODERS = {"seco": "seco-eco", "random": "random", "band_means": "band-means"}


# -- data -------------------------------------------------------------------------------------------------------------
def seasonal_composites(world_seed: int, cache: Path) -> tuple[object, Path, float | None]:
    """The demo world and its seasonal composites (``treemap phenology --seasonal`` over the whole world), cached."""
    from tree_mask_products import world_aoi

    from treemap.demo import ensure_demo_world

    world = ensure_demo_world(world_seed)
    folder = cache / f"world-{world_seed}"
    composites = folder / "phenology" / "seasonal_composites.tif"
    if composites.exists():
        return world, composites, None
    folder.mkdir(parents=True, exist_ok=True)
    aoi = world_aoi(world, folder)
    catalog = "demo" if world_seed == 0 else str(world.catalog)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "treemap", "-q", "phenology", "--catalog", catalog, "--aoi", str(aoi),
                           "--year", str(world.spec.year), "--seasonal", "--workers", "1",
                           "--out", str(folder / "phenology")], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"treemap phenology failed: {proc.stderr.strip().splitlines()[-1:]}")
    return world, composites, time.perf_counter() - t0


def truth_on_grid(truth_tif: Path, like: Path) -> np.ndarray:
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(truth_tif) as src, rasterio.open(like) as dst:
        out = np.zeros((dst.height, dst.width), dtype=np.uint8)
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs, dst_transform=dst.transform,
                  dst_crs=dst.crs, resampling=Resampling.nearest)
    return out


def read_composites(path: Path) -> np.ndarray:
    """(4, 10, H, W) float32 reflectance, NaN = nodata."""
    import rasterio

    from train.seco_patches import NODATA, SCALE
    from treemap.phenology import BAND_ORDER, SEASONS

    with rasterio.open(path) as ds:
        raw = ds.read()
        nodata = NODATA if ds.nodata is None else ds.nodata
    data = np.where(raw == nodata, np.nan, raw.astype(np.float32) * np.float32(SCALE))
    return data.reshape(len(SEASONS), len(BAND_ORDER), *raw.shape[1:])


def species_task(world, composites: Path, patch: int, purity: float, min_per_class: int) -> dict:
    """Patches, labels and the west/east halves of the species task (see the module docstring)."""
    classes = {int(code): c["name"] for code, c in json.loads(Path(world.classes).read_text()).items()
               if c["kind"] == "tree"}
    codes = sorted(classes)
    truth = truth_on_grid(world.truth_species, composites)
    refl = read_composites(composites)
    height, width = truth.shape
    middle = width / 2
    rows, labels, sides = [], [], []
    for r in range(0, height - patch + 1, patch):
        for c in range(0, width - patch + 1, patch):
            counts = np.bincount(truth[r:r + patch, c:c + patch].ravel(), minlength=256)[codes]
            best = int(counts.argmax())
            if counts[best] < purity * patch * patch:
                continue
            centre = c + patch / 2
            side = 0 if centre < middle - patch else 1 if centre > middle + patch else -1
            if side < 0:
                continue
            rows.append((r, c))
            labels.append(best)
            sides.append(side)
    labels, sides = np.array(labels), np.array(sides)
    enough = [k for k in range(len(codes)) if min((labels[sides == s] == k).sum() for s in (0, 1)) >= min_per_class]
    keep = np.isin(labels, enough)
    remap = {k: i for i, k in enumerate(enough)}
    names = [classes[codes[k]] for k in enough]
    patches = np.stack([refl[:, :, r:r + patch, c:c + patch] for (r, c), k in zip(rows, keep) if k])
    y = np.array([remap[k] for k in labels[keep]])
    side = sides[keep]
    return {"reflectance": patches, "labels": y, "test_east": side == 1, "classes": names,
            "left_out": [classes[codes[k]] for k in range(len(codes)) if k not in enough],
            "train_per_class": {n: int(((y == i) & (side == 0)).sum()) for i, n in enumerate(names)},
            "test_per_class": {n: int(((y == i) & (side == 1)).sum()) for i, n in enumerate(names)}}


def sample_folder(world, args, cache: Path) -> tuple[Path, float | None, dict]:
    """``treemap train sample`` over the world (less a 100 m margin) with ``--pretrain-patch`` px patches every
    ``--sample-spacing-km``; cached (the command resumes, so a finished folder costs a second)."""
    from shapely.geometry import box

    from treemap.grid import to_crs

    s = world.spec
    folder = cache / f"world-{args.world_seed}" / f"samples-{args.sample_spacing_km:g}km-{args.pretrain_patch}px"
    folder.mkdir(parents=True, exist_ok=True)
    margin = 100.0
    local = box(s.x_min + margin, s.y_max - s.height_px * 10 + margin, s.x_min + s.width_px * 10 - margin,
                s.y_max - margin)
    aoi = folder.parent / "sample-aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": to_crs(local, 4326, src_epsg=s.epsg).__geo_interface__}))
    out = folder / "out"
    finished = (out / "index.jsonl").exists() and not (out / ".treemap-work").exists()
    catalog = "demo" if args.world_seed == 0 else str(world.catalog)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "treemap", "train", "sample", "--catalog", catalog, "--aoi", str(aoi),
                           "--start", f"{s.year}-01-01", "--end", f"{s.year}-12-31", "--spacing-km",
                           str(args.sample_spacing_km), "--patch-size", str(args.pretrain_patch), "--out", str(out),
                           "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"treemap train sample failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(proc.stdout)
    counts = {k: summary[k] for k in ("locations", "done", "dropped", "failed")}
    return out, None if finished else time.perf_counter() - t0, counts


# -- pretraining and probes -------------------------------------------------------------------------------------------
def pretrain(composites: Path, args, seed: int, out: Path, samples: Path | None = None) -> dict:
    import torch

    from train.seco_moco import SecoTrainConfig
    from train.seco_patches import read_patches
    from train.seco_samples import read_samples
    from train.seco_train import train
    from treemap.models.seco import SecoConfig

    if samples is not None:
        locations = read_samples(samples, args.pretrain_patch)
    else:
        locations = read_patches(composites, args.pretrain_patch, args.pretrain_stride)
    config = SecoTrainConfig(steps=args.steps, batch_size=args.batch_size, queue_size=args.queue_size, lr=args.lr,
                             key_momentum=args.key_momentum, seed=seed, log_every=0)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    _, history = train(locations, config, SecoConfig.tiny(), out)
    losses = [h["loss"] for h in history]
    return {"seconds": round(time.perf_counter() - t0, 1), "locations": len(locations),
            "loss_first50": round(float(np.mean(losses[:50])), 3), "loss_last50": round(float(np.mean(losses[-50:])), 3)}


def probe_all(task: dict, model: Path, seed: int, seasons: list[str], both_ways: bool) -> dict:
    from train.probe import PatchSet, parse_season, probe

    directions = [("west->east", task["test_east"])]
    if both_ways:
        directions.append(("east->west", ~task["test_east"]))
    out: dict = {}
    for season in seasons:
        out[season] = {}
        for name, encoder in ENCODERS.items():
            both = {}
            for direction, test in directions:
                patches = PatchSet(task["reflectance"], task["labels"], test, tuple(task["classes"]))
                report = probe(patches, encoder, None if encoder == "band-means" else str(model),
                               parse_season(season), seed=seed)
                both[direction] = {"knn": report["knn"]["accuracy"], "linear": report["linear"]["accuracy"],
                                   "linear_macro_f1": report["linear"]["macro_f1"],
                                   "best_epoch": report["linear"]["best_epoch"], "dropped": report["dropped"]}
            out[season][name] = {m: round(float(np.mean([d[m] for d in both.values()])), 4)
                                 for m in ("knn", "linear", "linear_macro_f1")}
            out[season][name]["both"] = both
    return out


def summarise(per_seed: list[dict]) -> dict:
    summary: dict = {}
    for season in per_seed[0]["probes"]:
        summary[season] = {}
        for name in ENCODERS:
            summary[season][name] = {m: _mean_std([s["probes"][season][name][m] for s in per_seed])
                                     for m in ("knn", "linear", "linear_macro_f1")}
        summary[season]["seco_minus_random_points"] = {
            m: _mean_std([100 * (s["probes"][season]["seco"][m] - s["probes"][season]["random"][m])
                          for s in per_seed], 1) for m in ("knn", "linear")}
        summary[season]["seco_minus_band_means_points"] = {
            m: _mean_std([100 * (s["probes"][season]["seco"][m] - s["probes"][season]["band_means"][m])
                          for s in per_seed], 1) for m in ("knn", "linear")}
    return summary


def _mean_std(values: list[float], digits: int = 4) -> list[float]:
    return [round(float(np.mean(values)), digits), round(float(np.std(values)), digits)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining / random-weight seeds")
    ap.add_argument("--steps", type=int, default=5000, help="pretraining steps per seed")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--queue-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.06)
    ap.add_argument("--key-momentum", type=float, default=0.99)
    ap.add_argument("--pretrain-patch", type=int, default=16)
    ap.add_argument("--pretrain-stride", type=int, default=8)
    ap.add_argument("--pretrain-on", choices=("composites", "samples"), default="composites",
                    help="pretraining locations: patches of the world's seasonal composites, or the shards of "
                         "treemap train sample over the world")
    ap.add_argument("--sample-spacing-km", type=float, default=0.4, help="--pretrain-on samples: grid spacing")
    ap.add_argument("--patch", type=int, default=16, help="edge of a probe patch (px)")
    ap.add_argument("--purity", type=float, default=0.6, help="share of a patch its species must cover")
    ap.add_argument("--min-per-class", type=int, default=3, help="patches a species needs in each half")
    ap.add_argument("--one-season", default="maturity_senescence", help="the single-season variant ('' for none)")
    ap.add_argument("--no-concat", action="store_true", help="skip the concatenated-seasons variant")
    ap.add_argument("--one-way", action="store_true", help="probe west -> east only")
    ap.add_argument("--cache", default=None, help="folder for the phenology runs and the models")
    args = ap.parse_args(argv)

    import torch

    from treemap.cache import cache_root

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    cache = Path(args.cache) if args.cache else cache_root() / "benchmarks" / "seco-probe"
    world, composites, phenology_seconds = seasonal_composites(args.world_seed, cache)
    task = species_task(world, composites, args.patch, args.purity, args.min_per_class)
    t_data = time.perf_counter() - t_start
    seasons = ["mean"] + ([] if args.no_concat else ["concat"]) + ([args.one_season] if args.one_season else [])
    samples, sample_seconds, sample_index = None, None, None
    if args.pretrain_on == "samples":
        samples, sample_seconds, sample_index = sample_folder(world, args, cache)

    per_seed, t_pretrain, t_probe = [], 0.0, 0.0
    for seed in args.seeds:
        on = "" if samples is None else f"-samples{args.sample_spacing_km:g}km"
        model_dir = cache / f"world-{args.world_seed}" / f"seco-seed{seed}-steps{args.steps}{on}"
        for stale in (model_dir / "checkpoint.pt", model_dir / "metrics.jsonl"):
            stale.unlink(missing_ok=True)  # a fresh run every time: the timing is part of the result
        run = pretrain(composites, args, seed, model_dir, samples)
        t_pretrain += run["seconds"]
        t0 = time.perf_counter()
        probes = probe_all(task, model_dir / "seco.safetensors", seed, seasons, not args.one_way)
        t_probe += time.perf_counter() - t0
        per_seed.append({"seed": seed, "pretrain_seconds": run["seconds"], "loss_first50": run["loss_first50"],
                         "loss_last50": run["loss_last50"], "locations": run["locations"], "probes": probes})
        print(json.dumps({"progress": per_seed[-1]}), file=sys.stderr, flush=True)

    result = {
        "task": {"world_seed": args.world_seed, "patch": args.patch, "purity": args.purity,
                 "rule": f"label = species covering most of a {args.patch} px patch; kept when it covers >= "
                         f"{args.purity:.0%} of the patch",
                 "split": "west half train, east half test (and the reverse, averaged), patches within one patch "
                          "width of the middle left out",
                 "classes": len(task["classes"]), "train_per_class": task["train_per_class"],
                 "test_per_class": task["test_per_class"], "left_out": task["left_out"],
                 "chance": round(1 / len(task["classes"]), 4)},
        "pretrain": {"on": args.pretrain_on,
                     **({} if samples is None else {"sample_spacing_km": args.sample_spacing_km,
                                                    "sample_seconds": None if sample_seconds is None
                                                    else round(sample_seconds, 1), "sample_index": sample_index}),
                     "steps": args.steps, "batch_size": args.batch_size, "queue_size": args.queue_size, "lr": args.lr,
                     "key_momentum": args.key_momentum, "patch": args.pretrain_patch,
                     "stride": None if samples is not None else args.pretrain_stride,
                     "locations": per_seed[0]["locations"], "model": "SecoConfig.tiny()",
                     "seconds": [s["pretrain_seconds"] for s in per_seed],
                     "loss_first50": [s["loss_first50"] for s in per_seed],
                     "loss_last50": [s["loss_last50"] for s in per_seed]},
        "per_seed": {str(s["seed"]): {season: {name: {m: v[m] for m in ("knn", "linear")} for name, v in enc.items()
                                               if name in ENCODERS}
                                      for season, enc in s["probes"].items()} for s in per_seed},
        "summary": summarise(per_seed),
        "seconds": {"data": round(t_data, 1), "phenology": None if phenology_seconds is None
                    else round(phenology_seconds, 1), "pretrain": round(t_pretrain, 1), "probes": round(t_probe, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
