"""Contrastive pretraining on CPU: official-format shards load, the loss falls, DDP over two gloo processes matches
one process with the same global batch, and a killed run resumed from its checkpoint ends with the weights of an
uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_helpers import TEXT, official_shard, tiny_recipe
from train.data import StreamBatches, compute_statistics
from train.geotreeclip import TrainingInterrupted, load_checkpoint, run
from train.loss import info_nce
from train.recipe import RecipeError, recipe_from_dict
from treemap.models import load_model
from treemap.shards import list_shards

REPO = Path(__file__).resolve().parents[2]

# A 2-process run reduces in another order than a 1-process run (gathered rows, gradient all-reduce, one thread per
# process): float32 rounding. Over 8 Adam steps the per-step losses agree to 1e-4 and every weight to 2e-4.
DDP_LOSS_TOL = 1e-4
DDP_WEIGHT_TOL = 2e-4


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path)
    return model.state_dict()


def test_official_format_shards_stream_in_train(tmp_path):
    """Shards written by hand in the official layout (float64 images, list-wrapped JSON) feed the trainer."""
    images = torch.rand(12, 10, 5, 5, dtype=torch.float64) * 0.3
    images[0] = float("nan")
    entries = [(str(1000 + i), images, TEXT if i % 2 else [TEXT], {"longitude": 8.0 + i, "latitude": 50.0})
               for i in range(8)]
    official_shard(tmp_path / "official-000000.tar", entries)
    shards = list_shards(tmp_path)
    stats = compute_statistics(shards, 8, (0.0, 1.0))
    assert stats["aux_min"][0] == 8.0 and stats["aux_max"][0] == 15.0
    batch = next(iter(StreamBatches(shards, [0, 1], 2, 2, seed=0, shuffle_buffer=0)))
    assert batch["images"].shape == (4, 12, 10, 5, 5) and batch["images"].dtype == torch.float32
    assert batch["prompts"][0] == "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica"
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tmp_path / "run", steps=2, batch_size=4))
    result = run(recipe)
    assert result.steps == 2 and result.model.exists()


def test_loss_falls(synthetic_shards, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(synthetic_shards, tmp_path / "run", steps=24, warmup_steps=3))
    result = run(recipe)
    curve = losses(tmp_path / "run")
    first = sum(curve[s] for s in (1, 2, 3)) / 3
    last = sum(curve[s] for s in (22, 23, 24)) / 3
    assert last < first - 0.5, curve
    model, card = load_model(result.model)
    assert card.normalisation == "fixed" and card.statistics["aux_min"][0] == -180.0
    assert "24 steps" in card.notes


def test_info_nce_is_symmetric_and_minimal_when_aligned():
    x = torch.nn.functional.one_hot(torch.arange(6), 8).float()
    assert info_nce(x, x, 0.07) < 1e-3
    shuffled = info_nce(x, x.roll(1, 0), 0.07)
    assert shuffled > 5 and torch.isclose(shuffled, info_nce(x.roll(1, 0), x, 0.07))


def test_kill_and_resume_equals_an_uninterrupted_run(synthetic_shards, tmp_path):
    config = tiny_recipe(synthetic_shards, tmp_path / "whole", steps=9, checkpoint_every=3, month_dropout=0.2,
                         aux_dropout=0.3)
    run(recipe_from_dict(config))
    config["output"]["dir"] = str(tmp_path / "killed")
    with pytest.raises(TrainingInterrupted):
        run(recipe_from_dict(config), stop_after=5)  # dies after step 5: the last checkpoint is step 3
    state = load_checkpoint(tmp_path / "killed" / "checkpoints" / "step-000000003.pt")  # weights_only load
    assert state["step"] == 3 and set(state["positions"]) == {"0", "1"}
    result = run(recipe_from_dict(config))
    assert result.steps == 9
    a, b = weights(tmp_path / "whole" / "model.safetensors"), weights(result.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")  # each step logged once, same values


def test_resume_refuses_another_recipe(synthetic_shards, tmp_path):
    config = tiny_recipe(synthetic_shards, tmp_path / "run", steps=2, checkpoint_every=1)
    run(recipe_from_dict(config))
    config["train"]["batch_size"] = 32
    with pytest.raises(RecipeError, match="different recipe"):
        run(recipe_from_dict(config))


def test_two_gloo_processes_match_one(synthetic_shards, tmp_path):
    config = tiny_recipe(synthetic_shards, tmp_path / "one")
    run(recipe_from_dict(config))  # one process, this one
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train.geotreeclip", "--recipe", str(recipe), "--out", str(tmp_path / "two")]
    proc = subprocess.run(two, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == list(range(1, 9)) and sorted(b) == sorted(a)
    assert max(abs(a[s] - b[s]) for s in a) < DDP_LOSS_TOL, (a, b)
    wa, wb = weights(tmp_path / "one" / "model.safetensors"), weights(tmp_path / "two" / "model.safetensors")
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) < DDP_WEIGHT_TOL
    start = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2


def test_recipes_in_the_repository_are_valid():
    from train.recipe import load_recipe

    for path in sorted((REPO / "recipes").glob("pretrain-*.yaml")):
        recipe = load_recipe(path)
        assert recipe.data.streams >= 1
    paper = load_recipe(REPO / "recipes" / "pretrain-geotreeclip-6m.yaml")
    assert paper.model.size == "full" and paper.train.epochs == 25 and paper.train.temperature == 0.07


def test_aux_dropout_hides_layers_but_never_the_position():
    from train.data import drop_aux

    aux = torch.arange(27, dtype=torch.float32).repeat(4000, 1)
    aux[:, 20] = float("nan")  # a variable without a layer stays missing
    out = drop_aux(aux, 0.3, seed=(0, 5, 1, "aux"))
    assert torch.equal(out[:, :2], aux[:, :2])  # longitude and latitude are always given
    hidden = torch.isnan(out[:, 2:]) & ~torch.isnan(aux[:, 2:])
    assert abs(hidden.float().mean().item() - 0.3 * 24 / 25) < 0.01
    kept = ~torch.isnan(out)
    assert torch.equal(out[kept], aux[kept])  # what is not hidden is untouched
    assert torch.equal(torch.isnan(drop_aux(aux, 0.3, seed=(0, 5, 1, "aux"))), torch.isnan(out))  # repeatable
    assert not torch.equal(torch.isnan(drop_aux(aux, 0.3, seed=(0, 6, 1, "aux"))), torch.isnan(out))
