"""The offline demo world: a deterministic synthetic Sentinel-2 L2A time series with a known species map.

``build_world(out_dir, spec)`` writes the world; ``ensure_demo_world(seed)`` builds the default world once into
the user cache (``$TREEMAP_CACHE`` or ``platformdirs.user_cache_dir("treemap")``) and reuses it;
``ensure_demo_world(seed, size=(10, 10))`` (``treemap demo --size 10x10``) does the same for a world of another
extent in km (:func:`treemap.demo.spec.sized_spec`, for measurements). Layout::

    catalog.json                        static STAC catalog (relative hrefs: the folder can be moved)
    sentinel-2-l2a/collection.json      the collection, linking every item
    items/<item_id>.json                Earth Search v1 style items, e.g. S2A_32UMA_20220103_0_L2A
    data/<item_id>/<BAND>.tif           COGs: B02 B03 B04 B08 (10 m), B05 B06 B07 B8A B11 B12 SCL (20 m)
    truth/species.tif                   uint8 class codes on the world's 10 m grid (1..10 species, 101..104 other)
    truth/phenology.tif                 int16 DOY, 7 bands Greenup..Dormancy (MCD12Q2 on the clean EVI curve)
    truth/classes.json                  code -> name, kind, taxonomy
    truth/landcover.tif                 the truth in ESA WorldCover codes (10 trees, 30 grassland, 40 cropland,
                                        50 built-up, 80 water; 0 outside): a land-cover raster for --mask
    aux/*.tif                           auxiliary layers (treemap.demo.auxlayers): a 1 arc-second DEM, WorldClim-1-
                                        like BIO01/05/06/12 at 30 arc-seconds (EPSG:4326), SoilGrids-like wv0033
                                        0-5 cm at 250 m (Homolosine), related to where each species grows
    aux.yaml                            their layer set, for predict --aux and an extraction recipe's auxiliary:
    world.json                          generator version and spec (written last: its presence = complete)
"""

from treemap.demo.spec import GENERATOR_VERSION, DemoWorld, WorldSpec
from treemap.demo.world import build_world, ensure_demo_world

__all__ = ["GENERATOR_VERSION", "DemoWorld", "WorldSpec", "build_world", "ensure_demo_world"]
