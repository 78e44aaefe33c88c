"""STAC documents of the demo world, laid out like Earth Search v1 ``sentinel-2-l2a`` items.

Layout (all hrefs relative)::

    catalog.json                      Catalog -> child sentinel-2-l2a/collection.json
    sentinel-2-l2a/collection.json    Collection -> item ../items/<id>.json
    items/<id>.json                   Item, assets ../data/<id>/<BAND>.tif
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pyproj import Transformer

from treemap.demo.spec import BANDS_10M, GENERATOR_VERSION, TileGrid, WorldSpec

COLLECTION = "sentinel-2-l2a"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
]

# asset key, band file, title, eo:bands (common name, centre, fwhm in micrometres)
ASSETS = (
    ("blue", "B02", "Blue - 10m", "blue", 0.49, 0.098),
    ("green", "B03", "Green - 10m", "green", 0.56, 0.045),
    ("red", "B04", "Red - 10m", "red", 0.665, 0.038),
    ("rededge1", "B05", "Red Edge 1 - 20m", "rededge", 0.704, 0.019),
    ("rededge2", "B06", "Red Edge 2 - 20m", "rededge", 0.74, 0.018),
    ("rededge3", "B07", "Red Edge 3 - 20m", "rededge", 0.783, 0.028),
    ("nir", "B08", "NIR 1 - 10m", "nir", 0.842, 0.145),
    ("nir08", "B8A", "NIR 2 - 20m", "nir08", 0.865, 0.033),
    ("swir16", "B11", "SWIR 1.6μm - 20m", "swir16", 1.61, 0.143),
    ("swir22", "B12", "SWIR 2.2μm - 20m", "swir22", 2.19, 0.242),
    ("scl", "SCL", "Scene classification map (SCL)", None, None, None),
)

SCL_PERCENTAGES = (
    ("s2:nodata_pixel_percentage", (0,)),
    ("s2:saturated_defective_pixel_percentage", (1,)),
    ("s2:dark_area_pixel_percentage", (2,)),
    ("s2:cloud_shadow_percentage", (3,)),
    ("s2:vegetation_percentage", (4,)),
    ("s2:not_vegetated_percentage", (5,)),
    ("s2:water_percentage", (6,)),
    ("s2:unclassified_percentage", (7,)),
    ("s2:medium_proba_clouds_percentage", (8,)),
    ("s2:high_proba_clouds_percentage", (9,)),
    ("s2:thin_cirrus_percentage", (10,)),
    ("s2:snow_ice_percentage", (11,)),
)


def dump(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def item_id(platform: str, tile: str, day: dt.date) -> str:
    return f"S2{platform[-1].upper()}_{tile}_{day:%Y%m%d}_0_L2A"


def footprint(spec: WorldSpec, bounds: tuple[float, float, float, float]) -> tuple[list, dict]:
    """bbox and GeoJSON polygon (counter-clockwise, densified edges) in EPSG:4326."""
    tr = Transformer.from_crs(spec.epsg, 4326, always_xy=True)
    x0, y0, x1, y1 = bounds
    n = 4
    xs = [x0 + (x1 - x0) * i / n for i in range(n)]
    ys = [y0 + (y1 - y0) * i / n for i in range(n)]
    ring = ([(x, y0) for x in xs] + [(x1, y) for y in ys] + [(x1 - (x - x0), y1) for x in xs]
            + [(x0, y1 - (y - y0)) for y in ys])
    lon, lat = tr.transform([p[0] for p in ring], [p[1] for p in ring])
    coords = [[round(float(a), 8), round(float(b), 8)] for a, b in zip(lon, lat)]
    coords.append(coords[0])
    bbox = [min(c[0] for c in coords), min(c[1] for c in coords), max(c[0] for c in coords),
            max(c[1] for c in coords)]
    return bbox, {"type": "Polygon", "coordinates": [coords]}


def scl_properties(counts: list[int]) -> dict:
    total = sum(counts) or 1
    out = {}
    for key, classes in SCL_PERCENTAGES:
        out[key] = round(100.0 * sum(counts[c] for c in classes) / total, 6)
    return out


def cloud_cover(counts: list[int]) -> float:
    total = sum(counts) or 1
    return round(100.0 * (counts[8] + counts[9] + counts[10]) / total, 6)


def item_doc(spec: WorldSpec, tile: TileGrid, day: dt.date, platform: str, baseline: str,
             scl_counts: list[int]) -> dict:
    iid = item_id(platform, tile.name, day)
    bbox, geometry = footprint(spec, tile.bounds)
    offset_applied = baseline >= "04.00"
    offset = -0.1 if offset_applied else 0.0
    zone, band, square = int(tile.name[:2]), tile.name[2], tile.name[3:]
    props = {
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": cloud_cover(scl_counts),
        "proj:epsg": spec.epsg,
        "mgrs:utm_zone": zone,
        "mgrs:latitude_band": band,
        "mgrs:grid_square": square,
        "grid:code": f"MGRS-{tile.name}",
        **scl_properties(scl_counts),
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "datetime": f"{day.isoformat()}T{spec.acquisition_time}000Z",
        "s2:sequence": "0",
        "earthsearch:boa_offset_applied": offset_applied,
        "treemap:demo_world": GENERATOR_VERSION,
    }
    assets = {}
    for key, band_name, title, common, centre, fwhm in ASSETS:
        res = 10 if band_name in BANDS_10M else 20
        asset = {"href": f"../data/{iid}/{band_name}.tif", "type": COG_TYPE, "title": title}
        if common is not None:
            asset["eo:bands"] = [{"name": band_name, "common_name": common, "center_wavelength": centre,
                                  "full_width_half_max": fwhm}]
        asset["gsd"] = res
        asset["proj:shape"] = list(tile.shape(res))
        asset["proj:transform"] = tile.transform(res)
        if band_name == "SCL":
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res}]
            asset["roles"] = ["data"]
        else:
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": res,
                                      "scale": 0.0001, "offset": offset}]
            asset["roles"] = ["data", "reflectance"]
        assets[key] = asset
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": STAC_EXTENSIONS,
        "id": iid,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": f"../{COLLECTION}/collection.json", "type": "application/json"},
            {"rel": "collection", "href": f"../{COLLECTION}/collection.json", "type": "application/json"},
        ],
        "assets": assets,
        "collection": COLLECTION,
    }


def collection_doc(spec: WorldSpec, items: list[dict]) -> dict:
    bboxes = [it["bbox"] for it in items]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
            max(b[3] for b in bboxes)]
    times = sorted(it["properties"]["datetime"] for it in items)
    links = [
        {"rel": "root", "href": "../catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
    ]
    links += [{"rel": "item", "href": f"../items/{it['id']}.json", "type": "application/geo+json"}
              for it in items]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": COLLECTION,
        "title": "Sentinel-2 Level-2A (treemap demo world)",
        "description": (f"Synthetic Sentinel-2 L2A scenes of the treemap demo world (seed {spec.seed}, "
                        f"generator {GENERATOR_VERSION}), laid out like Earth Search v1."),
        "keywords": ["sentinel", "earth observation", "synthetic", "demo"],
        "license": "CC0-1.0",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": {
            "platform": ["sentinel-2a", "sentinel-2b"],
            "constellation": ["sentinel-2"],
            "instruments": ["msi"],
        },
        "links": links,
    }


def catalog_doc(spec: WorldSpec) -> dict:
    return {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "treemap-demo",
        "title": "treemap demo world",
        "description": (f"Offline demo world of treemap (seed {spec.seed}): synthetic Sentinel-2 L2A time series "
                        "with a known tree-species map."),
        "links": [
            {"rel": "root", "href": "./catalog.json", "type": "application/json"},
            {"rel": "child", "href": f"./{COLLECTION}/collection.json", "type": "application/json",
             "title": COLLECTION},
        ],
    }
