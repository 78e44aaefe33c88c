"""The offline demo world: a deterministic synthetic Sentinel-2 L2A time series with a known species map.

``build_world(out_dir, spec)`` writes COGs, a static STAC catalog (Earth Search v1 layout) and truth rasters;
``ensure_demo_world(seed)`` builds the default world once into the user cache and reuses it.
"""

from treemap.demo.spec import GENERATOR_VERSION, DemoWorld, WorldSpec
from treemap.demo.world import build_world, ensure_demo_world

__all__ = ["GENERATOR_VERSION", "DemoWorld", "WorldSpec", "build_world", "ensure_demo_world"]
