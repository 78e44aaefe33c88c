"""Accuracy of the built-in tree / not-tree rule (:mod:`treemap.treemask`) on the whole demo world.

    python benchmarks/tree_mask.py [--seed 0] [--cache DIR]

Builds (or reuses) the default demo world of ``--seed`` (under ``--cache``, else ``$TREEMAP_CACHE`` or the user
cache folder), makes the 12 monthly composites of every 256 px tile with treemap's own code (tile plan, ``TileCube``,
``monthly_composites``, as ``treemap predict`` does), applies :func:`treemap.treemask.tree_mask` per tile and scores
the tiles' core pixels against ``truth/species.tif`` (codes 1..10 trees; 101 water, 102 grassland, 103 cropland,
104 built-up; 0, outside the world, is left out). Nodata (255) counts as an error both ways.

Prints one JSON line:

* ``seed``, ``pixels`` (scored pixels), ``tree_pixels``, ``nontree_pixels``, ``nodata`` (scored pixels left nodata);
* ``tree_kept``: share of tree pixels the rule calls tree; ``nontree_removed``: share of the others it calls not tree;
* ``removed``: that share per class (water, grassland, cropland, built_up); ``kept_by_species``: per tree code;
* ``seconds``: wall time of the rule itself (all tiles); ``composite_seconds``: of the composites (world
  generation excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = {"water": 101, "grassland": 102, "cropland": 103, "built_up": 104}


def demo_world(seed: int, cache: str | None = None):
    """The demo world's 256 px tile plan (its whole extent), its scenes, and its truth on the plan's grid."""
    import rasterio
    from rasterio.windows import from_bounds
    from shapely.geometry import box

    from treemap.aoi import AOI
    from treemap.demo import ensure_demo_world
    from treemap.grid import plan_tiles, to_crs
    from treemap.tiles import find_scenes

    world = ensure_demo_world(seed=seed, cache_dir=cache)
    s = world.spec
    local = box(s.x_min, s.y_max - s.height_px * 10, s.x_min + s.width_px * 10, s.y_max)
    aoi = AOI(geometry=to_crs(local, 4326, src_epsg=s.epsg), source="demo world")
    scenes = find_scenes(str(world.catalog), aoi, date(s.year, 1, 1), date(s.year, 12, 31))
    plan = plan_tiles(aoi, tile_size=256, epsg=s.epsg)
    with rasterio.open(world.truth_species) as ds:
        win = from_bounds(*plan.bounds, transform=ds.transform).round_offsets().round_lengths()
        truth = ds.read(1, window=win, boundless=True, fill_value=0)
    return plan, scenes, truth


def run(seed: int, cache: str | None = None) -> dict:
    from treemap.composite import monthly_composites
    from treemap.cube import TileCube
    from treemap.grid import scenes_for_tile
    from treemap.treemask import NODATA, TREE, tree_mask

    plan, scenes, truth = demo_world(seed, cache)
    mask = np.full(truth.shape, NODATA, dtype=np.uint8)
    t_comp = t_mask = 0.0
    for tile in plan.tiles:
        t0 = time.perf_counter()
        comp, counts = monthly_composites(TileCube(scenes_for_tile(scenes, tile), tile))
        t1 = time.perf_counter()
        m = tree_mask(comp, counts=counts)
        t_mask += time.perf_counter() - t1
        t_comp += t1 - t0
        col, row, w, h = tile.window
        k = tile.halo
        mask[row:row + h, col:col + w] = m[k:k + h, k:k + w]

    scored = truth > 0
    tree = (truth >= 1) & (truth <= 100)
    other = scored & ~tree
    said_tree = mask == TREE
    said_not = mask == 0

    def share(sel: np.ndarray, hit: np.ndarray) -> float | None:
        n = int(sel.sum())
        return round(float(hit[sel].sum()) / n, 5) if n else None

    return {
        "seed": seed,
        "tree_kept": share(tree, said_tree),
        "nontree_removed": share(other, said_not),
        "removed": {name: share(truth == code, said_not) for name, code in CLASSES.items()},
        "kept_by_species": {str(c): share(truth == c, said_tree) for c in np.unique(truth[tree]).tolist()},
        "pixels": int(scored.sum()),
        "tree_pixels": int(tree.sum()),
        "nontree_pixels": int(other.sum()),
        "nodata": int((scored & (mask == NODATA)).sum()),
        "seconds": round(t_mask, 2),
        "composite_seconds": round(t_comp, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="cache folder of the demo world (default: treemap's cache)")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.seed, args.cache)), flush=True)


if __name__ == "__main__":
    main()
