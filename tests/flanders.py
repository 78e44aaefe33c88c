"""A small catalog of REAL Sentinel-2 L2A pixels for tests: a 640 m x 640 m patch in Flanders (tile 31UDS), 2018.

Source: the WorldCereal test series in ``shared/data/real/s2-timeseries/flanders-00002806639B424A/`` (two NetCDF
files: 10 m bands B02 B03 B04 B08 at 64 x 64 px, 20 m bands B05 B06 B07 B8A B11 B12 and SCL at 32 x 32 px, uint16 DN,
scale 1e-4, no offset, fill 0; x/y = UTM 31N pixel centres). :func:`extract` keeps every second date of 2018 (46
dates) unchanged in ``tests/data/flanders/flanders_2018.npz`` (see the NOTICE there); the project's virtualenv has no
NetCDF backend for xarray, so the NetCDF-4 (HDF5) variables are read through GDAL's HDF5 driver, which returns them
as stored (rows north to south, like the y coordinate).

:func:`write_cogs` turns the npz into one single-band COG per date and band (EPSG:32631, the transform from the x/y
coordinates, nodata 0) and :func:`write_items` writes an item file (FeatureCollection) of Earth-Search-v1-like items
(asset keys blue ... scl, ``proj:epsg``, per-asset ``proj:shape``/``proj:transform``, ``raster:bands`` scale 1e-4
offset 0, ``eo:cloud_cover`` = cloud and shadow share of the patch's SCL) whose hrefs point at a base URL, e.g. a
loopback file server. All 2018 products predate processing baseline 04.00 (25 January 2022): no offset, which the
items state and treemap's date rule agrees with.

Not known from the source, so not invented: the platform of each date (S2A or S2B; items say ``sentinel-2``) and
the processing baseline (no ``s2:processing_baseline``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NPZ = HERE / "data" / "flanders" / "flanders_2018.npz"
SOURCE = HERE.parents[1] / "shared" / "data" / "real" / "s2-timeseries" / "flanders-00002806639B424A"

EPSG = 32631
MGRS = "31UDS"
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B05": "rededge1", "B06": "rededge2",
        "B07": "rededge3", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
CLOUDY_SCL = (3, 8, 9, 10)


# --- the npz, from the NetCDF files (run once by hand: python tests/flanders.py extract) ----------------------------

def extract(source: Path = SOURCE, out: Path = NPZ, year: int = 2018, every: int = 2) -> Path:
    """Every ``every``-th date of ``year`` of the source series, values unchanged, into ``out``."""
    import rasterio

    f10 = next(source.glob("S2_L2A_10m_*.nc"))
    f20 = next(source.glob("S2_L2A_20m_*.nc"))

    def var(path: Path, name: str) -> np.ndarray:
        with rasterio.open(f'HDF5:"{path}"://{name}') as ds:
            return ds.read()

    def epoch(path: Path) -> np.datetime64:
        with rasterio.open(f"NETCDF:{path}:B02" if "10m" in path.name else f"NETCDF:{path}:B05") as ds:
            units = ds.tags()["timestamp#units"]  # "seconds since 2017-08-04 10:53:28"
        assert units.startswith("seconds since "), units
        return np.datetime64(units[len("seconds since "):].replace(" ", "T"), "s")

    when = epoch(f10) + var(f10, "timestamp").ravel().astype("timedelta64[s]")
    when20 = epoch(f20) + var(f20, "timestamp").ravel().astype("timedelta64[s]")
    assert np.array_equal(when, when20), "the 10 m and 20 m files hold different dates"
    years = when.astype("datetime64[Y]").astype(int) + 1970
    keep = np.flatnonzero(years == year)[::every]
    arrays = {"datetime": when[keep],
              "x10": var(f10, "x").ravel(), "y10": var(f10, "y").ravel(),
              "x20": var(f20, "x").ravel(), "y20": var(f20, "y").ravel()}
    for band in BANDS_10M:
        arrays[band] = var(f10, band)[keep].astype(np.uint16)
    for band in BANDS_20M + ("SCL",):
        arrays[band] = var(f20, band)[keep]
    arrays["SCL"] = arrays["SCL"].astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


# --- COGs and items ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flanders:
    root: Path  # folder served over HTTP: data/<item id>/<BAND>.tif
    ids: tuple[str, ...]  # item ids, in time order
    datetimes: tuple[str, ...]  # ISO datetimes (UTC) of the items
    bounds: tuple[float, float, float, float]  # UTM 31N bounds of the patch
    cloud_cover: tuple[float, ...]

    def href(self, base_url: str, item_id: str, band: str) -> str:
        return f"{base_url.rstrip('/')}/data/{item_id}/{band}.tif"

    def path(self, item_id: str, band: str) -> Path:
        return self.root / "data" / item_id / f"{band}.tif"


def _transform(x: np.ndarray, y: np.ndarray):
    """The affine transform of a grid whose pixel centres are ``x`` (west to east) and ``y`` (north to south)."""
    from rasterio.transform import Affine

    res_x = float(x[1] - x[0])
    res_y = float(y[1] - y[0])
    assert res_x > 0 and res_y < 0 and np.allclose(np.diff(x), res_x) and np.allclose(np.diff(y), res_y)
    return Affine(res_x, 0.0, float(x[0]) - res_x / 2, 0.0, res_y, float(y[0]) - res_y / 2)


def _write_cog(path: Path, data: np.ndarray, transform) -> None:
    import rasterio
    from rasterio.crs import CRS

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=CRS.from_epsg(EPSG), transform=transform, nodata=0,
                       compress="DEFLATE", blocksize=512, overviews="NONE") as ds:
        ds.write(data, 1)


def write_cogs(root: Path, npz: Path = NPZ) -> Flanders:
    """One COG per date and band under ``root/data/<item id>/``."""
    z = np.load(npz)
    t10, t20 = _transform(z["x10"], z["y10"]), _transform(z["x20"], z["y20"])
    ids, datetimes, clouds = [], [], []
    for k, when in enumerate(z["datetime"]):
        stamp = str(np.datetime_as_string(when, unit="s"))
        item_id = f"S2_{MGRS}_{stamp[:10].replace('-', '')}_0_L2A"
        for band in BANDS_10M:
            _write_cog(root / "data" / item_id / f"{band}.tif", z[band][k], t10)
        for band in BANDS_20M + ("SCL",):
            _write_cog(root / "data" / item_id / f"{band}.tif", z[band][k], t20)
        scl = z["SCL"][k]
        valid = scl > 0
        clouds.append(round(100.0 * float(np.isin(scl, CLOUDY_SCL).sum()) / max(int(valid.sum()), 1), 2))
        ids.append(item_id)
        datetimes.append(stamp + "Z")
    h, w = z["B02"].shape[1:]
    bounds = (t10.c, t10.f + t10.e * h, t10.c + t10.a * w, t10.f)
    return Flanders(root, tuple(ids), tuple(datetimes), bounds, tuple(clouds))


def _item(fl: Flanders, k: int, base_url: str) -> dict:
    from shapely.geometry import box

    from treemap.grid import to_crs

    item_id = fl.ids[k]
    west, south, east, north = fl.bounds
    footprint = to_crs(box(*fl.bounds), 4326, src_epsg=EPSG)
    assets = {}
    for band, key in KEYS.items():
        res = 10 if band in BANDS_10M else 20
        size = round((east - west) / res)
        asset = {"href": fl.href(base_url, item_id, band), "type": "image/tiff; application=geotiff; "
                 "profile=cloud-optimized", "title": band, "roles": ["data"],
                 "proj:shape": [size, size], "proj:transform": [res, 0.0, west, 0.0, -res, north]}
        if band == "SCL":
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res}]
        else:
            asset["roles"].append("reflectance")
            asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": res,
                                      "scale": 0.0001, "offset": 0}]
        assets[key] = asset
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/grid/v1.1.0/schema.json"],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "bbox": list(footprint.bounds),
        "geometry": footprint.__geo_interface__,
        "properties": {"datetime": fl.datetimes[k], "platform": "sentinel-2", "constellation": "sentinel-2",
                       "instruments": ["msi"], "eo:cloud_cover": fl.cloud_cover[k], "proj:epsg": EPSG,
                       "grid:code": f"MGRS-{MGRS}"},
        "assets": assets,
        "links": [],
    }


def write_items(fl: Flanders, base_url: str, path: Path, replace: dict[tuple[str, str], str] | None = None) -> Path:
    """An item file of every date with hrefs under ``base_url``; ``replace`` maps (item id, band) to another href."""
    features = [_item(fl, k, base_url) for k in range(len(fl.ids))]
    for (item_id, band), href in (replace or {}).items():
        item = next(f for f in features if f["id"] == item_id)
        item["assets"][KEYS[band]]["href"] = href
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    return path


def write_aoi(fl: Flanders, path: Path, inset: float = 40.0) -> Path:
    """A GeoJSON AOI (EPSG:4326) inside the patch, ``inset`` metres from its edges."""
    from shapely.geometry import box

    from treemap.grid import to_crs

    west, south, east, north = fl.bounds
    local = box(west + inset, south + inset, east - inset, north - inset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=EPSG).__geo_interface__}))
    return path


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["extract"]:
        sys.exit("usage: python tests/flanders.py extract   (rewrites tests/data/flanders/flanders_2018.npz)")
    print(extract())
