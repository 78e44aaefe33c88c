"""Bad input at the command line: one line on stderr, a non-zero exit, no traceback, no product files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
PRODUCTS = ("species_probability.tif", "dominant_species.tif")
GOOD_AOI = {"type": "Polygon", "coordinates": [[[9.0, 50.0], [9.01, 50.0], [9.01, 50.01], [9.0, 50.01], [9.0, 50.0]]]}


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_clean_failure(proc, out_dir: Path | None, fragment: str):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0], proc.stderr
    assert proc.stdout == ""
    if out_dir is not None:
        for name in PRODUCTS:
            assert not (out_dir / name).exists()


@pytest.fixture
def aoi_file(tmp_path):
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(GOOD_AOI))
    return path


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("treemap, version")
    out = run_cli("--help").stdout
    for command in ("predict", "phenology", "search", "extract", "fewshot", "model", "demo", "train"):
        assert command in out


def test_missing_aoi(tmp_path):
    proc = run_cli("predict", "--aoi", tmp_path / "nope.geojson", "--catalog", "demo", "--out", tmp_path / "o")
    assert_clean_failure(proc, tmp_path / "o", "AOI file not found")


def test_unreadable_aoi(tmp_path):
    bad = tmp_path / "aoi.geojson"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    proc = run_cli("predict", "--aoi", bad, "--catalog", "demo", "--out", tmp_path / "o")
    assert_clean_failure(proc, tmp_path / "o", "cannot read AOI")


def test_invalid_geojson(tmp_path):
    bad = tmp_path / "aoi.geojson"
    bad.write_text('{"type": "Polygon", "coordinates": [[[9, 50], [9.1, 50]')
    proc = run_cli("predict", "--aoi", bad, "--catalog", "demo", "--out", tmp_path / "o")
    assert_clean_failure(proc, tmp_path / "o", "invalid JSON")


def test_not_a_polygon(tmp_path):
    bad = tmp_path / "aoi.geojson"
    bad.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": {"type": "Point", "coordinates": [9, 50]}}))
    proc = run_cli("predict", "--aoi", bad, "--catalog", "demo", "--out", tmp_path / "o")
    assert_clean_failure(proc, tmp_path / "o", "not a Polygon")


def test_start_after_end(tmp_path, aoi_file):
    proc = run_cli("predict", "--aoi", aoi_file, "--catalog", "demo", "--out", tmp_path / "o",
                   "--start", "2022-06-01", "--end", "2022-01-01")
    assert_clean_failure(proc, tmp_path / "o", "is after --end")


def test_unknown_catalog(tmp_path, aoi_file):
    proc = run_cli("predict", "--aoi", aoi_file, "--catalog", "no-such-catalog", "--out", tmp_path / "o")
    assert_clean_failure(proc, tmp_path / "o", "unknown catalog")


def test_unwritable_out(tmp_path, aoi_file):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli("predict", "--aoi", aoi_file, "--catalog", DATA / "stac-items" /
                   "planetarycomputer_sentinel-2-l2a.json", "--out", blocker / "sub")
    assert_clean_failure(proc, None, "cannot write to output folder")


def test_empty_intersection_with_catalog(tmp_path, aoi_file):
    # real Planetary Computer items over New Zealand's sub-Antarctic; the AOI is in Germany
    proc = run_cli("predict", "--aoi", aoi_file, "--catalog", DATA / "stac-items" /
                   "planetarycomputer_sentinel-2-l2a.json", "--out", tmp_path / "o", "--year", "2019")
    assert_clean_failure(proc, tmp_path / "o", "no Sentinel-2 L2A scenes")


def test_bad_date_format(tmp_path, aoi_file):
    proc = run_cli("predict", "--aoi", aoi_file, "--catalog", "demo", "--start", "2022-13-01")
    assert proc.returncode == 2
    assert_clean_failure(proc, None, "treemap: error: --start 2022-13-01 is not a date like 2022-06-30")
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, as every other user mistake


@pytest.mark.parametrize("device, fragment", [("bogus", "unknown --device 'bogus'"),
                                              ("cuda:x", "unknown --device 'cuda:x'"),
                                              ("tpu", "unknown --device 'tpu'")])
def test_bad_device_is_one_line(aoi_file, tmp_path, device, fragment):
    proc = run_cli("predict", "--aoi", aoi_file, "--catalog", "demo", "--out", tmp_path / "o", "--device", device)
    assert proc.returncode == 2
    assert_clean_failure(proc, tmp_path / "o", fragment)
    assert "this machine has: cpu" in proc.stderr


def test_cuda_without_cuda_names_the_devices(aoi_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for command in (["predict", "--aoi", aoi_file, "--catalog", "demo", "--out", tmp_path / "o"],
                    ["fewshot", "--points", aoi_file, "--model", "demo", "--out", tmp_path / "h.safetensors"]):
        proc = run_cli(*command, "--device", "cuda")
        assert proc.returncode == 2
        assert_clean_failure(proc, tmp_path / "o", "CUDA is not available on this machine (it has: cpu")


def test_demo_refuses_a_negative_seed(tmp_path):
    proc = run_cli("demo", "--seed", "-1", "--out", tmp_path / "w")
    assert proc.returncode == 2
    assert_clean_failure(proc, None, "-1")
    assert not (tmp_path / "w").exists()
