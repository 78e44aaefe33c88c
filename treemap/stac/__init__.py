"""STAC search and provider adapters: any Sentinel-2 L2A item becomes one normalised :class:`Scene`."""

from treemap.stac.scene import BANDS, SCL, Scene, normalise_item
from treemap.stac.search import Catalog, Query, open_catalog

__all__ = ["BANDS", "SCL", "Scene", "normalise_item", "Catalog", "Query", "open_catalog"]
