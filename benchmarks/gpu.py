"""GeoTreeCLIP at full size on a GPU: encoder speed and MFU, what feeding it from a tile costs, and end to end.

    python benchmarks/gpu.py [--device cuda] [--world-km 12] [--aoi-km 10] [--workers N] [--encoder-seconds 20]
                             [--quick] [--skip-e2e]

Meant to run as one prepared script on a GPU machine (about 6 to 8 minutes on one H100/H200 with the defaults);
``--quick --device cpu`` runs every stage at toy sizes so the script itself can be checked on a CPU. Stages:

* ``encoder``: ``benchmarks/encoder.py --config full --dtype bf16`` for batches of 4096, 16384 and 65536 (random
  weights, a quarter of the months missing): pixel-locations per second and MFU against the GPU's dense bf16 peak
  (encoder.py's table), with the batch size treemap would choose from free memory (``treemap.feed``).
* ``feeding``: one 512 px tile of the demo region (its monthly composites made once), mapped by
  ``PixelEncoder.embed_tile`` with the full-size model on the device, patches cut on the host (25 copies of every
  value cross the bus) against patches cut on the device (the tile crosses once), for the official per-batch
  scaling and for fixed statistics (the tile scaled once). Tile pixels per second, after one warm-up tile.
* ``e2e``: ``treemap predict --device DEV --workers N`` on a square AOI of ``--aoi-km`` in a demo world of
  ``--world-km`` (``treemap demo --size``), once with a random full-size checkpoint (fixed statistics, so the batch
  is sized from memory) and once with the tiny demo model, whose encoder costs next to nothing: the second run is the
  rate the host side (read, composites, patches, publishing) can feed at on this machine. km² per wall hour.

Prints one JSON line with the device, its load (``uptime``), and every figure.
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


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_config(normalisation: str, tiny: bool = False):
    from treemap.models import GeoTreeCLIPConfig
    from treemap.models.checkpoint import AUX_VARIABLES, BANDS, DEFAULT_AUX_RANGES, DEMO_BAND_RANGE

    make = GeoTreeCLIPConfig.tiny if tiny else GeoTreeCLIPConfig.full
    if normalisation == "batch":
        return make()
    lo, hi = DEMO_BAND_RANGE
    return make(normalisation="fixed", band_min=(lo,) * len(BANDS), band_max=(hi,) * len(BANDS),
                aux_min=tuple(DEFAULT_AUX_RANGES[v][0] for v in AUX_VARIABLES),
                aux_max=tuple(DEFAULT_AUX_RANGES[v][1] for v in AUX_VARIABLES))


def stage_encoder(args) -> list[dict]:
    batches = (64, 128) if args.quick else (4096, 16384, 65536)
    out = []
    for batch in batches:
        cmd = [sys.executable, str(REPO / "benchmarks" / "encoder.py"), "--config", "tiny" if args.quick else "full",
               "--device", args.device, "--dtype", "bf16" if args.device == "cuda" else "fp32",
               "--batch", str(batch), "--seconds", str(args.encoder_seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out.append({"batch": batch, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out.append({k: r.get(k) for k in ("batch", "treemap_px_per_s", "reference_px_per_s", "model_gflop_per_px",
                                          "achieved_gflops", "tflops", "mfu", "gemm_mfu", "cpu_mfu", "device")})
    return out


def stage_feeding(args) -> dict:
    import numpy as np
    import torch

    from throughput import _tile_and_scenes
    from treemap.composite import monthly_composites
    from treemap.cube import TileCube
    from treemap.grid import core_mask, pixel_centres_lonlat
    from treemap.infer import InferenceSpec, PixelEncoder
    from treemap.models.checkpoint import random_model

    subprocess.run([sys.executable, "-m", "treemap", "demo"], check=True, capture_output=True)
    tile, scenes, local_aoi = _tile_and_scenes("demo", str(REPO / "examples" / "region.geojson"),
                                               64 if args.quick else 512)
    t0 = time.perf_counter()
    composites, _ = monthly_composites(TileCube(scenes, tile))
    read_s = time.perf_counter() - t0
    valid = np.ones((tile.height, tile.width), bool)  # every core pixel, inside the AOI or not
    lonlat = pixel_centres_lonlat(tile)
    device = torch.device(args.device)
    result = {"tile_px": int(valid.size), "aoi_px": int(core_mask(tile, local_aoi).sum()),
              "composites_wall_s": round(read_s, 2)}
    for normalisation in ("batch", "fixed"):
        model = random_model(full_config(normalisation, tiny=args.quick), seed=0)
        for where in ("host", "device"):
            enc = PixelEncoder(model, InferenceSpec(4096, args.device, patches=where, auto_batch=True))
            enc.embed_tile(composites, tile.halo, lonlat, valid, rows_per_block=tile.height)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            emb = enc.embed_tile(composites, tile.halo, lonlat, valid, rows_per_block=tile.height)
            sync(device)
            wall = time.perf_counter() - t0
            done = int((~np.isnan(emb[0])).sum())
            result[f"{normalisation}_{where}"] = {"batch": enc.batch_size, "wall_s": round(wall, 3),
                                                  "encoded_px": done, "px_per_s": round(done / wall, 1)}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def stage_e2e(args) -> dict:
    from throughput import run_predict_on, square_aoi, world_catalog
    from treemap.models.checkpoint import ModelCard, random_model, save_model

    catalog = world_catalog(args.world_km)
    out = {"world_km": args.world_km}
    with tempfile.TemporaryDirectory() as tmp:
        aoi = Path(tmp) / "aoi.geojson"
        km2 = square_aoi(catalog, args.aoi_km, aoi)
        ckpt = Path(tmp) / "full-fixed.safetensors"
        model = random_model(full_config("fixed", tiny=args.quick), seed=0)
        save_model(model, ModelCard.for_model(model), ckpt)
        del model
        for name, model_ref in (("full", str(ckpt)), ("demo_model_host_bound", "demo")):
            out[name] = run_predict_on(catalog, aoi, km2, Path(tmp) / f"out-{name}", 512, model_ref=model_ref,
                                       device=args.device, workers=args.workers)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--world-km", type=float, default=12.0)
    ap.add_argument("--aoi-km", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=None, help="predict workers (default: one per core, max 16)")
    ap.add_argument("--encoder-seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="toy sizes (tiny model, 64 px tile), to check the script")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.world_km, args.aoi_km, args.encoder_seconds = min(args.world_km, 6.0), min(args.aoi_km, 1.0), 1.0
    if args.workers is None:
        args.workers = min(os.cpu_count() or 1, 16)

    import torch

    t_start = time.perf_counter()
    result = {"benchmark": "gpu", "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else "cpu", "cores": os.cpu_count(), "quick": args.quick, "loadavg_before": list(os.getloadavg())}
    if args.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        result["gpu_memory_gib"] = {"free": round(free / 2**30, 1), "total": round(total / 2**30, 1)}
    for name, fn in (("encoder", stage_encoder), ("feeding", stage_feeding), ("e2e", stage_e2e)):
        if name == "e2e" and args.skip_e2e:
            continue
        t0 = time.perf_counter()
        result[name] = fn(args)
        result[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"stage": name, "result": result[name]}), file=sys.stderr, flush=True)
    best = max((e for e in result["encoder"] if e.get("mfu") is not None), key=lambda e: e["mfu"], default=None)
    result["encoder_best_mfu"] = best["mfu"] if best else None
    if "e2e" in result:
        result["km2_per_hour"] = result["e2e"]["full"]["km2_per_hour"]
        result["host_bound_km2_per_hour"] = result["e2e"]["demo_model_host_bound"]["km2_per_hour"]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["loadavg_after"] = list(os.getloadavg())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
