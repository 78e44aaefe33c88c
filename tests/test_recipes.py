"""Recipes: one typed validator (treemap.recipes.validate, files read by treemap.documents.read_recipe) for the option
defaults of predict and phenology and for training recipes; every mistake is one line naming the field. Extraction
recipes: tests/test_extract_options.py."""

import dataclasses
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import pytest

from train.recipe import load_recipe as load_training_recipe, recipe_from_dict
from treemap.cli import cli
from treemap.cli_words import recipe_schema as _recipe_schema
from treemap.documents import read_recipe
from treemap.errors import RecipeError, RecipeNotFoundError
from treemap.recipes import FieldError, Ge, Interval, describe, validate

REPO = Path(__file__).resolve().parents[1]
GOOD_AOI = {"type": "Polygon", "coordinates": [[[9.0, 50.0], [9.01, 50.0], [9.01, 50.01], [9.0, 50.01], [9.0, 50.0]]]}


@dataclasses.dataclass(frozen=True)
class Inner:
    size: Annotated[int, Ge(16)] = 512
    kind: Literal["evi", "ndvi"] = "evi"


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    cloud: Annotated[float, Interval(ge=0, le=100)] = 100.0
    when: date | None = None
    names: tuple[str, ...] = ()
    limit: int | None = 5


def check(data):
    return validate(data, Outer, source="recipe r.yaml")


