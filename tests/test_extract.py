"""`extract_points` on the small demo world: official-format shards, the predict compositing, auxiliary rasters,
bad input reported per point or as one error, resumability."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from datetime import date

import numpy as np
import pytest
import rasterio
import torch
from pyproj import Transformer
from rasterio.transform import from_origin

from train.demo_model import sample_points
from treemap.extract import ExtractError, ExtractOptions, AuxSource, PointsError, extract_points, read_points
from treemap.models import AUX_VARIABLES

HEADER = ["sample_id", "longitude", "latitude", "year", "level0", "level1_family", "level2_genus", "level3_species"]
N_GOOD = 24


@pytest.fixture(scope="module")
def points_csv(small_world, tmp_path_factory):
    """Good tree points of the small world, then the bad cases: outside every scene, a year without scenes, a row
    with unparseable coordinates and one with an empty species."""
    folder = tmp_path_factory.mktemp("points")
    path = sample_points(small_world, N_GOOD, seed=3, out=folder / "points.csv")
    rows = list(csv.reader(path.open()))
    first = rows[1]
    rows += [
        ["outside", "20.0", "50.0", "2022", *first[4:]],
        ["y2019", first[1], first[2], "2019", *first[4:]],
        ["badcoord", "east", first[2], "2022", *first[4:]],
        ["nospecies", first[1], first[2], "2022", *first[4:7], ""],
    ]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


@pytest.fixture(scope="module")
def aux_rasters(small_world, tmp_path_factory):
    """An elevation raster (value = 100 + column + 1000 * row, in EPSG:4326) and an unreadable 'slope' raster."""
    folder = tmp_path_factory.mktemp("aux")
    s = small_world.spec
    tr = Transformer.from_crs(s.epsg, 4326, always_xy=True)
    west, north = tr.transform(s.x_min - 500, s.y_max + 500)
    east, south = tr.transform(s.x_min + s.width_px * 10 + 500, s.y_max - s.height_px * 10 - 500)
    h, w = 40, 60
    data = (100 + np.arange(w)[None, :] + 1000 * np.arange(h)[:, None]).astype("float32")
    transform = from_origin(west, north, (east - west) / w, (north - south) / h)
    elevation = folder / "elevation.tif"
    with rasterio.open(elevation, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32",
                       crs="EPSG:4326", transform=transform, nodata=-9999) as dst:
        dst.write(data, 1)
    slope = folder / "slope.tif"
    slope.write_bytes(b"this is not a GeoTIFF")
    return {"elevation": elevation, "slope": slope, "transform": transform, "data": data}


@pytest.fixture(scope="module")
def extracted(small_world, points_csv, aux_rasters, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    options = ExtractOptions(shard_size=10, auxiliary={"elevation": AuxSource(str(aux_rasters["elevation"])),
                                                       "slope": AuxSource(str(aux_rasters["slope"]))})
    result = extract_points(points_csv, out, small_world.catalog, options=options)
    return result, options


def plain_samples(paths):
    """Read shards with tarfile + torch.load(weights_only=True) + json only."""
    out = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                value = torch.load(io.BytesIO(data), weights_only=True) if ext == "images.pth" else json.loads(data)
                out.setdefault(key, {})[ext] = value
    return out


def test_shards_load_with_a_plain_reader(extracted, points_csv):
    result, _ = extracted
    samples = plain_samples(result.shards)
    good = {r["sample_id"]: r for r in csv.DictReader(points_csv.open()) if r["sample_id"].isdigit()}
    assert set(samples) == set(good) and result.written == N_GOOD
    assert len(result.shards) == 3  # 24 points, 10 per shard
    for key, parts in samples.items():
        images, text, aux = parts["images.pth"], parts["text.json"], parts["auxiliary.json"]
        assert images.dtype == torch.float32 and images.shape == (12, 10, 5, 5)
        present = ~torch.isnan(images).flatten(1).all(1)
        assert present.sum() >= 6  # the demo world has clear days in most months
        assert not torch.isnan(images[present]).any()  # present months are complete, missing months all-NaN
        assert 0.0 < float(images[present].mean()) < 0.6
        assert text == {"level0": good[key]["level0"], "level1_family": good[key]["level1_family"],
                        "level2_genus": good[key]["level2_genus"], "level3_species": good[key]["level3_species"]}
        assert list(aux) == list(AUX_VARIABLES)
        # the centre of the 10 m pixel holding the point (what predict gives the model there): within 7.1 m
        assert aux["longitude"] == pytest.approx(float(good[key]["longitude"]), abs=1.1e-4)
        assert aux["latitude"] == pytest.approx(float(good[key]["latitude"]), abs=0.7e-4)
        assert aux["slope"] is None and aux["bio01"] is None


def test_auxiliary_values_come_from_the_raster(extracted, aux_rasters, small_world):
    """The raster is linear in its column and row (100 + col + 1000 row), so its bilinear interpolation at the
    pixel centre is that linear function at the centre's fractional position in the raster."""
    result, _ = extracted
    inverse = ~aux_rasters["transform"]
    to_ll = Transformer.from_crs(small_world.spec.epsg, 4326, always_xy=True)
    to_utm = Transformer.from_crs(4326, small_world.spec.epsg, always_xy=True)
    for parts in plain_samples(result.shards).values():
        aux = parts["auxiliary.json"]
        x, y = to_utm.transform(aux["longitude"], aux["latitude"])
        lon, lat = to_ll.transform(np.floor(x / 10) * 10 + 5, np.floor(y / 10) * 10 + 5)  # exact centre
        col, row = inverse * (lon, lat)
        assert aux["elevation"] == pytest.approx(100 + (col - 0.5) + 1000 * (row - 0.5), abs=0.01)


