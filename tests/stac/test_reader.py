"""treemap's stackstac reader (``treemap.io_env.SkippingReader``, stackstac's public ``Reader`` protocol): broken
assets of every kind become nodata with a warning naming scene and band, a bug still raises, readers pickle."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from test_adapters import SIZE, X0, Y1, _expected_10m, _item_on_local_cogs, _source_pixels, _tile, features
from treemap.cube import TileCube
from treemap.io_env import SkippingReader, clear_unreadable, unreadable_assets
from treemap.stac import BANDS
from treemap.stac.scene import normalise_item


@pytest.fixture(autouse=True)
def _fresh_record(monkeypatch):
    monkeypatch.setenv("TREEMAP_HTTP_BACKOFF", "0")  # the cube's later tries do not wait here
    clear_unreadable()
    yield
    clear_unreadable()


def _plain_tiff(path: Path, count: int = 1, crs: str | None = None) -> None:
    kwargs = {"crs": crs, "transform": from_origin(X0, Y1, 10, 10)} if crs else {}
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=count, dtype="uint16",
                       **kwargs) as ds:
        ds.write(np.ones((count, SIZE, SIZE), np.uint16))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_every_kind_of_broken_asset_is_nodata_with_a_warning(tmp_path, caplog):
    """A missing file, a file without CRS (an AttributeError inside stackstac), a two-band file (a RuntimeError
    of stackstac without a GDAL cause) and a truncated COG: each is nodata and named; the other bands are read."""
    pixels = _source_pixels(5)
    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "s", pixels)
    href = {key: Path(item["assets"][key]["href"]) for key in ("nir", "blue", "green", "red")}
    href["nir"].unlink()
    _plain_tiff(href["blue"])
    _plain_tiff(href["green"], count=2, crs="EPSG:32633")
    data = href["red"].read_bytes()
    href["red"].write_bytes(data[: len(data) // 2])
    scene = normalise_item(item)
    caplog.set_level(logging.WARNING, logger="treemap")
    cube = TileCube([scene], _tile())
    dn, scl = cube.load([0])

    reasons = {band: reason for _, band, _, reason in cube.unreadable}
    assert set(reasons) == {"B08", "B02", "B03", "B04"}
    assert reasons["B02"] == "no CRS" and reasons["B03"] == "2 bands, not 1"
    assert "No such file" in reasons["B08"]
    for band in ("B02", "B03", "B04", "B08"):
        assert (dn[0, BANDS.index(band)] == 0).all(), band
        assert any(f"band {band} is unreadable" in r.message and scene.id in r.message for r in caplog.records)
    for band in ("B05", "B8A", "B11", "B12"):
        np.testing.assert_array_equal(dn[0, BANDS.index(band)], _expected_10m(pixels, band), err_msg=band)
    np.testing.assert_array_equal(scl[0], _expected_10m(pixels, "SCL"))


def test_a_bug_is_not_mistaken_for_a_broken_file(tmp_path, monkeypatch):
    """An exception that is not a read error, from a file that is sound, propagates."""
    from treemap.gridread import GridReader

    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "s", _source_pixels(6))

    def broken(self, window, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(GridReader, "read", broken)
    cube = TileCube([normalise_item(item)], _tile())
    with pytest.raises(ZeroDivisionError, match="a bug"):
        cube.load([0])
    assert unreadable_assets() == {}


def _reader(url: str) -> SkippingReader:
    from stackstac.raster_spec import RasterSpec
    from rasterio.enums import Resampling

    spec = RasterSpec(epsg=32633, bounds=(X0, Y1 - SIZE * 10, X0 + SIZE * 10, Y1), resolutions_xy=(10.0, 10.0))
    return SkippingReader(url=url, spec=spec, resampling=Resampling.nearest, dtype=np.dtype("uint16"),
                          fill_value=np.uint16(0), scale_offset=(1, 0), gdal_env=None)


def test_reader_pickles_and_reads_the_same_after(tmp_path):
    pixels = _source_pixels(7)
    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "s", pixels)
    reader = _reader(item["assets"]["red"]["href"])
    window = Window(0, 0, SIZE, SIZE)
    first = reader.read(window)
    clone = pickle.loads(pickle.dumps(reader))
    assert isinstance(clone, SkippingReader) and clone is not reader
    np.testing.assert_array_equal(clone.read(window), first)
    np.testing.assert_array_equal(first, pixels["B04"])
    reader.close()
    clone.close()


def test_an_asset_that_fails_is_not_tried_again(tmp_path, monkeypatch):
    """GDAL has already retried a file that fails on its first read: later windows are nodata at once."""
    from treemap.gridread import GridReader

    calls = []
    original = GridReader.read

    def counting(self, window, **kwargs):
        calls.append(window)
        return original(self, window, **kwargs)

    monkeypatch.setattr(GridReader, "read", counting)
    missing = str(tmp_path / "missing.tif")
    reader = _reader(missing)
    for window in (Window(0, 0, 8, 8), Window(8, 8, 8, 8), Window(0, 8, 8, 4)):
        out = reader.read(window)
        assert out.shape == (window.height, window.width) and (out == 0).all() and out.dtype == np.uint16
    assert len(calls) == 1
    assert list(unreadable_assets()) == [missing]


# --- the second pass --------------------------------------------------------------------------------------------------

def test_an_asset_that_fails_once_is_read_on_the_second_pass(tmp_path, monkeypatch, caplog):
    """A read failure of one asset that clears up later (a server that was down for a moment) is read again after
    the cube's other assets, so the cube holds the real pixels and names nothing unreadable."""
    from treemap.gridread import GridReader

    monkeypatch.setenv("TREEMAP_HTTP_BACKOFF", "0")
    pixels = _source_pixels(8)
    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "s", pixels)
    flaky = item["assets"]["red"]["href"]
    original = GridReader.read
    failures = []

    def once(self, window, **kwargs):
        if self.url == flaky and not failures:
            failures.append(window)
            raise rasterio.errors.RasterioIOError("HTTP response code: 503")
        return original(self, window, **kwargs)

    monkeypatch.setattr(GridReader, "read", once)
    caplog.set_level(logging.INFO, logger="treemap")
    cube = TileCube([normalise_item(item)], _tile())
    dn, _ = cube.load([0])
    assert failures and cube.unreadable == []
    for band in ("B04", "B08", "B11"):
        np.testing.assert_array_equal(dn[0, BANDS.index(band)], _expected_10m(pixels, band), err_msg=band)
    assert any("band B04 read on try 2" in r.message for r in caplog.records)
    assert not any(r.levelname == "WARNING" and r.name.startswith("treemap") for r in caplog.records)


