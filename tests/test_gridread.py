"""GridReader (treemap/gridread.py) against stackstac's own warping reader on real GeoTIFFs: the same values for
assets on the tile's lattice (10, 20 and 60 m, shifted, partly outside the tile, with nodata), and stackstac's
reader itself for what is off the lattice."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window
from stackstac.raster_spec import RasterSpec
from stackstac.rio_reader import AutoParallelRioReader

from treemap.gridread import GridMap, GridReader

EPSG = 32631


def write(path, x0, y0, res, shape, epsg=EPSG, nodata=0, dtype="uint16", seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4000 if dtype == "uint16" else 12, shape).astype(dtype)
    data[: shape[0] // 5, : shape[1] // 7] = 0  # a block of zeros: nodata when the file says so
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=1, dtype=dtype,
                       crs=f"EPSG:{epsg}", transform=from_origin(x0, y0, res, res), nodata=nodata, tiled=True,
                       blockxsize=16, blockysize=16) as ds:
        ds.write(data, 1)
    return str(path)


def both(url, spec, window=None, dtype="uint16"):
    kwargs = dict(url=url, spec=spec, resampling=Resampling.nearest, dtype=np.dtype(dtype),
                  fill_value=np.uint16(0), scale_offset=(1, 0))
    ours, theirs = GridReader(**kwargs), AutoParallelRioReader(**kwargs)
    h, w = spec.shape
    window = window or Window(0, 0, w, h)
    a, b = ours.read(window), np.asarray(theirs.read(window))
    return a, b, ours.warped


# A tile's read grid: x 600010..600650, y 5000000..5000480 at 10 m (off the 60 m MGRS lattice by 10 m).
SPEC = RasterSpec(EPSG, (600010.0, 5000000.0, 600650.0, 5000480.0), (10.0, 10.0))


@pytest.mark.parametrize("x0, y0, res, shape", [
    (599940.0, 5000600.0, 10.0, (100, 100)),  # 10 m, covering the tile
    (600300.0, 5000300.0, 10.0, (50, 60)),  # 10 m, covering part of it (the rest is fill)
    (599940.0, 5000600.0, 20.0, (40, 40)),  # 20 m: the tile starts on an odd 10 m column of the asset
    (600100.0, 5000420.0, 20.0, (15, 30)),  # 20 m, partly outside
    (599940.0, 5000520.0, 60.0, (12, 16)),  # 60 m
])
def test_reads_on_the_lattice_equal_the_warp(tmp_path, x0, y0, res, shape):
    url = write(tmp_path / "a.tif", x0, y0, res, shape)
    a, b, warped = both(url, SPEC)
    assert warped is False
    assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (a == 0).any() and (a != 0).any()
    # and any sub-window (stackstac reads chunks)
    a, b, _ = both(url, SPEC, Window(7, 3, 33, 21))
    assert np.array_equal(a, b)


def test_scl_bytes_and_files_without_nodata_equal_the_warp(tmp_path):
    url = write(tmp_path / "scl.tif", 599940.0, 5000600.0, 20.0, (40, 40), nodata=None, dtype="uint8")
    a, b, warped = both(url, SPEC)
    assert warped is False and a.dtype == np.uint16 and np.array_equal(a, b)
    url = write(tmp_path / "edge.tif", 600300.0, 5000300.0, 10.0, (50, 60), nodata=None)
    a, b, _ = both(url, SPEC)
    assert np.array_equal(a, b)
    url = write(tmp_path / "three.tif", 599940.0, 5000600.0, 20.0, (40, 40), nodata=3, dtype="uint8")
    a, b, warped = both(url, SPEC)  # a nodata value other than the fill value
    assert warped is False and np.array_equal(a, b) and not (a == 3).any()


@pytest.mark.parametrize("x0, epsg, res", [(599945.0, EPSG, 10.0),  # 5 m off the lattice
                                          (599940.0, 32632, 10.0),  # another zone
                                          (599940.0, EPSG, 15.0)])  # not a whole multiple
def test_anything_else_goes_through_stackstacs_warp(tmp_path, x0, epsg, res):
    url = write(tmp_path / "b.tif", x0, 5000600.0, res, (100, 100), epsg=epsg)
    a, b, warped = both(url, SPEC)
    assert warped is True and np.array_equal(a, b)


def test_grid_map_floor_rule():
    t = from_origin(599940.0, 5000600.0, 20.0, 20.0)
    grid = GridMap.between(t, EPSG, SPEC.transform, EPSG)
    assert grid == GridMap(2, 12, 7)
    # tile columns 0, 1, 2 are lattice columns 7, 8, 9 -> asset columns 3, 4, 4
    assert grid.source_indices(0, 3, grid.col0).tolist() == [3, 4, 4]
    assert GridMap.between(t, EPSG, from_origin(600015.0, 5000480.0, 10.0, 10.0), EPSG) is None


def test_pickles_as_its_state(tmp_path):
    import pickle

    url = write(tmp_path / "a.tif", 599940.0, 5000600.0, 10.0, (100, 100))
    reader = GridReader(url=url, spec=SPEC, resampling=Resampling.nearest, dtype=np.dtype("uint16"),
                        fill_value=np.uint16(0), scale_offset=(1, 0))
    first = reader.read(Window(0, 0, 10, 10))
    again = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(again.read(Window(0, 0, 10, 10)), first)


def _reader(url):
    return GridReader(url=url, spec=SPEC, resampling=Resampling.nearest, dtype=np.dtype("uint16"),
                      fill_value=np.uint16(0), scale_offset=(1, 0))


def test_a_file_is_opened_once_for_many_readers_and_afresh_when_it_changes(tmp_path, monkeypatch):
    import os

    import treemap.gridread as gridread

    files = gridread.OpenFiles(size=8)
    monkeypatch.setattr(gridread, "open_files", files)
    url = write(tmp_path / "a.tif", 599940.0, 5000600.0, 20.0, (40, 40), seed=1)
    first = [_reader(url).read(Window(0, 0, 64, 48)) for _ in range(3)]
    assert files.opens == 1 and all(np.array_equal(first[0], f) for f in first)
    write(tmp_path / "a.tif", 599940.0, 5000600.0, 20.0, (40, 40), seed=2)  # same path, new content
    os.utime(url, ns=(1, 1))  # a different modification time even on a coarse clock
    again = _reader(url).read(Window(0, 0, 64, 48))
    assert files.opens == 2 and not np.array_equal(again, first[0])
    expected, _, _ = both(url, SPEC)
    assert np.array_equal(again, expected)


def test_a_failed_read_drops_the_dataset_and_eviction_reopens(tmp_path, monkeypatch):
    import treemap.gridread as gridread

    files = gridread.OpenFiles(size=1)
    monkeypatch.setattr(gridread, "open_files", files)
    a = write(tmp_path / "a.tif", 599940.0, 5000600.0, 10.0, (100, 100), seed=3)
    b = write(tmp_path / "b.tif", 599940.0, 5000600.0, 20.0, (40, 40), seed=4)
    ra, rb = _reader(a), _reader(b)
    va = ra.read(Window(0, 0, 64, 48))
    vb = rb.read(Window(0, 0, 64, 48))  # evicts a (the cache holds one file)
    assert np.array_equal(ra.read(Window(0, 0, 64, 48)), va)  # ra's dataset was closed: opened again
    assert files.opens == 3
    real = gridread.read_on_grid

    def failing(*args):
        raise rasterio.errors.RasterioIOError("read failed")

    monkeypatch.setattr(gridread, "read_on_grid", failing)
    with pytest.raises(rasterio.errors.RasterioIOError):
        _reader(b).read(Window(0, 0, 64, 48))
    monkeypatch.setattr(gridread, "read_on_grid", real)
    assert np.array_equal(_reader(b).read(Window(0, 0, 64, 48)), vb)  # not the failed handle: a fresh open
    assert files.opens == 5


def test_a_held_environment_is_entered_once_for_a_run_of_reads(tmp_path, monkeypatch):
    """held_env: one GDAL environment for many files (its options in force for opens and reads), where each reader
    otherwise enters the open and the read layer around every open and read."""
    import stackstac

    from treemap.gridread import held_env

    env = stackstac.DEFAULT_GDAL_ENV.updated(always={"TREEMAP_TEST_OPTION": "held"})
    urls = [write(tmp_path / f"{i}.tif", 599940.0, 5000600.0, 10.0 * (1 + i % 2), (100, 50), seed=i)
            for i in range(4)]
    import treemap.gridread as gridread

    seen, entered = [], [0]
    real_read, real_enter = gridread.read_on_grid, rasterio.Env.__enter__

    def spy_read(*args):
        seen.append(rasterio.env.getenv().get("TREEMAP_TEST_OPTION"))  # the options in force while reading
        return real_read(*args)

    def spy_enter(self):
        entered[0] += 1
        return real_enter(self)

    monkeypatch.setattr(gridread, "read_on_grid", spy_read)
    monkeypatch.setattr(rasterio.Env, "__enter__", spy_enter)

    def read_all():
        out = []
        for url in urls:
            kwargs = dict(url=url, spec=SPEC, resampling=Resampling.nearest, dtype=np.dtype("uint16"),
                          fill_value=np.uint16(0), scale_offset=(1, 0), gdal_env=env)
            reader = GridReader(**kwargs)
            out.append(reader.read(Window(0, 0, 64, 48)))
            reader.close()
        return out

    plain = read_all()
    per_file = entered[0]
    entered[0] = 0
    with held_env(env):
        with held_env(env):  # nested: the outer hold stands
            held = read_all()
    # rasterio.open enters an environment of its own on every call (a cheap nested one inside an active one); the
    # open and read layers, two per file, are gone
    assert per_file - entered[0] == 2 * len(urls) - 1
    assert seen == ["held"] * (2 * len(urls))  # the environment's options, both ways
    assert all(np.array_equal(a, b) for a, b in zip(plain, held))
    assert getattr(gridread._held, "env", None) is None  # released on the way out
