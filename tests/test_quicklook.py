"""Quicklook PNGs: the class map with legend, scale bar and north arrow; probability thumbnails."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import from_origin

from treemap.errors import TreemapError, WriteError
from treemap.outputs import class_colours
from treemap.quicklook import (NOT_TREE_RGBA, QuicklookError, QuicklookInfo, QuicklookNotFoundError,
                               decimated_shape, length_label, nice_length, read_class_table,
                               render_probability_thumbnail, render_quicklook)

NAMES = ["Fagus sylvatica", "Picea abies", "Quercus robur", "Pinus sylvestris", "Abies alba"]
NOT_TREE = 254


# -- helpers ----------------------------------------------------------------------------------------------------------
def write_cog(path: Path, data: np.ndarray, *, epsg: int = 32632, res: float = 10.0, nodata: int = 255,
              descriptions: list[str] | None = None, tags: dict[str, str] | None = None,
              colormap: dict[int, tuple] | None = None) -> Path:
    """A COG like treemap's products (512 px tiles, DEFLATE, NEAREST overviews) from (H, W) or (B, H, W)."""
    data = data[None] if data.ndim == 2 else data
    tmp = path.with_name(path.stem + ".src.tif")
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, crs=f"EPSG:{epsg}", transform=from_origin(600000.0, 5400000.0, res, res),
                   nodata=nodata, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
        if tags:
            dst.update_tags(1, **tags)
        if colormap:
            dst.write_colormap(1, colormap)
    gdal_copy(str(tmp), str(path), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512, OVERVIEW_RESAMPLING="NEAREST")
    tmp.unlink()
    return path


