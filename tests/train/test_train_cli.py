"""`treemap train NAME` is `python -m train.MODULE`: one parser, one behaviour, the same results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from treemap.models import GeoTreeCLIPConfig, ModelCard, random_model, save_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = random_model(GeoTreeCLIPConfig.tiny(vision_layers=1, text_layers=1), seed=3)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return save_model(model, ModelCard.for_model(model), path)


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_treemap_train_evaluate_equals_python_m_train_evaluate(model_file, synthetic_shards, species_csv, tmp_path):
    common = ["--model", model_file, "--shards", synthetic_shards, "--species", species_csv, "--batch-size", 64,
              "--device", "cpu"]
    via_treemap = _run("-m", "treemap", "train", "evaluate", *common, "--out", tmp_path / "a.json")
    via_module = _run("-m", "train.evaluate", *common, "--out", tmp_path / "b.json")
    assert via_treemap.returncode == 0, via_treemap.stderr
    assert via_module.returncode == 0, via_module.stderr
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a == b and a["samples"] == 192 and a["candidates"] == 4
    assert via_treemap.stdout == via_module.stdout and "| zero-shot | all | 192 |" in via_treemap.stdout


def test_a_failing_train_program_fails_the_same_way(model_file, tmp_path):
    args = ["--model", model_file, "--shards", tmp_path / "none"]
    via_treemap = _run("-m", "treemap", "train", "evaluate", *args)
    via_module = _run("-m", "train.evaluate", *args)
    assert via_treemap.returncode == via_module.returncode == 2
    assert via_treemap.stdout == via_module.stdout == ""
    line = f"error: no shards at {tmp_path / 'none'}"
    assert via_treemap.stderr.strip().splitlines()[-1].startswith(f"treemap train evaluate: {line}")
    assert via_module.stderr.strip().splitlines()[-1].startswith(f"python -m train.evaluate: {line}")


def test_evaluate_takes_demo_like_predict(synthetic_shards, tmp_path, capsys):
    """--model demo and --species demo mean the shipped demo model and species list, as in predict."""
    from train.evaluate import main

    assert main(["--model", "demo", "--species", "demo", "--shards", str(synthetic_shards), "--device", "cpu",
                 "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"].endswith("demo-tiny.safetensors") and report["candidates"] == 10
    assert report["species_list"].endswith("demo.csv")
    assert main(["--model", "demo", "--shards", str(synthetic_shards), "--device", "tpu"]) == 2
    assert "unknown --device 'tpu'" in capsys.readouterr().err
