"""Extraction options (treemap.extract_options): extraction recipes with their shorthands and paths relative to the
recipe; every mistake is one line naming the field."""

import pytest

from treemap.errors import RecipeError
from treemap.extract_options import AuxSource, Compositing, load_recipe as load_extract_recipe


def test_extract_recipe_shorthands_and_paths(tmp_path):
    path = tmp_path / "extract.yaml"
    path.write_text("extract:\n  compositing: paper\n  shard_size: 10\n  taxonomy: species.csv\n"
                    "  auxiliary:\n    elevation: dem.tif\n    bio01: {path: /data/bio.tif, band: 2, scale: 0.1}\n")
    options = load_extract_recipe(path)
    assert options.compositing == Compositing(scl_mask=False, max_cloud=30.0) and options.shard_size == 10
    assert options.taxonomy == str(tmp_path / "species.csv")
    assert options.auxiliary == {"elevation": AuxSource(str(tmp_path / "dem.tif")),
                                 "bio01": AuxSource("/data/bio.tif", 2, 0.1)}


@pytest.mark.parametrize("text, message", [
    ("compositing: cloudy\n", "field 'compositing': must be 'treemap', 'paper' or a mapping"),
    ("compositing: {max_cloud: 130}\n", "field 'compositing.max_cloud': must be a number between 0 and 100"),
    ("shard_size: 0\n", "field 'shard_size': must be an integer >= 1 (got 0)"),
    ("window: 64\n", "unknown key 'window' (did you mean 'window_px'?)"),
    ("auxiliary:\n  elevation: {path: dem.tif, band: 0}\n", "field 'auxiliary.elevation.band': must be an integer"),
    ("auxiliary:\n  longitude: lon.tif\n", "unknown auxiliary variables ['longitude']"),
    ("default_year: 1999\n", "field 'default_year': must be an integer between 2015 and 2100 or null"),
])
def test_extract_recipe_errors(tmp_path, text, message):
    path = tmp_path / "extract.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_extract_recipe(path)
    assert str(info.value).startswith(f"recipe {path}: ") and message in str(info.value)
