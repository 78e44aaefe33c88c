"""Accuracy of `treemap phenology` on the demo world against its planted phenology truth.

    python benchmarks/phenology_demo.py [--aoi examples/region.geojson] [--year 2022] [--seed 0] [--out DIR]

Runs ``treemap phenology --catalog demo`` (the default world, seed 0, unless ``--seed``) over the AOI and compares
``phenology.tif`` with ``truth/phenology.tif`` (MCD12Q2 dates of each pixel's clean daily EVI curve) on the pixels
where the truth has a cycle and the product has both greenup and dormancy.

Prints one JSON line:

* ``mae_days`` / ``bias_days``: per transition (greenup .. dormancy), product minus truth, whole days;
* ``dormancy_mae_by_class``: the dormancy error per truth class (tree species code, 102 grassland, 103 cropland);
* ``defined_share``: share of the truth's cycle pixels with both dates in the product;
* ``n_pixels``, ``seconds`` (the command's wall time, world generation excluded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRUTH_NODATA = -32767
TRANSITIONS = ("greenup", "midgreenup", "maturity", "peak", "senescence", "midgreendown", "dormancy")


def _window(product: Path, truth_tif: Path, bands=None) -> np.ndarray:
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(product) as ds:
        bounds = ds.bounds
    with rasterio.open(truth_tif) as ds:
        window = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        return ds.read(bands, window=window)


def compare(product: Path, truth_phenology: Path, truth_species: Path) -> dict:
    """Errors of ``product`` (phenology.tif) against the truth rasters, as in the module docstring."""
    import rasterio

    from treemap.outputs import NODATA_I16
    from treemap.phenology import METRIC_NAMES

    with rasterio.open(product) as ds:
        est = ds.read().astype(np.float64)
    truth = _window(product, truth_phenology).astype(np.float64)
    species = _window(product, truth_species, 1)
    has = truth[0] != TRUTH_NODATA
    iu, idn = METRIC_NAMES.index("greenup"), METRIC_NAMES.index("dormancy")
    ok = has & (est[iu] != NODATA_I16) & (est[idn] != NODATA_I16)
    mae, bias = {}, {}
    for t, name in enumerate(TRANSITIONS):
        i = METRIC_NAMES.index(name)
        sel = ok & (est[i] != NODATA_I16)
        err = est[i][sel] - truth[t][sel]
        mae[name] = round(float(np.abs(err).mean()), 2)
        bias[name] = round(float(err.mean()), 2)
    err = np.abs(est[idn] - truth[6])
    by_class = {str(int(c)): round(float(err[ok & (species == c)].mean()), 2) for c in np.unique(species[ok])}
    return {"mae_days": mae, "bias_days": bias, "dormancy_mae_by_class": by_class,
            "defined_share": round(float(ok.sum() / max(has.sum(), 1)), 4), "n_pixels": int(ok.sum())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aoi", default=str(REPO / "examples" / "region.geojson"))
    ap.add_argument("--year", type=int, default=2022)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args(argv)

    from treemap.demo import ensure_demo_world

    world = ensure_demo_world(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "phenology"
        catalog = "demo" if args.seed == 0 else str(world.catalog)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "treemap", "phenology", "--catalog", catalog, "--aoi", args.aoi,
                               "--year", str(args.year), "--out", str(out)], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"treemap phenology failed: {proc.stderr.strip().splitlines()[-1:]}")
        result = compare(out / "phenology.tif", world.truth_phenology, world.truth_species)
    result["seconds"] = round(seconds, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