def test_bad_input_is_reported_per_point(extracted):
    result, _ = extracted
    report = json.loads(result.report.read_text())
    assert report["written"] == N_GOOD and report["skipped"] == 4
    reasons = {p["key"]: (p["reason"], p["message"]) for p in report["skipped_points"]}
    assert reasons["outside"][0] == "no_scenes"
    assert reasons["y2019"][0] == "no_scenes" and "2019" in reasons["y2019"][1]
    assert reasons["badcoord"][0] == "bad_row" and reasons["nospecies"][0] == "bad_row"
    assert "level3_species" in reasons["nospecies"][1]
    assert "slope" in report["auxiliary_errors"] and "elevation" not in report["auxiliary_errors"]


def test_patches_are_the_predict_composites(extracted, small_world):
    """A sample's patch equals the 5 x 5 neighbourhood `treemap predict` feeds the model at that pixel."""
    from treemap.composite import monthly_composites
    from treemap.cube import TileCube
    from treemap.grid import Tile, lonlat_bbox
    from treemap.patches import pixel_patches
    from treemap.stac import Query, open_catalog

    result, _ = extracted
    key, parts = sorted(plain_samples(result.shards[:1]).items())[0]
    aux = parts["auxiliary.json"]
    epsg = small_world.spec.epsg
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(aux["longitude"], aux["latitude"])
    x0, y0 = np.floor(x / 10) * 10, np.floor(y / 10) * 10
    tile = Tile(0, 0, epsg, 10.0, 2, (x0 - 10, y0 - 10, x0 + 20, y0 + 20), (0, 0, 3, 3))  # the pixel + 1 around
    catalog = open_catalog(str(small_world.catalog))
    # January to April only (a month's composite depends on its own scenes alone): a quarter of the reads.
    scenes = catalog.search(Query(lonlat_bbox(tile.read_bounds, epsg), date(2022, 1, 1), date(2022, 4, 30)))
    composites, _ = monthly_composites(TileCube(scenes, tile))
    expected = torch.from_numpy(pixel_patches(composites, 2, slice(1, 2))[1])  # centre of the 3 x 3 core
    assert not torch.isnan(expected[:4]).all()
    assert torch.allclose(parts["images.pth"][:4], expected[:4], equal_nan=True)


def test_rerun_skips_finished_shards(extracted, small_world, points_csv):
    result, options = extracted
    stamps = {p: p.stat().st_mtime_ns for p in result.shards}
    content = {p: p.read_bytes() for p in result.shards}
    again = extract_points(points_csv, result.out, small_world.catalog, options=options)
    assert again.shards == result.shards and again.written == result.written
    assert {p: p.stat().st_mtime_ns for p in again.shards} == stamps  # nothing rewritten
    # A lost shard is rebuilt identically.
    lost = result.shards[1]
    lost.unlink()
    lost.with_suffix(".json").unlink()
    extract_points(points_csv, result.out, small_world.catalog, options=options)
    assert lost.read_bytes() == content[lost]


def test_another_extraction_in_the_same_folder_is_refused(extracted, small_world, points_csv):
    result, options = extracted
    with pytest.raises(ExtractError, match="another extraction"):
        extract_points(points_csv, result.out, small_world.catalog, options=ExtractOptions(shard_size=5))


def test_missing_columns_are_one_clear_error(tmp_path, small_world):
    path = tmp_path / "gbif.csv"
    path.write_text("gbifID\tdecimalLongitude\tdecimalLatitude\tyear\tfamily\tgenus\tspecies\n"
                    "1\t8.96\t50.03\t2022\tFagaceae\tFagus\tFagus sylvatica\n")
    with pytest.raises(PointsError, match=r"lacks column\(s\) level0 \(or give a taxonomy list"):
        extract_points(path, tmp_path / "out", small_world.catalog)
    assert not (tmp_path / "out").exists()
    with pytest.raises(PointsError, match="does not exist"):
        read_points(tmp_path / "nope.csv")


def test_gbif_columns_with_a_taxonomy_list(tmp_path):
    taxonomy = tmp_path / "species.csv"
    taxonomy.write_text("level0,level1_family,level2_genus,level3_species\n"
                        "Deciduous Broadleaf,Fagaceae,Fagus,Fagus sylvatica\n")
    path = tmp_path / "gbif.csv"
    path.write_text("gbifID\tdecimalLongitude\tdecimalLatitude\tyear\tfamily\tgenus\tspecies\n"
                    "4011.0\t8.96\t50.03\t2022\tFagaceae\tFagus\tFagus sylvatica\n"
                    "4012\t8.97\t50.03\t\tFagaceae\tFagus\tFagus sylvatica\n")
    points, skipped = read_points(path, ExtractOptions(taxonomy=str(taxonomy)))
    assert [p.key for p in points] == ["4011"] and dict(points[0].text)["level0"] == "Deciduous Broadleaf"
    assert skipped[0].reason == "bad_row" and "year" in skipped[0].message
