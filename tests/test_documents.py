"""User documents (treemap.documents): every way a JSON, GeoJSON, YAML or CSV file can fail is one line naming the
file, raised as the caller's error class; and the bad inputs people really hand over give one line and exit code
2 at the command line."""

import json
import os
import struct
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from treemap.aoi import aoi_from_geojson, read_aoi
from treemap.documents import check_file, read_csv_rows, read_json, read_text, read_yaml, resolve_path
from treemap.errors import (AOIError, AOINotFoundError, PointsError, RecipeError, RecipeNotFoundError,
                            SpeciesListError, SpeciesListNotFoundError)
from treemap.points import read_points
from treemap.taxonomy import load_species_list

DATA = Path(__file__).resolve().parent / "data"
SQUARE = {"type": "Polygon", "coordinates": [[[9.0, 50.0], [9.01, 50.0], [9.01, 50.01], [9.0, 50.01], [9.0, 50.0]]]}
BOWTIE = {"type": "Polygon", "coordinates": [[[9, 50], [9.2, 50.1], [9.2, 50], [9, 50.1], [9, 50]]]}
SPECIES_HEADER = "level0,level1_family,level2_genus,level3_species\n"


def shapefile_bytes() -> bytes:
    """The first 100 bytes of an ESRI shapefile (file code 9994, version 1000, polygon type) and a record."""
    header = struct.pack(">7i", 9994, 0, 0, 0, 0, 0, 86) + struct.pack("<2i4d4d", 1000, 5, 9, 50, 9.1, 50.1, 0, 0,
                                                                        0, 0)
    return header + struct.pack(">2i", 1, 48) + b"\x05\x00\x00\x00" + b"\x00" * 92


def one_line(message: str) -> str:
    assert "\n" not in message
    return message


# -- files ---------------------------------------------------------------------------------------------------------
def test_missing_file_is_the_callers_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(SpeciesListNotFoundError) as info:
        read_text(tmp_path / "nope.csv", what="species list", error=SpeciesListError)
    assert isinstance(info.value, SpeciesListError) and isinstance(info.value, FileNotFoundError)
    assert str(info.value) == f"species list not found: {tmp_path / 'nope.csv'} does not exist"
    with pytest.raises(RecipeNotFoundError, match="does not exist"):
        check_file(tmp_path / "nope.yaml", what="recipe", error=RecipeError)


def test_a_folder_is_named(tmp_path):
    with pytest.raises(AOIError, match=f"AOI file {tmp_path} is a folder, not a GeoJSON file"):
        read_json(tmp_path, what="AOI file", kind="GeoJSON", error=AOIError)
    with pytest.raises(PointsError, match="is a folder, not a CSV file"):
        check_file(tmp_path, what="points file", kind="CSV", error=PointsError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_no_permission(tmp_path):
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0)
    with pytest.raises(AOIError, match="cannot read AOI file .*: permission denied"):
        read_json(path, what="AOI file", error=AOIError)


@pytest.mark.parametrize("data, fragment", [
    (shapefile_bytes(), "not GeoJSON: it looks like a shapefile (.shp); convert it, e.g. ogr2ogr -f GeoJSON"),
    (b"PK\x03\x04\x14\x00rest", "not GeoJSON: it looks like a ZIP archive"),
    (b"SQLite format 3\x00...", "it looks like an SQLite database (a GeoPackage?)"),
    (b'{"type": "Polygon"\x00}', "not GeoJSON: it looks like binary data"),
    (b'{"name": "Z\xfcrich"}', "not GeoJSON: not UTF-8 text (byte 0xfc at offset 11; save it as UTF-8)"),
])
def test_binary_or_foreign_bytes_are_not_geojson(tmp_path, data, fragment):
    path = tmp_path / "aoi.geojson"
    path.write_bytes(data)
    with pytest.raises(AOIError) as info:
        read_aoi(path)
    assert one_line(str(info.value)).startswith(f"cannot read AOI file {path}: ")
    assert fragment in str(info.value)


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "aoi.geojson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SQUARE).encode())
    assert read_aoi(path).bounds[0] == pytest.approx(9.0)


