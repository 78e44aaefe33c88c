"""Species lists (treemap.taxonomy): the loader refuses incomplete rows and contradictory duplicates with one line
naming the file, the row and its line; repeated identical rows collapse; names that do not begin with their genus
are a warning. And `treemap species` shows a list's taxonomy and colours.

(The CSV-level failures every user document shares -- a missing file, a short row, a missing column -- are tested
with the other documents in test_documents.py.)"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from treemap.errors import SpeciesListError
from treemap.styles import hex_colour, species_colours
from treemap.taxonomy import Taxon, demo_species_list, genus_matches, load_species_list, species_list_from

REPO = Path(__file__).resolve().parents[1]
CENTRAL_EUROPE = REPO / "examples" / "species" / "central-europe.csv"
GLOBALGEOTREE = Path("/work/shared/data/real/globalgeotree-10keval")
HEADER = "level0,level1_family,level2_genus,level3_species\n"
BEECH = "Deciduous Broadleaf,Fagaceae,Fagus,Fagus sylvatica\n"
PINE = "Evergreen Needleleaf,Pinaceae,Pinus,Pinus sylvestris\n"
SPRUCE = "Evergreen Needleleaf,Pinaceae,Picea,Picea abies\n"


def write(tmp_path, text: str, name: str = "species.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refusal(path: Path) -> str:
    with pytest.raises(SpeciesListError) as info:
        load_species_list(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- missing levels ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, what, column", [
    (",Fagaceae,Fagus,Fagus sylvatica", "leaf type", "level0"),
    ("Deciduous Broadleaf,,Fagus,Fagus sylvatica", "family", "level1_family"),
    ("Deciduous Broadleaf,Fagaceae,,Fagus sylvatica", "genus", "level2_genus"),
    ("Deciduous Broadleaf,Fagaceae,Fagus,", "species", "level3_species"),
    ("Deciduous Broadleaf,Fagaceae,Fagus,   ", "species", "level3_species"),  # blanks are empty
])
def test_a_row_with_a_missing_level_is_refused(tmp_path, row, what, column):
    path = write(tmp_path, HEADER + PINE + "\n" + SPRUCE + row + "\n")  # a blank line: row 3 is on line 5
    assert refusal(path) == (f"species list {path}: row 3 (line 5) has no {what} (empty {column}); every species "
                             f"needs its leaf type, family, genus and species")


def test_several_missing_levels_are_named_together(tmp_path):
    path = write(tmp_path, "leaf_type;family;genus;species\n;Fagaceae;;Fagus sylvatica\n")  # short names, ';'
    assert refusal(path) == (f"species list {path}: row 1 (line 2) has no leaf type or genus (empty leaf_type, "
                             f"genus); every species needs its leaf type, family, genus and species")


def test_line_numbers_count_quoted_line_breaks(tmp_path):
    path = write(tmp_path, HEADER + 'Deciduous Broadleaf,"Faga\nceae",Fagus,Fagus sylvatica\n'
                 + "Evergreen Needleleaf,Pinaceae,,Pinus sylvestris\n")
    assert refusal(path).startswith(f"species list {path}: row 2 (line 4) has no genus")


def test_empty_spreadsheet_rows_are_skipped(tmp_path):
    path = write(tmp_path, HEADER + BEECH + ",,,\n" + "  , ,,\n" + PINE)
    assert load_species_list(path).species == ("Fagus sylvatica", "Pinus sylvestris")


def test_other_columns_do_not_make_an_empty_row_a_species(tmp_path):
    path = write(tmp_path, "sample_id,level0,level1_family,level2_genus,level3_species\n1," + BEECH + "2,,,,\n")
    assert refusal(path).startswith(f"species list {path}: row 2 (line 3) has no leaf type or family or genus or "
                                    f"species")


# -- duplicates -------------------------------------------------------------------------------------------------------
def test_identical_duplicates_collapse_silently(tmp_path, caplog):
    occurrences = ("sample_id,level0,level1_family,level2_genus,level3_species,longitude,latitude\n"
                   f"1,{BEECH.strip()},8.1,50.1\n2,{PINE.strip()},8.2,50.2\n3,{BEECH.strip()},8.3,50.3\n"
                   f"4,{SPRUCE.strip()},8.4,50.4\n5,{PINE.strip()},8.5,50.5\n")
    path = write(tmp_path, occurrences)
    with caplog.at_level(logging.WARNING, logger="treemap"):
        species = load_species_list(path)
    assert species.species == ("Fagus sylvatica", "Pinus sylvestris", "Picea abies")  # first-seen order
    assert species.taxa[1] == Taxon("Evergreen Needleleaf", "Pinaceae", "Pinus", "Pinus sylvestris")
    assert caplog.records == []


def test_a_species_listed_again_with_another_family_is_refused(tmp_path):
    path = write(tmp_path, HEADER + BEECH + PINE + "\n" + "Deciduous Broadleaf,Betulaceae,Fagus,Fagus sylvatica\n")
    assert refusal(path) == (f"species list {path}: row 3 (line 5) lists Fagus sylvatica again with family "
                             f"'Betulaceae', but row 1 (line 2) has 'Fagaceae'; a species listed twice needs the "
                             f"same level1_family")


def test_a_conflict_names_every_level_that_differs(tmp_path):
    path = write(tmp_path, HEADER + PINE + BEECH + "Deciduous Needleleaf,Pinaceae,Larix,Pinus sylvestris\n")
    assert refusal(path) == (f"species list {path}: row 3 (line 4) lists Pinus sylvestris again with leaf type "
                             f"'Deciduous Needleleaf' and genus 'Larix', but row 1 (line 2) has 'Evergreen "
                             f"Needleleaf' and 'Pinus'; a species listed twice needs the same level0, level2_genus")


def test_surrounding_blanks_do_not_make_a_conflict(tmp_path):
    path = write(tmp_path, HEADER + BEECH + " Deciduous Broadleaf , Fagaceae,Fagus ,Fagus sylvatica \n")
    assert load_species_list(path).species == ("Fagus sylvatica",)


# -- species names and their genus ------------------------------------------------------------------------------------
@pytest.mark.parametrize("genus, species, matches", [
    ("Fagus", "Fagus sylvatica", True),
    ("Populus", "Populus x canescens", True),
    ("Populus", "Populus × canescens", True),
    ("Cupressocyparis", "x Cupressocyparis leylandii", True),
    ("× Cupressocyparis", "×Cupressocyparis leylandii", True),
    ("Pinus", "pinus sylvestris", True),
    ("Xanthocyparis", "Xanthocyparis nootkatensis", True),  # an X that is no hybrid sign
    ("Drimys", "Tasmannia lanceolata", False),  # a synonym under its accepted genus (GlobalGeoTree does this)
    ("Fagus", "Fagussylvatica", False),
])
def test_genus_matches(genus, species, matches):
    assert genus_matches(Taxon("Deciduous Broadleaf", "F", genus, species)) is matches


def test_a_name_that_does_not_begin_with_its_genus_is_a_warning(tmp_path, caplog):
    path = write(tmp_path, HEADER + BEECH + "Evergreen Broadleaf,Winteraceae,Drimys,Tasmannia lanceolata\n"
                 "Evergreen Broadleaf,Winteraceae,Drimys,Tasmannia lanceolata\n"
                 "Deciduous Broadleaf,Salicaceae,Populus,Populus x canescens\n")
    with caplog.at_level(logging.WARNING, logger="treemap"):
        species = load_species_list(path)
    assert len(species) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"species list {path}: row 2 (line 3): species Tasmannia lanceolata does not begin with its genus Drimys "
        f"(a synonym or a typo?)"]
    assert caplog.records[0].levelno == logging.WARNING


def test_many_odd_names_are_summed_up(tmp_path, caplog):
    rows = "".join(f"Deciduous Broadleaf,Fagaceae,Fagus,Quercus sp{i}\n" for i in range(8))
    path = write(tmp_path, HEADER + rows)
    with caplog.at_level(logging.WARNING, logger="treemap"):
        assert len(load_species_list(path)) == 8
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6 and messages[-1] == f"species list {path}: 3 more species do not begin with their genus"


# -- real lists -----------------------------------------------------------------------------------------------------
def test_the_shipped_lists_load_without_warnings(caplog):
    with caplog.at_level(logging.WARNING, logger="treemap"):
        assert len(demo_species_list()) == 10
        assert len(load_species_list(CENTRAL_EUROPE)) == 46
    assert caplog.records == []


@pytest.mark.skipif(not GLOBALGEOTREE.is_dir(), reason=f"GlobalGeoTree-10kEval lists not at {GLOBALGEOTREE}")
@pytest.mark.parametrize("n", [90, 300, 900])
def test_globalgeotree_occurrence_lists_load(n, caplog):
    """Thousands of occurrence rows collapse to the species; their few synonyms are warnings, not refusals."""
    with caplog.at_level(logging.WARNING, logger="treemap"):
        species = load_species_list(GLOBALGEOTREE / f"GlobalGeoTree-10kEval-{n}.csv")
    assert len(species) == n
    assert 1 <= len(caplog.records) <= 6


def test_species_list_from():
    assert species_list_from("demo").name == "demo"
    assert species_list_from(CENTRAL_EUROPE).name == "central-europe"


# -- treemap species --------------------------------------------------------------------------------------------------
def treemap(*args):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_species_command_prints_a_table():
    proc = treemap("species", CENTRAL_EUROPE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    species = load_species_list(CENTRAL_EUROPE)
    assert lines[0].split() == ["index", "leaf", "type", "family", "genus", "species", "colour"]
    assert len(lines) == 1 + len(species)
    colours = [hex_colour(c) for c in species_colours(species)]
    for i, (line, taxon) in enumerate(zip(lines[1:], species.taxa)):
        cells = line.split()
        assert cells[0] == str(i) and cells[-1] == colours[i]
        assert f"  {taxon.family}  " in line and f"  {taxon.genus}  " in line and f"  {taxon.species}  " in line
        assert line.index(f"  {taxon.genus}  ") == lines[0].index("  genus  ")  # aligned under its header
    assert "46 species, 30 genera, 16 families, 4 leaf types" in proc.stderr


def test_species_command_json_for_demo():
    proc = treemap("species", "demo", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    species = demo_species_list()
    assert doc["name"] == "demo" and doc["count"] == 10
    assert [s["species"] for s in doc["species"]] == list(species.species)
    assert [s["colour"] for s in doc["species"]] == [hex_colour(c) for c in species_colours(species)]
    assert set(doc["species"][0]) == {"index", "level0", "family", "genus", "species", "colour"}
    assert set(doc["groups"]) == {"genus", "family", "level0"}
    for level in ("genus", "family", "level0"):
        names, index = species.groups(level)
        assert [g["name"] for g in doc["groups"][level]] == list(names)
        for k, group in enumerate(doc["groups"][level]):
            assert group["members"] == [i for i in range(10) if index[i] == k]


@pytest.mark.parametrize("content, fragment", [
    (HEADER + BEECH + "Deciduous Broadleaf,Fagaceae,,Fagus orientalis\n",
     "row 2 (line 3) has no genus (empty level2_genus)"),
    (HEADER + BEECH + "Deciduous Broadleaf,Betulaceae,Fagus,Fagus sylvatica\n",
     "row 2 (line 3) lists Fagus sylvatica again with family 'Betulaceae', but row 1 (line 2) has 'Fagaceae'"),
    ("genus,species\nFagus,Fagus sylvatica\n", "has no 'level0' column"),
    (HEADER, "has no species"),
])
def test_species_command_refuses_a_bad_list_in_one_line(tmp_path, content, fragment):
    path = write(tmp_path, content)
    proc = treemap("species", path)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"treemap: error: species list {path}") and fragment in lines[0]


def test_species_command_missing_file_and_usage(tmp_path):
    proc = treemap("species", tmp_path / "nope.csv")
    assert proc.returncode == 2 and proc.stderr.strip() == (f"treemap: error: species list not found: "
                                                            f"{tmp_path / 'nope.csv'} does not exist")
    proc = treemap("species")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "LIST" in proc.stderr