def test_second_pass_bypasses_gdals_memory_of_a_failed_http_file(tmp_path, monkeypatch, http_server):
    """Over HTTP, GDAL remembers a file that failed to open and answers later opens from that memory without asking
    the server. A tile read while the server failed (500 after GDAL's retries) names the file unreadable; a later
    tile, read once the server is back, must reach it again and get the real pixels."""
    monkeypatch.setenv("TREEMAP_HTTP_BACKOFF", "0.01")
    monkeypatch.setenv("TREEMAP_HTTP_RETRIES", "1")
    pixels = _source_pixels(9)
    folder = tmp_path / "s"
    item = _item_on_local_cogs(features("earth-search-v1")[0], folder, pixels)
    state = {"down": True, "red_requests": 0}

    def respond(handler):
        name = handler.path.lstrip("/").split("?")[0]
        data = (folder / name).read_bytes()
        if name == "B04.tif":
            state["red_requests"] += 1
            if state["down"]:
                return 500, "text/plain", "down"
        wanted = handler.headers.get("Range")
        if wanted:
            first, last = (int(v) for v in wanted.split("=")[1].split(",")[0].split("-"))
            last = min(last, len(data) - 1)
            handler.extra_headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}", "Accept-Ranges": "bytes"}
            return 206, "image/tiff", data[first:last + 1]
        return 200, "image/tiff", data

    with http_server(respond) as server:
        for asset in item["assets"].values():
            if asset["href"].startswith(str(folder)):
                asset["href"] = f"{server.url}/{Path(asset['href']).name}"
        scene = normalise_item(item)
        earlier = TileCube([scene], _tile())
        earlier.load([0])
        asked_while_down = state["red_requests"]
        state["down"] = False
        later = TileCube([scene], _tile())
        dn, _ = later.load([0])

    assert [band for _, band, _, _ in earlier.unreadable] == ["B04"]
    assert asked_while_down >= 4  # GDAL's try and retry, in both passes
    assert later.unreadable == []
    np.testing.assert_array_equal(dn[0, BANDS.index("B04")], _expected_10m(pixels, "B04"))


def _shifted(item: dict, scene_id: str, dx: float) -> dict:
    """``item`` under another id with every asset's grid moved ``dx`` m east; its lon/lat box is left as it was."""
    import copy

    out = copy.deepcopy(item)
    out["id"] = scene_id
    for asset in out["assets"].values():
        if "proj:transform" in asset:
            t = asset["proj:transform"]
            asset["proj:transform"] = [t[0], t[1], t[2] + dx, t[3], t[4], t[5]]
    return out


def test_a_scene_whose_box_meets_the_tile_but_whose_grid_does_not_leaves_the_cube(tmp_path):
    """stackstac leaves such a scene out of the stack; the cube's scene list must follow, or every later scene's
    pixels are read under the wrong scene (found at MGRS tile edges)."""
    from treemap.cube import NoSceneReachesTile

    near = _source_pixels(5)
    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "near", near)
    other = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "other", _source_pixels(6), add=100)
    far = normalise_item(_shifted(item, "far-scene", 50_000.0))
    scenes = [far, normalise_item(item), far, normalise_item({**other, "id": "other-scene"})]
    cube = TileCube(scenes, _tile())
    assert [s.id for s in cube.scenes] == [item["id"], "other-scene"]
    assert cube.data.sizes["time"] == 2 and len(cube.scale) == len(cube.offset) == 2
    dn, scl = cube.load([0, 1])
    np.testing.assert_array_equal(dn[0, BANDS.index("B04")], _expected_10m(near, "B04"))
    assert (dn[1, BANDS.index("B04")] != dn[0, BANDS.index("B04")]).any()
    with pytest.raises(NoSceneReachesTile):
        TileCube([far], _tile())


def test_gdal_block_cache_is_bounded_unless_the_user_set_it():
    """In a fresh process (GDAL reads GDAL_CACHEMAX once, at the cache's first use): treemap's bound applies when
    the variable is unset, and a user's value is kept."""
    import os
    import subprocess
    import sys

    code = ("import os; from click.testing import CliRunner; from treemap.cli import cli; "
            "CliRunner().invoke(cli, ['search']); print(os.environ.get('GDAL_CACHEMAX'))")
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    from treemap.io_env import BLOCK_CACHE_MB

    assert out.stdout.split()[-1] == str(BLOCK_CACHE_MB)
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GDAL_CACHEMAX": "512"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split()[-1] == "512"