@pytest.mark.parametrize("name, text, reader, message", [
    ("s.json", '{\n  "band_min": [1, 2,\n}\n', read_json, r"cannot read statistics file .*s.json: invalid JSON at "
                                                             r"line 3 column 1: "),
    ("s.json", "  \n", read_json, "cannot read statistics file .*: the file is empty"),
    ("s.json", "[1, 2]", partial(read_json, expect=dict), r"statistics file .*s.json: expected a mapping at the top "
                                                          r"level, found a list"),
    ("r.yaml", "train:\n  lr: 1\n  lr: 2\n", read_yaml, r"invalid YAML at line 3 column 3: the key 'lr' appears twice"),
    ("r.yaml", "a: [1, 2\nb: 3\n", read_yaml, r"cannot read statistics file .*r.yaml: invalid YAML at line 2 column 2"),
    ("r.yaml", "- a\n- b\n", read_yaml, "expected a mapping at the top level, found a list"),
])
def test_syntax_errors_have_line_and_column(tmp_path, name, text, reader, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        reader(path, what="statistics file", error=RecipeError)


def test_documents_of_the_expected_kind(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    assert read_json(path, what="points file", error=PointsError, expect=list) == [1, 2]
    path = tmp_path / "r.yaml"
    path.write_text("# only a comment\n")
    assert read_yaml(path, what="recipe", error=RecipeError) == {}
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")  # a merge key may be overridden
    assert read_yaml(path, what="recipe", error=RecipeError)["other"] == {"x": 1, "y": 3}


def test_csv_delimiters_and_ragged_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("a;b;c\n1;2;3\n\n4;5;6\n")
    assert read_csv_rows(path, what="species list", error=SpeciesListError) == (
        ["a", "b", "c"], [{"a": "1", "b": "2", "c": "3"}, {"a": "4", "b": "5", "c": "6"}])
    path.write_text("a\tb\n1\t2\n")
    assert read_csv_rows(path, what="points file", error=PointsError)[1] == [{"a": "1", "b": "2"}]
    path.write_text("a,b,c\n1,2,3\n\n4,5\n")
    with pytest.raises(SpeciesListError, match=r"species list .*s.csv: row 2 \(line 4\) has 2 values, the header "
                                                r"has 3 columns"):
        read_csv_rows(path, what="species list", error=SpeciesListError)
    path.write_text("a,b\n1,2,3\n")
    with pytest.raises(SpeciesListError, match=r"row 1 \(line 2\) has 3 values, the header has 2 columns"):
        read_csv_rows(path, what="species list", error=SpeciesListError)
    header, rows = read_csv_rows(path, what="points file", error=PointsError, ragged="keep")
    assert rows == [{"a": "1", "b": "2", None: ["3"]}]
    path.write_text("a,b\n1," + "x" * 200_000 + "\n")
    with pytest.raises(PointsError, match="cannot read points file .*: line 2: field larger than field limit"):
        read_csv_rows(path, what="points file", error=PointsError)


def test_resolve_path():
    base = Path("/data/recipes")
    assert resolve_path("shards", base) == "/data/recipes/shards"
    assert resolve_path("/abs/x", base) == "/abs/x"
    assert resolve_path("s3://bucket/x", base) == "s3://bucket/x"


# -- the documents treemap reads -------------------------------------------------------------------------------------
def test_species_list_short_row_names_the_row(tmp_path):
    path = tmp_path / "species.csv"
    path.write_text(SPECIES_HEADER + "broadleaf,Fagaceae,Fagus,Fagus sylvatica\nbroadleaf,Fagaceae\n")
    with pytest.raises(SpeciesListError) as info:
        load_species_list(path)
    assert one_line(str(info.value)) == f"species list {path}: row 2 (line 3) has 2 values, the header has 4 columns"


def test_species_list_missing_column_lists_the_header(tmp_path):
    path = tmp_path / "species.csv"
    path.write_text("genus,species\nFagus,Fagus sylvatica\n")
    with pytest.raises(SpeciesListError, match="has no 'level0' column; it has genus, species"):
        load_species_list(path)


def test_points_short_row_is_a_skipped_row(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("longitude,latitude,year,level0,level1_family,level2_genus,level3_species\n"
                    "9.1,50.1,2022,broadleaf,Fagaceae,Fagus,Fagus sylvatica\n9.2,50.2\n")
    points, skipped = read_points(path)
    assert len(points) == 1 and skipped[0].row == 2 and skipped[0].reason == "bad_row"
    assert skipped[0].message == "2 values for the 7 columns of the header"


def test_geometry_collection_without_geometries():
    for geometries in (None, [], 5):
        with pytest.raises(AOIError, match="GeometryCollection has no geometries"):
            aoi_from_geojson({"type": "GeometryCollection", "geometries": geometries}, "a.geojson")


def test_self_intersecting_polygon_is_invalid_not_empty():
    with pytest.raises(AOIError) as info:
        aoi_from_geojson(BOWTIE, "a.geojson")
    assert "empty" not in str(info.value)
    assert str(info.value).startswith("a.geojson: the AOI polygon is not valid: it is self-intersecting at lon 9.1, "
                                      "lat 50.05")
    collection = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": g} for g in
                                                            (SQUARE, BOWTIE)]}
    with pytest.raises(AOIError, match=r"a.geojson \(feature 2\): the AOI polygon is not valid: it is self-inter"):
        aoi_from_geojson(collection, "a.geojson")  # each part is checked before the union (GEOS would raise)


def test_degenerate_polygon_has_no_area():
    line = {"type": "Polygon", "coordinates": [[[9, 50], [9.1, 50], [9.2, 50], [9, 50]]]}
    with pytest.raises(AOIError, match="the AOI polygon has no area"):
        aoi_from_geojson(line, "a.geojson")
    with pytest.raises(AOIError, match="the AOI polygon is empty"):
        aoi_from_geojson({"type": "Polygon", "coordinates": []}, "a.geojson")


def test_missing_aoi_is_caught_as_aoi_error_and_file_not_found(tmp_path):
    with pytest.raises(AOINotFoundError) as info:
        read_aoi(tmp_path / "nope.geojson")
    assert isinstance(info.value, AOIError) and isinstance(info.value, FileNotFoundError)
    assert "AOI file not found" in str(info.value)


# -- at the command line ---------------------------------------------------------------------------------------------
def treemap(*args):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_exit_2(proc, fragment: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    return lines[0]


@pytest.mark.parametrize("name, content, fragment", [
    ("collection.geojson", json.dumps({"type": "GeometryCollection", "geometries": None}),
     "GeometryCollection has no geometries"),
    ("bowtie.geojson", json.dumps(BOWTIE), "is not valid: it is self-intersecting"),
    ("aoi.shp", shapefile_bytes(), "not GeoJSON: a shapefile (by its name); convert it, e.g. ogr2ogr -f GeoJSON "
                                   "-t_srs EPSG:4326 aoi.geojson"),
    ("outline.shp", b"x", "not GeoJSON: a shapefile (by its name)"),  # the name decides, whatever the bytes
    ("aoi.gpkg", b"SQLite format 3\x00" + bytes(100), "not GeoJSON: a GeoPackage (by its name)"),
    ("aoi.geojson", shapefile_bytes(), "not GeoJSON: it looks like a shapefile (.shp); convert it, e.g. ogr2ogr -f "
                                       "GeoJSON -t_srs EPSG:4326 aoi-wgs84.geojson"),
])
def test_bad_aoi_files_at_the_command_line(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = assert_one_line_exit_2(treemap("predict", "--aoi", path, "--catalog", "demo", "--out", tmp_path / "o"),
                                  fragment)
    assert str(path) in line and "empty" not in line and "utf-8" not in line.lower().replace("utf-8 text", "")
    assert not (tmp_path / "o" / "species_probability.tif").exists()


def test_species_list_with_a_short_row_at_the_command_line(tmp_path):
    species = tmp_path / "species.csv"
    species.write_text(SPECIES_HEADER + "broadleaf,Fagaceae,Fagus,Fagus sylvatica\nconifer,Pinaceae,Pinus\n")
    aoi = tmp_path / "aoi.geojson"  # inside the Planetary Computer test items (sub-Antarctic New Zealand, 2019)
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[173.8, 58.0], [173.81, 58.0], [173.81, 58.01],
                                                                   [173.8, 58.01], [173.8, 58.0]]]}))
    proc = treemap("predict", "--aoi", aoi, "--catalog", DATA / "stac-items" / "planetarycomputer_sentinel-2-l2a.json",
                   "--year", 2019, "--model", "demo", "--species", species, "--out", tmp_path / "o")
    assert_one_line_exit_2(proc, f"species list {species}: row 2 (line 3) has 3 values, the header has 4 columns")
