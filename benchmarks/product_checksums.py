"""Checksums of the decoded pixels of every product in output folders, as one JSON line.

    python benchmarks/product_checksums.py OUT_DIR [OUT_DIR ...]

Per product: the SHA-256 of each band's decoded pixels (full resolution), so two runs can be compared bit for bit
whatever the file layout, tags or compression. ``tests/data/demo-product-checksums.json`` holds the figures of the
demo region (predict, and phenology with --seasonal) that the refactoring tests compare against.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import rasterio


def product_checksums(folder: Path) -> dict[str, list[str]]:
    sums = {}
    for path in sorted(Path(folder).glob("*.tif")):
        with rasterio.open(path) as ds:
            sums[path.name] = [hashlib.sha256(ds.read(b).tobytes()).hexdigest() for b in ds.indexes]
    return sums


if __name__ == "__main__":
    print(json.dumps({Path(p).name: product_checksums(Path(p)) for p in sys.argv[1:]}, sort_keys=True))
