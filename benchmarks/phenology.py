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
    snow                     the snow variant (``--snow-pixels`` pixels): 10 % of the clear dormant-season
                             observations replaced by snow (under a canopy or open), half of them flagged not clear as
                             SCL 11 would be, the other half left for the snow screen (treemap.phenology.snow, on the
                             synthetic B03 and NDSI): ``mae_days`` (greenup, maturity, senescence, dormancy) and
                             ``all_four_share`` (pixels with all four dates) with the screen, ``no_screen_mae_days``
                             without it (flags still used), ``ignored_flags_mae_days`` with neither (snow counted
                             clear, the old behaviour), the screen's catch (``unflagged_caught``: share of the
                             unflagged snow observations it drops; ``false_positives``: share of the snow-free clear
                             observations it drops) and its speed (``screen_cpu_px_per_s``)
    sparse                   sparse years (``--sparse-pixels`` pixels, no clouds, then
                             :func:`treemap.phenology.synthetic.sparse_clear`: 10-25 clear dates a year, one to three
                             gaps of 30-92 days): the QA shares, the mean absolute errors over all pixels with a date
                             and over those with QA 0 and QA 4, and the share with all four dates, with the default
                             ``min_observations`` (12) and with 8; ``mae_days_by_gap``: the error of greenup, peak and
                             dormancy by the gap between the clear observations around the date (the quantity of the
                             QA 4 rule, ``max_gap`` 45 days)

The snow variant and the sparse years are skipped with ``--snow-pixels 0`` / ``--sparse-pixels 0``.

Usage: python benchmarks/phenology.py [--pixels 200000] [--numpy-pixels 20000] [--threads N] [--repeat 3]
                                      [--snow-pixels 50000] [--sparse-pixels 20000]
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
from treemap.phenology.snow import screen  # noqa: E402
from treemap.phenology.synthetic import mae_days, sparse_clear, synthetic_series  # noqa: E402

#: the four transitions of the acceptance figures
MAIN = ("greenup", "maturity", "senescence", "dormancy")


def _main_mae(result, truth) -> dict[str, float]:
    errors = mae_days(result, truth)
    return {k: round(errors[k], 2) for k in MAIN}


def _all_four(result) -> float:
    return round(float(np.isfinite(np.stack([getattr(result, k) for k in MAIN])).all(axis=0).mean()), 4)


def snow_variant(n: int, seed: int) -> dict:
    """The snow variant's figures (see the module docstring)."""
    data = synthetic_series(n, seed=seed, snow_fraction=0.1, snow_flagged=0.5)
    screen(data.values[:, :64], data.green[:, :64], data.ndsi[:, :64], data.clear[:, :64])  # compile or load
    c0 = time.process_time()
    screened = screen(data.values, data.green, data.ndsi, data.clear)
    cpu = time.process_time() - c0
    res = phenology_metrics(data.dates, data.values, data.clear & ~screened, data.year)
    plain = phenology_metrics(data.dates, data.values, data.clear, data.year)
    ignored = phenology_metrics(data.dates, data.values, data.clear | data.snow, data.year)
    unflagged = data.snow & data.clear
    free = data.clear & ~data.snow
    return {
        "mae_days": _main_mae(res, data.truth),
        "all_four_share": _all_four(res),
        "no_screen_mae_days": _main_mae(plain, data.truth),
        "ignored_flags_mae_days": _main_mae(ignored, data.truth),
        "snow_observations": int(data.snow.sum()),
        "unflagged_caught": round(float((screened & unflagged).sum() / max(unflagged.sum(), 1)), 4),
        "false_positives": round(float((screened & free).sum() / max(free.sum(), 1)), 6),
        "screen_cpu_px_per_s": round(n / max(cpu, 1e-9)),
        "n_pixels": n,
    }


def sparse_years(n: int, seed: int) -> dict:
    """QA codes and errors on sparse years (see the module docstring)."""
    data = synthetic_series(n, seed=seed, cloud_fraction=0.0)
    clear = sparse_clear(data.dates, data.year, n, seed=seed + 7)
    days = (data.dates - np.datetime64(f"{data.year}-01-01")).astype(np.int64)
    in_year = clear[(days >= 0) & (days < 365)].sum(axis=0)
    out = {"clear_dates_in_year": {"min": int(in_year.min()), "median": float(np.median(in_year)),
                                   "max": int(in_year.max())}, "n_pixels": n}
    for min_obs in (12, 8):
        res = phenology_metrics(data.dates, data.values, clear, data.year, min_observations=min_obs)
        qa = np.bincount(res.qa, minlength=5) / n
        entry = {"qa_share": [round(float(q), 4) for q in qa], "mae_days": _main_mae(res, data.truth),
                 "all_four_share": _all_four(res)}
        for code in (0, 4):
            sel = res.qa == code
            if sel.any():
                entry[f"qa{code}_mae_days"] = _main_mae(res.take(sel), {k: v[sel] for k, v in data.truth.items()})
        out[f"min_observations_{min_obs}"] = entry
    # the error of a date against the gap between the clear observations around it (the QA 4 rule's quantity)
    gaps = {name: _gap_around(data.dates, data.year, clear, getattr(res, name))
            for name in ("greenup", "peak", "dormancy")}
    out["mae_days_by_gap"] = {}
    for lo, hi in GAP_BINS:
        key = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}"
        row = {}
        for name, gap in gaps.items():
            sel = (gap > lo) & (gap <= hi)
            err = np.abs(getattr(res, name)[sel] - data.truth[name][sel])
            row[name] = round(float(np.nanmean(err)), 1) if sel.any() else None
        row["share"] = round(float(np.mean((gaps["greenup"] > lo) & (gaps["greenup"] <= hi))), 3)
        out["mae_days_by_gap"][key] = row
    out["mae_days_by_gap"]["of"] = "min_observations 8; share: of the pixels, by the gap around greenup"
    return out


#: gap classes (days) of the sparse years' error table
GAP_BINS = ((0.0, 20.0), (20.0, 30.0), (30.0, 45.0), (45.0, 60.0), (60.0, 90.0), (90.0, np.inf))


def _gap_around(dates, year: int, clear, doy) -> np.ndarray:
    """Days between the clear observations on either side of each pixel's date ``doy`` (day of year of ``year``,
    (N,)); NaN where the date is NaN, infinite where there is no clear observation on one side. ``dates`` sorted."""
    days = (np.asarray(dates, "datetime64[D]") - np.datetime64(f"{year:04d}-01-01", "D")).astype(np.float64) + 1.0
    prev = np.maximum.accumulate(np.where(clear, days[:, None], -np.inf), axis=0)
    nxt = np.minimum.accumulate(np.where(clear, days[:, None], np.inf)[::-1], axis=0)[::-1]
    ok = np.isfinite(doy)
    k = np.searchsorted(days, np.where(ok, doy, 0.0), side="left")
    cols = np.arange(clear.shape[1])
    left = np.where(k > 0, prev[np.maximum(k - 1, 0), cols], -np.inf)
    right = np.where(k < days.shape[0], nxt[np.minimum(k, days.shape[0] - 1), cols], np.inf)
    return np.where(ok, right - left, np.nan)


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
    ap.add_argument("--snow-pixels", type=int, default=50_000, help="pixels of the snow variant (0: skip it)")
    ap.add_argument("--sparse-pixels", type=int, default=20_000, help="pixels of the sparse years (0: skip them)")
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
    if args.snow_pixels > 0:
        out["snow"] = snow_variant(args.snow_pixels, args.seed)
    if args.sparse_pixels > 0:
        out["sparse"] = sparse_years(args.sparse_pixels, args.seed)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
