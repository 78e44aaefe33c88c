"""The training/inference equality of the auxiliary inputs: for every point, the 27 values `treemap extract` writes
into its shard are the values `treemap predict` feeds the model at the pixel holding the point -- bit for bit, on
the small demo world, with layers in three CRSs, for points on tile edges, in tile halos and anywhere else."""

import csv
import io
import json
import math
import tarfile
from datetime import date

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

from treemap.auxiliary import Layer, LayerSet
from treemap.extract import AuxSource, ExtractOptions, extract_points
from treemap.grid import plan_tiles, to_crs
from treemap.aoi import AOI
from treemap.masking import MaskSpec
from treemap.models import AUX_VARIABLES
from treemap.run import PredictRequest, predict

TILE = 48


def _write(path, data, transform, crs, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data, 1)
    return str(path)


@pytest.fixture(scope="module")
def layers(small_world, tmp_path_factory):
    """A hilly DEM (EPSG:4326, 1 arc-second), a 1 km bio05 (EPSG:4326), SoilGrids-like water content on a 250 m
    EPSG:3035 grid, all covering the small world with margin."""
    folder = tmp_path_factory.mktemp("layers")
    s = small_world.spec
    to_ll = Transformer.from_crs(s.epsg, 4326, always_xy=True)
    west, north = to_ll.transform(s.x_min - 2000, s.y_max + 2000)
    east, south = to_ll.transform(s.x_min + s.width_px * 10 + 2000, s.y_max - s.height_px * 10 - 2000)
    step = 1 / 3600
    h, w = int((north - south) / step) + 1, int((east - west) / step) + 1
    r, c = np.mgrid[0:h, 0:w]
    dem = (250 + 60 * np.sin(c / 17.0) * np.cos(r / 11.0) + 0.3 * c).astype(np.float32)
    paths = {"elevation": _write(folder / "dem.tif", dem, from_origin(west, north, step, step), "EPSG:4326", -9999)}
    coarse = 1 / 120
    h2, w2 = int((north - south) / coarse) + 2, int((east - west) / coarse) + 2
    bio = (200 + 7 * np.arange(h2 * w2).reshape(h2, w2) % 31).astype(np.int16)
    paths["bio05"] = _write(folder / "bio05.tif", bio, from_origin(west, north, coarse, coarse), "EPSG:4326", -32768)
    x, y = Transformer.from_crs(4326, 3035, always_xy=True).transform(west, north)
    soil = (150 + np.arange(60 * 60).reshape(60, 60) % 113).astype(np.int16)
    paths["soil_moisture_0_5cm"] = _write(folder / "soil.tif", soil, from_origin(x - 3000, y + 3000, 250, 250),
                                          "EPSG:3035", -32768)
    return paths


@pytest.fixture(scope="module")
def aoi(small_world, tmp_path_factory):
    s = small_world.spec
    from shapely.geometry import box

    local = box(s.x_min + 100, s.y_max - 900, s.x_min + 1300, s.y_max - 100)
    path = tmp_path_factory.mktemp("aoi") / "aoi.geojson"
    geometry = to_crs(local, 4326, src_epsg=s.epsg)
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": geometry.__geo_interface__}))
    return path, geometry


@pytest.fixture(scope="module")
def points(small_world, aoi, tmp_path_factory):
    """Points inside pixels on the first and last rows and columns of tiles (every other tile's halo), and
    random ones, each at a random place inside its pixel."""
    s = small_world.spec
    plan = plan_tiles(AOI(geometry=aoi[1], source="t"), tile_size=TILE, epsg=s.epsg)
    rng = np.random.default_rng(11)
    xs, ys = [], []
    for tile in plan.tiles:
        x0, _, _, y1 = tile.core_bounds
        for col, row in ((0, 0), (tile.width - 1, 0), (0, tile.height - 1), (tile.width - 1, tile.height - 1),
                         (tile.width // 2, 0), (0, tile.height // 2), *rng.integers(0, min(tile.width, tile.height),
                                                                                    (4, 2))):
            xs.append(x0 + 10 * col + rng.uniform(0.5, 9.5))
            ys.append(y1 - 10 * row - rng.uniform(0.5, 9.5))
    # the plan's outer tiles reach past the AOI, whose pixels are not mapped: keep pixels well inside it
    inner = (s.x_min + 120, s.y_max - 880, s.x_min + 1280, s.y_max - 120)
    keep = [(x, y) for x, y in zip(xs, ys) if inner[0] < x < inner[2] and inner[1] < y < inner[3]]
    lon, lat = Transformer.from_crs(s.epsg, 4326, always_xy=True).transform(*map(np.array, zip(*keep)))
    path = tmp_path_factory.mktemp("points") / "points.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["sample_id", "longitude", "latitude", "year", "level0", "level1_family", "level2_genus",
                      "level3_species"])
        for i, (a, b) in enumerate(zip(lon, lat)):
            out.writerow([f"p{i:03d}", repr(float(a)), repr(float(b)), 2022, "Deciduous Broadleaf", "Fagaceae",
                          "Fagus", "Fagus sylvatica"])
    return path


def _shard_aux(paths):
    out = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if ext == "auxiliary.json":
                    out[key] = json.load(io.BytesIO(tar.extractfile(member).read()))
    return out


def test_extract_writes_what_predict_feeds_the_model(small_world, layers, aoi, points, tmp_path, monkeypatch):
    options = ExtractOptions(shard_size=100, auxiliary={k: AuxSource(v) for k, v in layers.items()})
    result = extract_points(points, tmp_path / "shards", small_world.catalog, options=options)
    shards = _shard_aux(result.shards)
    assert len(shards) == result.written >= 30

    from treemap import infer

    fed = []
    original = infer.PixelEncoder._batched

    def spy(self, patches, aux, *args, **kwargs):  # every batch of a tile goes through here on the host path
        fed.append(np.array(aux, copy=True))
        return original(self, patches, aux, *args, **kwargs)

    monkeypatch.setattr(infer.PixelEncoder, "_batched", spy)
    layer_set = LayerSet(tuple(Layer(k, v) for k, v in layers.items()))
    predict(PredictRequest(aoi=aoi[0], out=tmp_path / "maps", catalog=str(small_world.catalog), model="demo",
                           species="demo", start=date(2022, 6, 1), end=date(2022, 7, 31), tile_size=TILE,  # 2 months: fast
                           workers=1, mask=MaskSpec(kind="none"), aux=layer_set))
    rows = np.concatenate(fed)
    by_pixel = {(float(r[0]), float(r[1])): r for r in rows}
    assert len(by_pixel) == len(rows), "one row per pixel"

    checked = 0
    for key, aux in shards.items():
        row = by_pixel.get((aux["longitude"], aux["latitude"]))
        if row is None:
            d = np.abs(rows[:, 0] - aux["longitude"]) + np.abs(rows[:, 1] - aux["latitude"])
            near = rows[int(np.argmin(d))]
        assert row is not None, (f"{key}: predict fed no pixel centred at the point's pixel centre "
                                 f"{aux['longitude']!r} {aux['latitude']!r}; nearest {near[:2].tolist()}")
        for k, name in enumerate(AUX_VARIABLES):
            value = aux[name]
            if value is None:
                assert math.isnan(row[k]), (key, name)
            else:
                assert value == row[k], (key, name, value, row[k])  # float32 values, compared exactly
        checked += 1
    assert checked == len(shards)
    provided = {n for n in AUX_VARIABLES if all(shards[k][n] is not None for k in shards)}
    assert provided == {"longitude", "latitude", "elevation", "slope", "aspect", "bio05", "soil_moisture_0_5cm"}
