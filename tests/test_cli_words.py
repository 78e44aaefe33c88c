"""One meaning per option name, one year range for every command, and `treemap train`: each mistake is one line on
stderr and exit code 2 (run as a user runs treemap: a subprocess)."""

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from test_cli import GOOD_AOI, assert_clean_failure, run_cli

DATA = Path(__file__).resolve().parent / "data"
ITEMS = DATA / "stac-items" / "planetarycomputer_sentinel-2-l2a.json"  # New Zealand's sub-Antarctic, 2019..
NEXT_YEAR = date.today().year + 1
ERA = f"is outside 2015..{NEXT_YEAR} (the Sentinel-2 era to next year)"
DATE_ERA = f"is outside 2015-01-01..{NEXT_YEAR}-12-31 (the Sentinel-2 era to next year)"


@pytest.fixture
def aoi_file(tmp_path):
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(GOOD_AOI))
    return path


def exit_2_one_line(proc, fragment: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert_clean_failure(proc, None, fragment)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no usage block, no hint
    return proc.stderr.strip()


# -- one year range ---------------------------------------------------------------------------------------------------
def _command(name: str, aoi: Path, tmp_path: Path) -> list:
    return {"predict": ["predict", "--aoi", aoi, "--catalog", ITEMS, "--out", tmp_path / "o"],
            "search": ["search", "--aoi", aoi, "--catalog", ITEMS],
            "phenology": ["phenology", "--aoi", aoi, "--catalog", ITEMS, "--out", tmp_path / "o"],
            "fewshot": ["fewshot", "--points", aoi, "--model", "demo", "--catalog", ITEMS,
                        "--out", tmp_path / "h.safetensors"]}[name]


@pytest.mark.parametrize("command", ["predict", "search", "phenology", "fewshot"])
@pytest.mark.parametrize("year", ["0", "2014", "10000", str(NEXT_YEAR + 1), "-5"])
def test_a_year_outside_the_era_is_one_line(command, year, aoi_file, tmp_path):
    proc = run_cli(*_command(command, aoi_file, tmp_path), "--year", year)
    line = exit_2_one_line(proc, f"--year {year} {ERA}")
    assert line == f"treemap: error: --year {year} {ERA}"
    assert not (tmp_path / "o").exists() and not (tmp_path / "h.safetensors").exists()


@pytest.mark.parametrize("command", ["predict", "search", "phenology", "fewshot"])
def test_a_year_that_is_not_a_number_is_one_line(command, aoi_file, tmp_path):
    exit_2_one_line(run_cli(*_command(command, aoi_file, tmp_path), "--year", "twenty"),
                    "--year twenty is not a year like 2022")


@pytest.mark.parametrize("command", ["predict", "search"])
@pytest.mark.parametrize("option, value", [("--start", "9999-06-01"), ("--start", "2014-12-31"),
                                           ("--end", "0001-01-01"), ("--end", f"{NEXT_YEAR + 1}-01-01")])
def test_a_date_outside_the_era_is_one_line(command, option, value, aoi_file, tmp_path):
    line = exit_2_one_line(run_cli(*_command(command, aoi_file, tmp_path), option, value), f"{option} {value}")
    assert line == f"treemap: error: {option} {value} {DATE_ERA}"


@pytest.mark.parametrize("value", ["2022-13-01", "2022-06", "June"])
def test_a_malformed_date_is_one_line(value, aoi_file, tmp_path):
    exit_2_one_line(run_cli(*_command("search", aoi_file, tmp_path), "--start", value),
                    f"--start {value} is not a date like 2022-06-30")


@pytest.mark.parametrize("year", ["2015", str(NEXT_YEAR)])
def test_the_ends_of_the_era_are_accepted(year, aoi_file, tmp_path):
    # the catalog has no scenes over the AOI: the year passed the check, the search ran
    exit_2_one_line(run_cli(*_command("search", aoi_file, tmp_path), "--year", year), "no Sentinel-2 L2A scenes")
    exit_2_one_line(run_cli(*_command("search", aoi_file, tmp_path), "--start", f"{year}-01-01",
                            "--end", f"{year}-12-31"), "no Sentinel-2 L2A scenes")


def test_no_scenes_says_where_the_aoi_is_and_hints_at_a_lat_lon_swap(tmp_path):
    """An AOI written lat, lon (here Frankfurt's, which lands in the Indian Ocean) finds nothing: the message says
    where the AOI's centre is, as lon and lat, and names the swap."""
    swapped = tmp_path / "swapped.geojson"
    swapped.write_text(json.dumps({"type": "Polygon", "coordinates": [[[50.0, 9.0], [50.0, 9.01], [50.01, 9.01],
                                                                       [50.01, 9.0], [50.0, 9.0]]]}))
    line = exit_2_one_line(run_cli("search", "--aoi", swapped, "--catalog", ITEMS, "--year", "2019"),
                           "no Sentinel-2 L2A scenes")
    assert "centre lon 50.0050, lat 9.0050" in line
    assert "the AOI may be written lat, lon: GeoJSON wants lon, lat" in line


def test_no_scenes_in_a_period_that_has_not_begun_says_so(aoi_file):
    line = exit_2_one_line(run_cli("search", "--aoi", aoi_file, "--catalog", ITEMS, "--year", str(NEXT_YEAR)),
                           "no Sentinel-2 L2A scenes")
    assert f"that period has not begun (today is {date.today()})" in line


def test_fewshot_names_a_missing_points_file_before_anything_else(tmp_path):
    # the demo model needs --out for its head; the missing points file is the first mistake to report
    line = exit_2_one_line(run_cli("fewshot", "--points", tmp_path / "nope.csv", "--model", "demo"),
                           "points file not found")
    assert str(tmp_path / "nope.csv") in line


def test_a_year_from_a_recipe_is_checked_too(aoi_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("year: 2014\n")
    exit_2_one_line(run_cli("predict", "--recipe", recipe, "--aoi", aoi_file),
                    f"field 'year': must be an integer between 2015 and {NEXT_YEAR} (got 2014)")
    recipe.write_text("start: 9999-06-01\n")
    exit_2_one_line(run_cli("predict", "--recipe", recipe, "--aoi", aoi_file),
                    f"--start 9999-06-01 (from --recipe) {DATE_ERA}")


def test_year_with_start_is_one_line(aoi_file, tmp_path):
    exit_2_one_line(run_cli(*_command("search", aoi_file, tmp_path), "--year", "2022", "--start", "2022-01-01"),
                    "--year cannot be combined with --start/--end")


@pytest.mark.parametrize("args, fragment", [
    (["predict", "--nope"], "No such option '--nope'"),
    (["phenology", "--aoi", "a.geojson"], "Missing option '--year'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["--bogus"], "No such option '--bogus'"),
    (["model", "import", "x.pth"], "Missing option '--out'"),
])
def test_every_usage_mistake_is_one_line(args, fragment):
    line = exit_2_one_line(run_cli(*args), fragment)
    assert line.startswith("treemap: error: ")


# -- fewshot --kind (was --head, which is predict's head FILE) --------------------------------------------------------
def test_fewshot_kind_is_named_kind(aoi_file, tmp_path):
    help_text = run_cli("fewshot", "--help").stdout
    assert "--kind [prototype|linear]" in help_text
    assert not any(line.strip().startswith("--head ") for line in help_text.splitlines())  # hidden
    assert "--head PATH" in run_cli("predict", "--help").stdout
    exit_2_one_line(run_cli(*_command("fewshot", aoi_file, tmp_path), "--kind", "cosine"),
                    "'cosine' is not one of 'prototype', 'linear'")


def test_fewshot_old_head_spelling_warns_for_one_release(aoi_file, tmp_path):
    missing = tmp_path / "none.geojson"
    proc = run_cli("fewshot", "--points", missing, "--model", "demo", "--catalog", ITEMS, "--head", "linear",
                   "--out", tmp_path / "h.safetensors")
    # accepted with a warning (which is no error line), then the run fails on its own mistake
    assert "fewshot --head linear is deprecated" in proc.stderr and "use --kind linear" in proc.stderr
    assert_clean_failure(proc, None, str(missing))
    assert proc.returncode == 2


@pytest.mark.parametrize("extra, kind", [([], "prototype"), (["--kind", "linear"], "linear"),
                                         (["--head", "linear"], "linear"), (["--kind", "prototype"], "prototype")])
def test_fewshot_kind_reaches_the_request(extra, kind, monkeypatch, tmp_path):
    from click.testing import CliRunner

    import treemap.fewshot
    from treemap.cli import cli

    seen = []

    class Fitted:
        head = tmp_path / "h.safetensors"

    monkeypatch.setattr(treemap.fewshot, "fit_from_points", lambda request: seen.append(request) or Fitted())
    result = CliRunner().invoke(cli, ["fewshot", "--points", "p.geojson", "--model", "demo", "--device", "cpu",
                                      *extra])
    assert result.exit_code == 0, result.output
    assert [r.kind for r in seen] == [kind]


@pytest.mark.parametrize("extra, fragment", [
    (["--head", "model.head-linear.safetensors"], "the head kind is now --kind prototype|linear"),
    (["--head", "linear", "--kind", "linear"], "fewshot takes --kind; leave out --head"),
])
def test_fewshot_head_mistakes_are_one_line(extra, fragment, aoi_file, tmp_path):
    exit_2_one_line(run_cli(*_command("fewshot", aoi_file, tmp_path), *extra), fragment)


# -- treemap train ----------------------------------------------------------------------------------------------------
TRAIN = {"geotreeclip": "train.geotreeclip", "evaluate": "train.evaluate", "seco-eco": "train.seco_eco",
         "probe": "train.probe", "demo-model": "train.demo_model",
         "sample": "train.sample"}


def test_train_help_lists_the_programs():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("Commands:")[1].splitlines()
    names = [line.split()[0] for line in listed if line.startswith("  ") and not line.startswith("   ")]
    assert names == sorted(TRAIN)
    assert all(len(line.split()) > 3 for line in listed if line.strip())  # each with its one-line description
    assert "train" in run_cli("--help").stdout


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_train_program_help_is_the_module_parser(name):
    proc = run_cli("train", name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: treemap train {name} ")
    direct = subprocess.run([sys.executable, "-m", TRAIN[name], "--help"], capture_output=True, text=True,
                            timeout=300)
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.startswith(f"usage: python -m {TRAIN[name]} ")
    options = lambda text: text.split("options:")[1].split()  # noqa: E731 -- the same options and help texts
    assert options(proc.stdout) == options(direct.stdout)


@pytest.mark.parametrize("args, fragment", [
    (["evaluate", "--model", "demo"], "the following arguments are required: --shards"),
    (["seco-eco", "--composites", "c.tif", "--out", "o", "--steps", "many"], "--steps: invalid int value"),
    (["demo-model", "--n-points", "lots"], "--n-points: invalid int value: 'lots'"),
    (["demo-model", "--points", "lots"], "--points: invalid int value: 'lots'"),
    (["geotreeclip", "--recipe", "r.yaml", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
])
def test_train_usage_mistakes_are_one_line(args, fragment):
    proc = run_cli("train", *args)
    assert proc.returncode == 2, proc.stderr
    assert_clean_failure(proc, None, fragment)
    assert proc.stderr.strip().splitlines()[0].startswith(f"treemap train {args[0]}: error: ")


def test_demo_model_points_became_n_points(capsys):
    from train.demo_model import build_parser

    assert build_parser().parse_args(["--n-points", "7"]).n_points == 7
    assert build_parser().parse_args([]).n_points == 4000
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args(["--points", "9"]).n_points == 9  # the old spelling, for one release
    assert "--points N is deprecated" in capsys.readouterr().err
    assert "--points" not in build_parser().format_help().replace("--n-points", "")


def test_importing_the_cli_stays_light():
    code = ("import sys, treemap.cli; heavy = [m for m in ('torch', 'train.geotreeclip', 'train.evaluate', "
            "'train.seco_eco', 'train.demo_model', 'dask', 'rasterio') if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("value", ["0", "-3", "big", "1.5"])
def test_a_bad_batch_size_is_one_line(value, aoi_file, tmp_path):
    exit_2_one_line(run_cli(*_command("predict", aoi_file, tmp_path), "--batch-size", value),
                    f"--batch-size {value} is not a batch size (a positive whole number, or auto)")
    assert not (tmp_path / "o").exists()


def test_batch_size_words():
    from treemap.cli_words import BATCH_SIZE
    from treemap.infer import inference_spec

    assert BATCH_SIZE.convert("auto", None, None) is None and BATCH_SIZE.convert("AUTO", None, None) is None
    assert BATCH_SIZE.convert("512", None, None) == 512
    assert inference_spec(None).auto_batch and inference_spec(None).batch_size == 4096
    assert not inference_spec(512).auto_batch and inference_spec(512).batch_size == 512
