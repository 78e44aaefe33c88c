"""Benchmark of treemap.phenology: speed of the numba kernels against the NumPy implementation, and accuracy.

Data: :func:`treemap.phenology.synthetic.synthetic_series`: double-logistic EVI-like curves with per-pixel random
timing, a 5-day cadence over two years centred on the target year, 40 % of the observations flagged cloudy,
Gaussian noise sd 0.02, truth from the clean daily curve by the MCD12Q2 definitions.

Runs the numba path (compiled first on a small input, so compile time is excluded; best of ``--repeat`` runs) and the
NumPy path (on ``--numpy-pixels`` of the same pixels, scaled per pixel) in the same process, checks that both agree
on those pixels, and prints one JSON line:

    px_per_s_per_core        numba pixel-years per second of wall time / threads numba used
    numpy_px_per_s_per_core  NumPy pixel-years per second of wall time (single-threaded)
    speedup                  the ratio of the two
    mae_days                 mean absolute error per transition (days), over the pixels with a defined date
    n_pixels, cores          pixels of the numba run, numba threads
    cpu_px_per_s_per_core    numba pixel-years per CPU-second of the process (the per-core figure that a busy
                             machine disturbs least); numpy_cpu_px_per_s_per_core likewise
    ...                      undefined share, agreement check, load average, versions

Usage: python benchmarks/phenology.py [--pixels 200000] [--numpy-pixels 20000] [--threads N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treemap.phenology import FLOAT_FIELDS, phenology_metrics  # noqa: E402
from treemap.phenology.synthetic import mae_days, synthetic_series  # noqa: E402


def _timed(fn, repeat: int):
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return result, best_wall, best_cpu


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pixels", type=int, default=200_000)
    ap.add_argument("--numpy-pixels", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    cores = numba.get_num_threads()
    data = synthetic_series(args.pixels, seed=args.seed)
    year = data.year

    def run(engine, sl):
        return phenology_metrics(data.dates, data.values[:, sl], data.clear[:, sl], year, engine=engine)

    warm = synthetic_series(256, seed=args.seed + 1)  # compile (or load the cache) outside the timing
    phenology_metrics(warm.dates, warm.values, warm.clear, warm.year)
    res, wall, cpu = _timed(lambda: run("numba", slice(None)), args.repeat)
    n_np = min(args.numpy_pixels, args.pixels)
    res_np, wall_np, cpu_np = _timed(lambda: run("numpy", slice(0, n_np)), 1)

    sub = res.take(slice(0, n_np))
    agree = all(np.allclose(getattr(sub, f), getattr(res_np, f), rtol=1e-5, atol=1e-3, equal_nan=True)
                for f in FLOAT_FIELDS) and all(np.array_equal(getattr(sub, f), getattr(res_np, f))
                                                for f in ("qa", "n_clear", "n_cycles"))
    errors = mae_days(res, data.truth)
    px_core = args.pixels / wall / cores
    np_core = n_np / wall_np
    out = {
        "px_per_s_per_core": round(px_core),
        "numpy_px_per_s_per_core": round(np_core),
        "speedup": round(px_core / np_core, 1),
        "mae_days": {k: round(v, 2) for k, v in errors.items() if k != "undefined"},
        "n_pixels": args.pixels,
        "cores": cores,
        "cpu_px_per_s_per_core": round(args.pixels / cpu),
        "numpy_cpu_px_per_s_per_core": round(n_np / cpu_np),
        "numpy_pixels": n_np,
        "undefined_share": round(errors["undefined"], 4),
        "numba_equals_numpy": bool(agree),
        "observations_per_pixel": int(data.values.shape[0]),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "numba": numba.__version__,
        "numpy": np.__version__,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