def png_chunks(path: Path) -> tuple[tuple[int, int], dict[str, str]]:
    """(width, height) and the text chunks (tEXt, zTXt, iTXt) of a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size, texts = 8, None, {}
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            texts[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        pos += 12 + length
        if kind == b"IEND":
            break
    return size, texts


def legend_of(path: Path) -> list[dict]:
    return json.loads(png_chunks(path)[1]["treemap:legend"])


def read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(str(path))


def only_final_files(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected


@pytest.fixture
def class_map(tmp_path) -> tuple[Path, dict[int, float]]:
    """300 x 200 px: classes 0, 1, 3 and 'not tree' (254) in known shares of the mapped pixels, a nodata band on
    top; class 2 and 4 absent."""
    data = np.full((200, 300), 255, np.uint8)
    data[20:, :150] = 0  # 180 x 150 = 27000
    data[20:, 150:240] = 1  # 180 x 90 = 16200
    data[20:110, 240:] = 3  # 90 x 60 = 5400
    data[110:, 240:] = NOT_TREE  # 90 x 60 = 5400
    valid = 54000
    shares = {0: 27000 / valid * 100, 1: 16200 / valid * 100, 3: 5400 / valid * 100, NOT_TREE: 5400 / valid * 100}
    return write_cog(tmp_path / "dominant_species.tif", data), shares


# -- the class-map quicklook ------------------------------------------------------------------------------------------
def test_quicklook_renders_a_png_with_the_classes_present(class_map, tmp_path):
    raster, shares = class_map
    out = tmp_path / "quicklook.png"
    info = render_quicklook(raster, out, NAMES, class_colours(len(NAMES)), "Dominant species", "2024 · zero-shot",
                            extra_classes={NOT_TREE: ("not tree", NOT_TREE_RGBA)})
    assert isinstance(info, QuicklookInfo) and info.path == out
    image = read_png(out)
    (width, height), texts = png_chunks(out)
    assert (width, height) == (info.width_px, info.height_px) == (image.shape[1], image.shape[0])
    assert 400 <= width <= 2500 and 300 <= height <= 2500
    assert info.read_shape == info.source_shape == (200, 300)

    legend = legend_of(out)
    assert [e["value"] for e in legend] == [0, 1, 3, NOT_TREE]  # exactly the classes present, by index; extras last
    assert [e["name"] for e in legend] == ["Fagus sylvatica", "Picea abies", "Pinus sylvestris", "not tree"]
    for entry in legend:
        assert entry["share_pct"] == pytest.approx(shares[entry["value"]], abs=0.5)
        assert entry["shown"]
    assert [e["kind"] for e in legend] == ["class", "class", "class", "extra"]
    assert legend[-1]["rgba"] == list(NOT_TREE_RGBA)
    assert info.legend == ("Fagus sylvatica 50.0 %", "Picea abies 30.0 %", "Pinus sylvestris 10.0 %",
                           "not tree 10.0 %")
    meta = json.loads(texts["treemap:quicklook"])
    assert meta["crs"].startswith("EPSG:32632")
    assert meta["nodata_pct"] == pytest.approx(10.0, abs=0.01)
    assert meta["north"] == "true" and abs(meta["convergence_deg"]) < 3
    assert texts["Title"] == "Dominant species"

    # the colours are drawn: Fagus' colour covers a good part of the picture, nodata stays white (transparent)
    rgb = (image[..., :3] * 255).round().astype(int)
    fagus = np.array(class_colours(len(NAMES))[0][:3])
    assert (np.abs(rgb - fagus).sum(axis=-1) == 0).mean() > 0.1
    only_final_files(tmp_path, {"dominant_species.tif", "quicklook.png"})


def test_scale_bar_is_a_round_length_below_the_map_width(class_map, tmp_path):
    raster, _ = class_map
    info = render_quicklook(raster, tmp_path / "q.png", NAMES, class_colours(5), "t")
    width_m = 300 * 10.0
    assert 0 < info.scale_bar_m < width_m
    mantissa = info.scale_bar_m / 10 ** math.floor(math.log10(info.scale_bar_m))
    assert round(mantissa, 9) in (1, 2, 5)
    assert 0.1 * width_m <= info.scale_bar_m <= 0.35 * width_m  # about a fifth of the map
    assert info.scale_bar_m == 500.0


@pytest.mark.parametrize("target, expected", [(600, 500), (2, 2), (140, 100), (160, 200), (3500, 5000),
                                              (0.3, 0.2), (20000, 20000), (7.5, 10)])
def test_nice_length(target, expected):
    assert nice_length(target) == pytest.approx(expected)


def test_nice_length_stays_below_the_limit_and_labels():
    assert nice_length(9.0, limit=10.0) == 5.0
    assert nice_length(2.0, limit=10.0) == 2.0
    assert length_label(500) == "500 m" and length_label(2000) == "2 km" and length_label(2.5) == "2.5 m"


def test_decimated_shape_keeps_the_aspect_within_bounds():
    assert decimated_shape(200, 300, 1600) == (200, 300)
    assert decimated_shape(4000, 6000, 500) == (333, 500)
    assert decimated_shape(100_000, 100_000, 1600) == (1600, 1600)
    assert decimated_shape(100_000, 3, 1600) == (1600, 1)
    with pytest.raises(QuicklookError):
        decimated_shape(10, 10, 0)


@pytest.mark.parametrize("max_pixels, read_shape", [(400, (267, 400)), (1600, (1067, 1600))])
def test_a_large_map_is_read_decimated_in_bounded_memory(tmp_path, max_pixels, read_shape):
    """6000 x 4000 px (24 MB as uint8, 96 MB as RGBA, 384 MB as matplotlib's float RGBA): the read is at most
    max_pixels on its longest side, and the render's allocations stay far below what the full map would take."""
    h, w = 4000, 6000
    data = np.empty((h, w), np.uint8)
    data[:, :3000] = 0
    data[:, 3000:4500] = 1
    data[:2000, 4500:] = 2
    data[2000:, 4500:] = 255
    raster = write_cog(tmp_path / "big.tif", data)
    del data
    small = write_cog(tmp_path / "small.tif", np.zeros((3, 3), np.uint8))
    render_quicklook(small, tmp_path / "warm.png", NAMES, class_colours(5), "warm-up")  # imports, font cache
    tracemalloc.start()
    try:
        info = render_quicklook(raster, tmp_path / "big.png", NAMES, class_colours(5), "big", max_pixels=max_pixels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.source_shape == (h, w)
    assert max(info.read_shape) <= max_pixels and info.read_shape == read_shape
    assert peak < 64 * 2**20, f"peak Python allocations {peak / 2**20:.1f} MiB"
    shares = {e["value"]: e["share_pct"] for e in legend_of(info.path)}
    assert shares == pytest.approx({0: 200 / 3.5, 1: 100 / 3.5, 2: 50 / 3.5}, abs=0.5)
    meta = json.loads(png_chunks(info.path)[1]["treemap:quicklook"])
    assert meta["read_shape"] == list(read_shape) and meta["source_shape"] == [h, w]


def test_all_nodata_still_renders_saying_no_data(tmp_path):
    raster = write_cog(tmp_path / "empty.tif", np.full((50, 80), 255, np.uint8))
    info = render_quicklook(raster, tmp_path / "empty.png", NAMES, class_colours(5), "Nothing here",
                            extra_classes={NOT_TREE: ("not tree", NOT_TREE_RGBA)})
    assert info.legend == ("no data",)
    assert legend_of(info.path) == []
    meta = json.loads(png_chunks(info.path)[1]["treemap:quicklook"])
    assert meta["valid_pixels"] == 0 and meta["nodata_pct"] == 100.0
    assert read_png(info.path).shape[:2] == (info.height_px, info.width_px)


def test_one_pixel_map(tmp_path):
    raster = write_cog(tmp_path / "one.tif", np.array([[2]], np.uint8))
    info = render_quicklook(raster, tmp_path / "one.png", NAMES, class_colours(5), "One pixel")
    assert info.legend == ("Quercus robur 100.0 %",)
    assert info.read_shape == (1, 1)
    assert 0 < info.scale_bar_m < 10.0
    assert read_png(info.path).shape[:2] == (info.height_px, info.width_px)


def test_non_ascii_names_render_without_missing_glyphs(tmp_path):
    names = ["Sorbus × thuringiaca", "Quercus ilex", "Ulmus glabra – Bergulme", "Pinus nigra subsp. salzmannii",
             "Æsculus hippocastanum (Rosskastanie)", "Castanea sativa « châtaignier »"]
    data = np.repeat(np.arange(6, dtype=np.uint8), 10)[None, :].repeat(20, axis=0)
    raster = write_cog(tmp_path / "utf8.tif", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        info = render_quicklook(raster, tmp_path / "utf8.png", names, class_colours(6),
                                "Espèces dominantes · Überblick", subtitle="Mai–Oktober 2024")
    assert [e["name"] for e in legend_of(info.path)] == names
    assert info.legend[0] == "Sorbus × thuringiaca 16.7 %"
    assert png_chunks(info.path)[1]["Title"] == "Espèces dominantes · Überblick"


def test_a_long_legend_is_capped_to_the_most_frequent_classes(tmp_path):
    # 30 classes; class i covers (i + 1) columns, so the 20 most frequent are 10..29
    widths = np.arange(1, 31)
    data = np.repeat(np.arange(30, dtype=np.uint8), widths)[None, :].repeat(10, axis=0)
    names = [f"Species number {i}" for i in range(30)]
    raster = write_cog(tmp_path / "many.tif", data)
    info = render_quicklook(raster, tmp_path / "many.png", names, class_colours(30), "Many")
    legend = legend_of(info.path)
    assert [e["value"] for e in legend] == list(range(30))  # the metadata lists every class present
    assert [e["value"] for e in legend if e["shown"]] == list(range(10, 30))
    assert len(info.legend) == 21 and info.legend[-1].startswith("… 10 more ")
    rest = widths[:10].sum() / widths.sum() * 100
    assert info.legend[-1] == f"… 10 more {rest:.1f} %"


def test_values_without_a_name_are_listed_as_class_n(tmp_path):
    data = np.zeros((10, 10), np.uint8)
    data[:, 5:] = 9
    raster = write_cog(tmp_path / "x.tif", data)
    info = render_quicklook(raster, tmp_path / "x.png", NAMES[:2], class_colours(2), "t")
    assert info.legend == ("Fagus sylvatica 50.0 %", "class 9 50.0 %")


def test_the_class_table_reads_back_from_a_product(tmp_path):
    colours = class_colours(3)
    raster = write_cog(tmp_path / "d.tif", np.zeros((4, 4), np.uint8),
                       tags={f"CLASS_{i}": n for i, n in enumerate(NAMES[:3])},
                       colormap={i: c for i, c in enumerate(colours)})
    names, table = read_class_table(raster)
    assert names == NAMES[:3] and table == colours


def test_the_png_replaces_an_old_one_atomically(class_map, tmp_path):
    raster, _ = class_map
    out = tmp_path / "q.png"
    out.write_bytes(b"old")
    render_quicklook(raster, out, NAMES, class_colours(5), "t")
    assert out.read_bytes()[:4] == b"\x89PNG"
    only_final_files(tmp_path, {"dominant_species.tif", "q.png"})


def test_errors_are_typed(class_map, tmp_path):
    raster, _ = class_map
    with pytest.raises(QuicklookNotFoundError) as missing:
        render_quicklook(tmp_path / "nope.tif", tmp_path / "q.png", NAMES, [], "t")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, TreemapError)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(QuicklookError, match="cannot read"):
        render_quicklook(tmp_path / "junk.tif", tmp_path / "q.png", NAMES, [], "t")
    floats = write_cog(tmp_path / "f.tif", np.zeros((5, 5), np.float32))
    with pytest.raises(QuicklookError, match="not a class map"):
        render_quicklook(floats, tmp_path / "q.png", NAMES, [], "t")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(WriteError):
        render_quicklook(raster, blocker / "q.png", NAMES, [], "t")
    assert not (tmp_path / "q.png").exists()


def test_no_global_matplotlib_state_changes(class_map, tmp_path):
    import matplotlib

    raster, _ = class_map
    before = dict(matplotlib.rcParams)
    render_quicklook(raster, tmp_path / "q.png", NAMES, class_colours(5), "t")
    assert dict(matplotlib.rcParams) == before


def test_the_north_arrow_points_to_true_north(tmp_path):
    """East of the zone's central meridian (x > 500 km) true north lies west of grid north, and vice versa; by
    about (longitude - central meridian) x sin(latitude): ~1.0 degree 100 km off the meridian at 48.7 N."""
    def convergence(x0: float) -> float:
        raster = tmp_path / f"c{int(x0)}.tif"
        with rasterio.open(raster, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8", nodata=255,
                           crs="EPSG:32632", transform=from_origin(x0, 5400000.0, 10.0, 10.0)) as dst:
            dst.write(np.zeros((1, 10, 10), np.uint8))
        info = render_quicklook(raster, tmp_path / f"c{int(x0)}.png", NAMES, class_colours(5), "t")
        meta = json.loads(png_chunks(info.path)[1]["treemap:quicklook"])
        assert meta["north"] == "true"
        return meta["convergence_deg"]

    east, west, centre = convergence(600000.0), convergence(400000.0), convergence(499950.0)
    assert -1.2 < east < -0.8 and 0.8 < west < 1.2 and abs(centre) < 0.01


def test_a_raster_without_crs_has_no_scale_bar_nor_north_arrow(tmp_path):
    raster = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning
        with rasterio.open(raster, "w", driver="GTiff", width=20, height=10, count=1, dtype="uint8",
                           nodata=255) as dst:
            dst.write(np.ones((1, 10, 20), np.uint8))
        info = render_quicklook(raster, tmp_path / "plain.png", NAMES, class_colours(5), "no CRS")
    assert info.scale_bar_m == 0.0 and info.legend == ("Picea abies 100.0 %",)
    meta = json.loads(png_chunks(info.path)[1]["treemap:quicklook"])
    assert meta["crs"] == "no CRS" and meta["north"] == "grid"


def test_nodata_none_takes_the_rasters_own(tmp_path):
    data = np.zeros((10, 10), np.uint8)
    data[:5] = 7
    raster = write_cog(tmp_path / "n.tif", data, nodata=7)
    info = render_quicklook(raster, tmp_path / "n.png", NAMES, class_colours(5), "t", nodata=None)
    assert info.legend == ("Fagus sylvatica 100.0 %",)
    assert json.loads(png_chunks(info.path)[1]["treemap:quicklook"])["nodata_pct"] == 50.0


# -- probability thumbnails -------------------------------------------------------------------------------------------
def test_probability_thumbnail(tmp_path):
    ramp = np.tile(np.linspace(0, 200, 120).round().astype(np.uint8), (80, 1))
    ramp[:10] = 255
    raster = write_cog(tmp_path / "species_probability.tif", np.stack([ramp, 200 - ramp]),
                       descriptions=["Fagus sylvatica", "Picea abies"])
    out = tmp_path / "fagus.png"
    info = render_probability_thumbnail(raster, 1, out, "Fagus sylvatica")
    (width, height), texts = png_chunks(out)
    assert (width, height) == (info.width_px, info.height_px)
    assert max(width, height) <= 512
    assert info.scale_bar_m == 0.0 and info.legend == ("Fagus sylvatica: probability 0-1",)
    stats = json.loads(texts["treemap:thumbnail"])
    assert stats["band"] == 1 and stats["min"] == 0.0 and stats["max"] == 1.0
    assert stats["valid_pixels"] == 70 * 120
    image = read_png(out)
    assert image.shape[:2] == (height, width)
    only_final_files(tmp_path, {"species_probability.tif", "fagus.png"})
    with pytest.raises(QuicklookError, match="no band 3"):
        render_probability_thumbnail(raster, 3, out, "x")


def test_probability_thumbnail_of_a_large_band_is_decimated(tmp_path):
    data = np.full((3000, 2000), 100, np.uint8)
    raster = write_cog(tmp_path / "p.tif", data)
    info = render_probability_thumbnail(raster, 1, tmp_path / "p.png", "big", max_pixels=256)
    assert max(info.read_shape) <= 256 and info.source_shape == (3000, 2000)
    assert max(info.width_px, info.height_px) <= 300
