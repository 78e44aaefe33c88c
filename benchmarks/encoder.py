"""Throughput of GeoTreeCLIP's location encoder: treemap's engine against the plain eager forward, and against the
machine's own large-GEMM throughput.

    python benchmarks/encoder.py [--config full|tiny] [--batch N] [--device cpu|cuda] [--dtype fp32|bf16]
                                 [--seconds S] [--missing 0.25] [--threads N] [--compile]

One batch of ``N`` pixel-locations (12 months x 10 bands x 5 x 5, a fraction ``--missing`` of the months missing,
exactly that many per sample; a few auxiliary values missing) goes through ``GeoTreeCLIP.encode_location`` (the
engine) and ``treemap.models.reference.encode_location`` (plain eager official forward: every month through the
tower, bilinear resize then the patch convolution), with the official per-batch normalisation, random weights.
The machine's GEMM throughput is ``torch.mm`` on 2048 x 2048 matrices of the run's dtype with the same thread count,
repeated for about as long as one pass of the engine over the batch.

The three measurements are interleaved in rounds until ``--seconds`` have passed (at least two rounds), and each
figure is the best round: other processes on a shared machine only ever slow a round down, so the best round is the
closest to the machine's unloaded speed. ``paired_median`` gives the medians of the per-round ratios as a check
(adjacent measurements share the load of their moment); the two agree on a quiet machine. ``gemm_gflops_best_call``
is the fastest single 2048^3 product seen, a stricter reference than the round-matched ``gemm_gflops``.

Prints one JSON line. ``model_gflop_per_px`` counts the floating-point operations of the matrix products the engine
executes per pixel-location for this batch's present months (``treemap.models.engine``), ``achieved_gflops`` is that
times ``treemap_px_per_s``, ``cpu_mfu`` = achieved / measured GEMM throughput. On CUDA, ``tflops`` and ``mfu`` use
the GPU's dense bf16 peak from a table by device name (null if the device is not in it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treemap.models import GeoTreeCLIPConfig, random_model, reference, tokenize  # noqa: E402
from treemap.models.engine import temporal_flops, tower_flops  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)

PROMPTS = [
    "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica",
    "Evergreen Needleleaf / Pinaceae / Pinus / Pinus sylvestris",
    "Deciduous Broadleaf / Betulaceae / Betula / Betula pendula",
    "Evergreen Needleleaf / Pinaceae / Picea / Picea abies",
]


def make_batch(batch: int, missing: float, months: int = 12, channels: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, months, channels, 5, 5, generator=g) * 0.5
    n_missing = round(missing * months)
    if n_missing:
        order = torch.rand(batch, months, generator=g).argsort(dim=1)[:, :n_missing]
        images[torch.arange(batch)[:, None], order] = float("nan")
    aux = torch.cat([torch.rand(batch, 1, generator=g) * 360 - 180, torch.rand(batch, 1, generator=g) * 180 - 90,
                     torch.rand(batch, 25, generator=g) * 400], dim=1)
    aux[torch.rand(batch, 27, generator=g) < 0.05] = float("nan")
    return images, aux


def head_flops(c: GeoTreeCLIPConfig) -> int:
    """Per-sample FLOPs of the projections after the temporal attention: image projection, auxiliary encoders,
    aux projection, fusion."""
    aux = sum(2 * g * c.aux_hidden for g in c.aux_groups) + 2 * 4 * c.aux_hidden * c.aux_out
    return 2 * c.vision_hidden * c.embed_dim + aux + 2 * c.aux_out * c.embed_dim + 2 * 2 * c.embed_dim * c.embed_dim


def model_flops_per_px(c: GeoTreeCLIPConfig, present_fraction: float) -> float:
    in_features = c.channels * 5 * 5
    months = present_fraction * c.months
    return (months * tower_flops(c.vision_hidden, c.vision_mlp, c.vision_layers, in_features)
            + temporal_flops(c.vision_hidden, c.months, months, c.temporal_heads) + head_flops(c))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--batch", type=int, default=None, help="pixel-locations per batch (default: 256 on CPU "
                        "for the full model, 4096 for tiny, 16384 on CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time (at least two rounds)")
    parser.add_argument("--missing", type=float, default=0.25, help="fraction of missing months")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    parser.add_argument("--compile", action="store_true", help="run the engine's tower through torch.compile")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if args.batch is None:
        args.batch = 16384 if device.type == "cuda" else (256 if args.config == "full" else 4096)
    config = GeoTreeCLIPConfig.full() if args.config == "full" else GeoTreeCLIPConfig.tiny()
    model = random_model(config, seed=0).to(device)
    if args.compile:
        model.enable_compile(True)
    images, aux = make_batch(args.batch, args.missing, config.months, config.channels)
    images, aux = images.to(device), aux.to(device)
    present_fraction = float((~torch.isnan(images).flatten(2).all(-1)).float().mean())

    if dtype_name == "bf16":
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        gemm_dtype = torch.bfloat16
    else:
        autocast = nullcontext
        gemm_dtype = torch.float32

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    n = 2048
    a = torch.randn(n, n, device=device, dtype=gemm_dtype)
    b = torch.randn(n, n, device=device, dtype=gemm_dtype)
    gemm_reps = 1
    best_call = [float("inf")]

    def gemm():
        for _ in range(gemm_reps):
            best_call[0] = min(best_call[0], timed(lambda: torch.mm(a, b)))

    with torch.inference_mode():
        text = model.encode_text(tokenize(PROMPTS).to(device)).float()

        def fast():
            with autocast():
                return model.encode_location(images, aux)

        def plain():
            with autocast():
                return reference.encode_location(model, images, aux)

        emb_fast, emb_ref = fast().float(), plain().float()  # warm-up (and the engine's weight cache)
        prob_fast, prob_ref = model.zero_shot(emb_fast, text), model.zero_shot(emb_ref, text)
        diff_emb = float((emb_fast - emb_ref).abs().max())
        diff_prob = float((prob_fast - prob_ref).abs().max())
        # A GEMM round lasts about as long as an engine round, so that both see the same share of any other load.
        one = min(timed(gemm) for _ in range(3))
        gemm_reps = max(1, round(timed(fast) / one))

        times = {"gemm": [], "fast": [], "plain": []}
        start = time.perf_counter()
        while len(times["fast"]) < 2 or time.perf_counter() - start < args.seconds:
            times["gemm"].append(timed(gemm))
            times["fast"].append(timed(fast))
            times["plain"].append(timed(plain))

    gemm_gflops = gemm_reps * 2 * n ** 3 / min(times["gemm"]) / 1e9
    fast_px = args.batch / min(times["fast"])
    plain_px = args.batch / min(times["plain"])
    gflop_per_px = model_flops_per_px(config, present_fraction) / 1e9
    achieved = gflop_per_px * fast_px
    result = {
        "benchmark": "encoder",
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype_name,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "compile": bool(args.compile),
        "missing_month_fraction": round(1.0 - present_fraction, 4),
        "treemap_px_per_s": round(fast_px, 3),
        "reference_px_per_s": round(plain_px, 3),
        "speedup": round(fast_px / plain_px, 3),
        "max_abs_diff": max(diff_emb, diff_prob),
        "max_abs_diff_embedding": diff_emb,
        "max_abs_diff_probability": diff_prob,
        "gemm_gflops": round(gemm_gflops, 2),
        # the fastest single torch.mm call: a stricter reference where other processes load the machine unevenly
        "gemm_gflops_best_call": round(2 * n ** 3 / best_call[0] / 1e9, 2),
        "model_gflop_per_px": round(gflop_per_px, 4),
        "achieved_gflops": round(achieved, 2),
        "cpu_mfu": round(achieved / gemm_gflops, 3) if device.type == "cpu" else None,
        "rounds": len(times["fast"]),
        # Robustness check on a shared machine: medians of the per-round ratios (each round's three measurements
        # are adjacent in time, so slow changes of other load cancel).
        "paired_median": {
            "speedup": round(statistics.median(p / f for p, f in zip(times["plain"], times["fast"])), 3),
            "cpu_mfu": round(statistics.median(
                gflop_per_px * 1e9 * args.batch / f / (gemm_reps * 2 * n ** 3 / g)
                for f, g in zip(times["fast"], times["gemm"])), 3),
        },
    }
    if device.type == "cuda":
        name = result["device"]
        peak = next((p for key, p in BF16_PEAK_TFLOPS if key in name), None)
        result["tflops"] = round(achieved / 1000, 2)
        result["bf16_peak_tflops"] = peak
        result["mfu"] = round(achieved / 1000 / peak, 3) if peak else None
        result["gemm_mfu"] = round(gemm_gflops / 1000 / peak, 3) if peak and dtype_name == "bf16" else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
