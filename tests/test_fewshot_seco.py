"""`treemap fewshot --encoder seco-eco` on the small demo world: a head on SeCo-Eco features of the labelled
points' cells, saved with the recipe of those features (the `seco_head` fixture). That a point's features equal its
cell in an embedding map is tested in test_embed_seco.py, mapping with the head in test_predict_seco.py."""

from __future__ import annotations

import subprocess
import sys

from treemap.heads import load_head


def _treemap(*args):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


def test_a_seco_head_is_fitted_and_saved_with_its_recipe(seco_head, seco_points, seco_model):
    proc, summary = seco_head
    _, n = seco_points
    assert proc.returncode == 0, proc.stderr
    assert summary["head"] == str(seco_model.with_name("seco.head-prototype.safetensors"))
    assert summary["samples"] + summary["skipped_points"] == n and summary["samples"] >= n - 2
    assert len(summary["species"]) == 10 and 0 <= summary["cv_top1"] <= 1
    head = load_head(summary["head"])
    assert head.embed_dim == 64 and head.encoder_name == "seco-eco"
    assert head.encoder == {"encoder": "seco-eco", "chip": 16, "stride": 8, "season": "mean", "index": "evi",
                            "min_valid": 0.5}


def test_seco_fewshot_mistakes_are_one_line(small_world, seco_model, seco_points, tmp_path):
    path, _ = seco_points
    for args, fragment in [(("--model", "demo"), "needs --model"),
                           (("--model", seco_model, "--season", "winter"), "--season"),
                           (("--model", seco_model, "--aux", tmp_path / "a.yaml"), "no auxiliary layers")]:
        proc = _treemap("fewshot", "--encoder", "seco-eco", "--points", path, "--catalog", small_world.catalog,
                        "--year", 2022, "--out", tmp_path / "h.safetensors", *args)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
        assert not (tmp_path / "h.safetensors").exists()