# -- the loader ------------------------------------------------------------------------------------------------------
def test_valid_documents_become_frozen_dataclasses():
    out = check({"inner": {"size": 64}, "cloud": 30, "when": "2022-06-01", "names": ["a", "b"]})
    assert out == Outer(Inner(64), 30.0, date(2022, 6, 1), ("a", "b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.cloud = 1  # type: ignore[misc]


@pytest.mark.parametrize("data, message", [
    ({"inner": {"size": 8}}, "recipe r.yaml: field 'inner.size': must be an integer >= 16 (got 8)"),
    ({"inner": {"size": "big"}}, "field 'inner.size': must be an integer >= 16 (got 'big')"),
    ({"inner": {"size": True}}, "field 'inner.size': must be an integer >= 16 (got True)"),
    ({"inner": {"kind": "savi"}}, "field 'inner.kind': must be one of 'evi', 'ndvi' (got 'savi')"),
    ({"cloud": 101}, "field 'cloud': must be a number between 0 and 100 (got 101)"),
    ({"when": 20220601}, "field 'when': must be a date (YYYY-MM-DD) or null (got 20220601)"),
    ({"names": "a"}, "field 'names': must be a list of strings (got 'a')"),
    ({"names": ["a", 3]}, "field 'names[1]': must be a string (got 3)"),
    ({"inner": 5}, "field 'inner': must be a mapping (got 5)"),
    ({"iner": {}}, "recipe r.yaml: unknown key 'iner' (did you mean 'inner'?)"),
    ({"inner": {"colour": 1}}, "unknown key 'inner.colour' (known: size, kind)"),
    ({"cloud": 101, "inner": {"size": 8}}, "(and 1 more problem)"),
    ([1, 2], "recipe r.yaml: expected a mapping at the top level, found a list"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(RecipeError) as info:
        check(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_null_means_the_default_unless_the_field_takes_null():
    assert check({"cloud": None, "inner": None, "limit": None}) == Outer(limit=None)


def test_prepare_and_finish_hooks_raise_field_errors():
    def finish(value):
        raise FieldError("inner.size", "must be a power of two")

    with pytest.raises(RecipeError, match="recipe r.yaml: field 'inner.size': must be a power of two"):
        validate({}, Outer, source="recipe r.yaml", finish=finish)


def test_describe():
    assert describe(Annotated[int, Interval(ge=16, le=8192)]) == "an integer between 16 and 8192"
    assert describe(tuple[Annotated[float, Interval(ge=0, le=1)], Annotated[float, Interval(ge=0, le=1)]]) == \
        "a list of 2 numbers between 0 and 1"
    assert describe(int | None) == "an integer or null"


def test_read_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeNotFoundError, match="recipe not found"):
        read_recipe(tmp_path / "none.yaml", Outer)
    path = tmp_path / "r.yaml"
    path.write_text("cloud: 1\ncloud: 2\n")
    with pytest.raises(RecipeError, match="the key 'cloud' appears twice"):
        read_recipe(path, Outer)
    path.write_text("inner:\n  size: 8\n")
    with pytest.raises(RecipeError, match=f"recipe {path}: field 'inner.size'"):
        read_recipe(path, Outer)


# -- predict and phenology option defaults ---------------------------------------------------------------------------
def test_option_schemas_follow_the_options():
    fields = {f.name: f.type for f in dataclasses.fields(_recipe_schema(cli.commands["predict"]))}
    assert describe(fields["tile_size"]) == "an integer between 16 and 8192"
    assert describe(fields["max_cloud"]) == "a number between 0 and 100"
    assert fields["start"] is date and fields["keep_work"] is bool and fields["aoi"] is str
    assert "recipe" not in fields
    phenology = {f.name: f.type for f in dataclasses.fields(_recipe_schema(cli.commands["phenology"]))}
    assert describe(phenology["index"]) == "one of 'evi', 'ndvi'"


def test_repository_option_recipes_are_valid():
    recipe = read_recipe(REPO / "recipes" / "demo-predict.yaml", _recipe_schema(cli.commands["predict"]),
                         prepare=lambda d: {k.replace("-", "_"): v for k, v in d.items()})
    assert recipe.tile_size == 256 and recipe.catalog == "demo"


def treemap(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def one_error_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_option_recipe_at_the_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tile-size: 8\n")
    line = one_error_line(treemap("predict", "--recipe", recipe, "--aoi", tmp_path / "a.geojson"))
    assert line == f"treemap: error: recipe {recipe}: field 'tile_size': must be an integer between 16 and 8192 " \
                   f"(got 8)"
    recipe.write_text("index: ndvi\nyear: 2022\n")
    line = one_error_line(treemap("predict", "--recipe", recipe, "--aoi", tmp_path / "a.geojson"))
    assert f"recipe {recipe}: unknown key 'index'" in line
    recipe.write_text("index: savi\n")
    line = one_error_line(treemap("phenology", "--recipe", recipe, "--aoi", tmp_path / "a.geojson", "--year", 2022))
    assert "field 'index': must be one of 'evi', 'ndvi' (got 'savi')" in line


def test_option_recipe_gives_defaults_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"aoi: {tmp_path / 'from-recipe.geojson'}\ncatalog: demo\njson: true\n")
    line = one_error_line(treemap("predict", "--recipe", recipe))
    assert f"AOI file not found: {tmp_path / 'from-recipe.geojson'}" in line
    aoi = tmp_path / "given.geojson"
    aoi.write_text(json.dumps({"type": "Point", "coordinates": [9, 50]}))
    line = one_error_line(treemap("predict", "--recipe", recipe, "--aoi", aoi))
    assert f"{aoi}: geometry type Point is not a Polygon" in line


# -- training recipes ------------------------------------------------------------------------------------------------
def test_repository_training_recipes_are_valid():
    for path in sorted((REPO / "recipes").glob("pretrain-*.yaml")):
        recipe = load_training_recipe(path)
        assert recipe.source == str(path) and all(Path(s).is_absolute() for s in recipe.data.shards)


TRAINING = {"data": {"shards": "shards"}, "train": {"steps": 10}}


@pytest.mark.parametrize("change, message", [
    ({"train": {"steps": 10, "lr": 0}}, "field 'train.lr': must be a number > 0 (got 0)"),
    ({"train": {"steps": 10, "epochs": 3}}, "field 'train.steps': give exactly one of train.epochs and train.steps"),
    ({"train": {"steps": 10, "batch_size": 250}, "data": {"shards": "s", "streams": 3}},
     "field 'train.batch_size': must be a multiple of data.streams (3), not 250"),
    ({"train": {"steps": 10, "precision": "fp16"}}, "field 'train.precision': must be one of 'auto', 'fp32', 'bf16'"),
    ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
    ({"source": "x"}, "unknown key 'source'"),
    ({"data": {"shards": "s", "normalisation": {"band_quantiles": [0.5]}}},
     "field 'data.normalisation.band_quantiles': must be a list of 2 numbers between 0 and 1 (got [0.5])"),
    ({"data": {"shards": []}}, "field 'data.shards': is empty"),
])
def test_training_recipe_errors(change, message):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({**TRAINING, **change}, base=Path("/r"), source="r.yaml")
    assert str(info.value).startswith("recipe r.yaml: ") and message in str(info.value)


def test_training_recipe_values_paths_and_overrides(tmp_path):
    recipe = recipe_from_dict({**TRAINING, "train": {"steps": 10, "lr": "1e-3", "grad_clip": None},
                               "data": {"shards": "s", "exclude_species": None}, "output": None},
                              base=Path("/r"))
    assert recipe.train.lr == 1e-3 and recipe.train.grad_clip is None and recipe.data.exclude_species == ()
    assert recipe.data.shards == ("/r/s",) and recipe.output.dir == "/r/runs/geotreeclip"
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  shards: [s3://bucket/shards]\ntrain:\n")
    recipe = load_training_recipe(path, {"train.steps": 5, "data.normalisation.samples": 10})
    assert recipe.train.steps == 5 and recipe.data.normalisation.samples == 10
    assert recipe.data.shards == ("s3://bucket/shards",)
    with pytest.raises(RecipeError, match="field 'train.steps': must be an integer >= 1"):
        load_training_recipe(path, {"train.steps": -1})


def test_recipe_to_json_is_unchanged_for_checkpoints():
    """Resuming compares the recipe's JSON with the checkpoint's: its shape must not depend on the loader."""
    recipe = recipe_from_dict({**TRAINING, "data": {"shards": "s", "normalisation": {"aux_ranges": {
        "longitude": [-180, 180]}}}}, base=Path("/r"))
    data = recipe.to_json()
    assert data["data"]["normalisation"] == {"samples": 20000, "band_quantiles": (0.001, 0.999),
                                             "aux_ranges": {"longitude": (-180.0, 180.0)}}
    assert data["data"]["shards"] == ("/r/s",) and data["source"] is None
