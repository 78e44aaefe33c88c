"""Tiles on a local dask cluster against tiles one after another in one process: `treemap phenology` on the demo world.

    python benchmarks/scale.py [--aoi examples/region.geojson] [--year 2022] [--tile-size 160] [--workers N]

Runs ``treemap phenology --catalog demo`` twice over the same AOI and tiles: with ``--workers 1`` (serial, in this
process, as before clusters) and with ``--workers N`` (default: one per CPU core; a LocalCluster of N one-thread
worker processes), each into a fresh output folder. The demo world is built first, so its generation is not timed;
both timings include the command's start-up, and the cluster's includes starting the cluster.

Prints one JSON line:

* ``tiles``, ``workers``, ``cores``;
* ``serial_seconds``, ``cluster_seconds`` (wall time of each command) and ``speedup`` (serial / cluster);
* ``identical``: whether the two ``phenology.tif`` hold the same values in every band and pixel.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "treemap", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"treemap {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aoi", default=str(REPO / "examples" / "region.geojson"))
    ap.add_argument("--year", type=int, default=2022)
    ap.add_argument("--tile-size", type=int, default=160, help="160 px gives 4 tiles on the demo region")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)

    import rasterio

    from treemap.aoi import read_aoi
    from treemap.demo import ensure_demo_world
    from treemap.grid import plan_tiles

    ensure_demo_world(0)
    tiles = len(plan_tiles(read_aoi(args.aoi), tile_size=args.tile_size).tiles)
    common = ["phenology", "--catalog", "demo", "--aoi", args.aoi, "--year", str(args.year),
              "--tile-size", str(args.tile_size)]
    with tempfile.TemporaryDirectory() as tmp:
        serial = _run(common + ["--out", f"{tmp}/serial", "--workers", "1"])
        cluster = _run(common + ["--out", f"{tmp}/cluster", "--workers", str(args.workers)])
        with rasterio.open(f"{tmp}/serial/phenology.tif") as a, rasterio.open(f"{tmp}/cluster/phenology.tif") as b:
            identical = bool(np.array_equal(a.read(), b.read()))
    result = {"tiles": tiles, "workers": min(args.workers, tiles), "cores": os.cpu_count(),
              "serial_seconds": round(serial, 1), "cluster_seconds": round(cluster, 1),
              "speedup": round(serial / cluster, 2), "identical": identical}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
