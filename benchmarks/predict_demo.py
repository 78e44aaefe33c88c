"""End-to-end timing of the README's demo job: build the demo world, then map examples/region.geojson.

    python benchmarks/predict_demo.py [--cache DIR] [--out DIR]

Prints one JSON line: world build seconds, predict seconds, mapped pixels, pixels per second, and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="demo world cache (default: a fresh temporary folder)")
    parser.add_argument("--out", type=Path, help="output folder (default: temporary)")
    parser.add_argument("--tile-size", type=int, default=512)
    args = parser.parse_args()

    import numpy as np
    import rasterio

    from treemap.demo import ensure_demo_world
    from treemap.run import PredictRequest, predict

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        out = args.out or Path(tmp) / "out"
        t0 = time.perf_counter()
        ensure_demo_world(cache_dir=cache)
        build_s = time.perf_counter() - t0
        os.environ["TREEMAP_CACHE"] = str(cache)
        t0 = time.perf_counter()
        result = predict(PredictRequest(aoi=REPO / "examples" / "region.geojson", out=out, catalog="demo",
                                        tile_size=args.tile_size, device="cpu"))
        predict_s = time.perf_counter() - t0
        with rasterio.open(result.products["dominant_species"]) as ds:
            mapped = int(np.count_nonzero(ds.read(1) != 255))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "benchmark": "predict_demo",
        "world_build_s": round(build_s, 2),
        "predict_s": round(predict_s, 2),
        "mapped_px": mapped,
        "px_per_s": round(mapped / predict_s, 1),
        "tiles": result.tiles,
        "scenes": result.scenes,
        "peak_rss_mb": round(peak_mb, 1),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }))


if __name__ == "__main__":
    sys.exit(main())
