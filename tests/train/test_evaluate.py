"""`python -m train.evaluate`: zero-shot top-1/top-5 at three levels, categories, few-shot, JSON + Markdown."""

from __future__ import annotations

import json

import pytest
import torch

from train.evaluate import accuracy, main, split_shots
from treemap.models import GeoTreeCLIPConfig, ModelCard, random_model, save_model
from treemap.taxonomy import SpeciesList, Taxon


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = random_model(GeoTreeCLIPConfig.tiny(vision_layers=1, text_layers=1), seed=1)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return save_model(model, ModelCard.for_model(model), path)


def test_genus_and_family_follow_the_predicted_species():
    taxa = (Taxon("D", "Fagaceae", "Fagus", "Fagus sylvatica"), Taxon("D", "Fagaceae", "Quercus", "Quercus robur"),
            Taxon("D", "Fagaceae", "Quercus", "Quercus petraea"), Taxon("E", "Pinaceae", "Pinus", "Pinus nigra"))
    species = SpeciesList(taxa)
    ranked = torch.tensor([[2, 0, 1, 3], [0, 3, 1, 2], [3, 1, 0, 2]])
    truth = [taxa[1], taxa[1], taxa[0]]
    r = accuracy(ranked, truth, species)
    assert r["species"] == {"top1": 0.0, "top5": 1.0}
    assert r["genus"]["top1"] == pytest.approx(1 / 3)  # Quercus petraea predicted for a Quercus robur
    assert r["family"]["top1"] == pytest.approx(2 / 3)  # Pinus for a Fagus: wrong family


def test_shots_are_per_species_and_seeded():
    from train_helpers import synthetic_sample

    g = torch.Generator().manual_seed(0)
    samples = [synthetic_sample(f"k{i}", i % 4, g) for i in range(20)]
    support, query = split_shots(samples, 3, seed=5)
    assert len(support) == 12 and len(query) == 8
    assert [s.key for s in split_shots(samples, 3, seed=5)[0]] == [s.key for s in support]


def test_report_and_table(model_file, synthetic_shards, species_csv, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--model", str(model_file), "--shards", str(synthetic_shards), "--species", str(species_csv),
                 "--few-shot", "1", "--ft-epochs", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    zs = report["zero_shot"]
    assert zs["all"]["n"] == 192 and report["candidates"] == 4 and zs["not_in_list"] == 0
    assert {"Frequent", "Common", "Rare"} <= set(zs)
    assert zs["Frequent"]["n"] == 96 and zs["Rare"]["n"] == 48
    for level in ("species", "genus", "family"):
        assert 0 <= zs["all"][level]["top1"] <= zs["all"][level]["top5"] == 1.0  # 4 candidates: top-5 holds all
    assert zs["all"]["genus"]["top1"] >= zs["all"]["species"]["top1"]
    shot = report["few_shot"]["1"]
    assert shot["support"] == 4 and shot["query"] == 188 and shot["fine_tuned"]["all"]["n"] == 188
    table = capsys.readouterr().out
    assert "| zero-shot | Rare | 48 |" in table and "| 1-shot fine-tuned | all | 188 |" in table
