"""treemap: tree-species maps from Sentinel-2 L2A time series."""

__version__ = "0.1.0"
