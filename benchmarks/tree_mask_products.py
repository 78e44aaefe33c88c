"""The tree mask as ``treemap predict`` publishes it, scored against the demo world's truth over the whole world.

    python benchmarks/tree_mask_products.py [--seed 0] [--cache DIR] [--tile-size 256]

Runs ``treemap predict`` (the real command, one worker process) on an AOI covering the whole default demo world of
``--seed`` twice: with the built-in rule (``--mask builtin``, the default) and with the world's land-cover raster
(``--mask truth/landcover.tif``, ESA WorldCover codes). Scores ``tree_mask.tif`` and the species products against
``truth/species.tif`` (1..10 trees; 101 water, 102 grassland, 103 cropland, 104 built-up), pixel by pixel over the
whole world. Nodata in the mask counts as an error both ways.

Prints one JSON line: per mask (``builtin``, ``landcover``): ``tree_kept`` (tree pixels the mask calls tree),
``nontree_removed`` (other pixels it calls not tree), ``removed`` per class, ``masked_nodata`` (share of the pixels
the mask calls not tree that are nodata in every band of every species product: must be 1.0), ``tree_mapped``
(tree pixels with a dominant species), ``seconds`` (the whole command); and ``seed``, ``pixels``.
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

CLASSES = {"water": 101, "grassland": 102, "cropland": 103, "built_up": 104}
SPECIES_PRODUCTS = ("species_probability", "genus_probability", "family_probability", "leaf_type_probability",
                    "dominant_species", "uncertainty")


def world_aoi(world, folder: Path) -> Path:
    """A GeoJSON AOI of the whole world."""
    from shapely.geometry import box

    from treemap.grid import to_crs

    s = world.spec
    local = box(s.x_min, s.y_max - s.height_px * 10, s.x_min + s.width_px * 10, s.y_max)
    path = folder / "world.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=s.epsg).__geo_interface__}))
    return path


def on_grid(src_path: Path, like: Path) -> np.ndarray:
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(src_path) as src, rasterio.open(like) as dst:
        out = np.zeros((dst.height, dst.width), dtype=np.uint8)
        reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs, dst_transform=dst.transform,
                  dst_crs=dst.crs, resampling=Resampling.nearest)
    return out


def score(out: Path, truth_path: Path, seconds: float) -> dict:
    import rasterio

    with rasterio.open(out / "tree_mask.tif") as ds:
        mask = ds.read(1)
    truth = on_grid(truth_path, out / "tree_mask.tif")
    scored = truth > 0
    tree = scored & (truth <= 100)
    other = scored & ~tree
    removed = mask == 0
    all_nodata = np.ones(mask.shape, bool)
    for name in SPECIES_PRODUCTS:
        with rasterio.open(out / f"{name}.tif") as ds:
            all_nodata &= (ds.read() == 255).all(axis=0)
    with rasterio.open(out / "dominant_species.tif") as ds:
        mapped = ds.read(1) != 255

    def share(sel: np.ndarray, hit: np.ndarray) -> float | None:
        n = int(sel.sum())
        return round(float(hit[sel].sum()) / n, 5) if n else None

    return {
        "tree_kept": share(tree, mask == 1),
        "nontree_removed": share(other, removed),
        "removed": {k: share(truth == c, removed) for k, c in CLASSES.items()},
        "masked_nodata": share(removed, all_nodata),
        "tree_mapped": share(tree, mapped),
        "nodata": int((scored & (mask == 255)).sum()),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="cache folder of the demo world (default: treemap's cache)")
    ap.add_argument("--tile-size", type=int, default=256)
    args = ap.parse_args(argv)

    from treemap.demo import WorldSpec, ensure_demo_world

    world = ensure_demo_world(seed=args.seed, cache_dir=args.cache)
    result: dict = {"seed": args.seed, "pixels": WorldSpec().width_px * WorldSpec().height_px}
    with tempfile.TemporaryDirectory(prefix="treemap-mask-bench-") as tmp:
        folder = Path(tmp)
        aoi = world_aoi(world, folder)
        for name, extra in (("builtin", []), ("landcover", ["--mask", str(world.landcover)])):
            out = folder / name
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "treemap", "-q", "predict", "--aoi", str(aoi), "--catalog",
                            str(world.catalog), "--model", "demo", "--species", "demo",
                            "--year", str(world.spec.year), "--out", str(out), "--tile-size", str(args.tile_size),
                            "--workers", "1", *extra], check=True, stdout=subprocess.DEVNULL)
            result[name] = score(out, world.truth_species, time.perf_counter() - t0)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
