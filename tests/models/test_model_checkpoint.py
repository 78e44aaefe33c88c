"""Model files: official .pth import, treemap .safetensors round trip, model cards, refusal of bad files."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from treemap.errors import ModelError, OutputError
from treemap.models import (
    AUX_VARIABLES, BANDS, GeoTreeCLIPConfig, ModelCard, demo_model, load_model, save_model, tokenize,
)
from treemap.models.checkpoint import CARD_KEY

PROMPTS = [
    "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica",
    "Evergreen Needleleaf / Pinaceae / Pinus / Pinus nigra",
]


def outputs(model, make_inputs, batch=4):
    images, aux = make_inputs(batch, seed=5)
    images[0, 1] = float("nan")
    aux[1, 3] = float("nan")
    with torch.no_grad():
        return model.encode_location(images, aux), model.encode_text(tokenize(PROMPTS))


def assert_same_outputs(a, b, make_inputs):
    for x, y in zip(outputs(a, make_inputs), outputs(b, make_inputs)):
        assert torch.equal(x, y)


def assert_one_line_model_error(excinfo):
    assert issubclass(excinfo.type, ModelError)  # ModelNotFoundError for a missing file
    assert "\n" not in str(excinfo.value) and str(excinfo.value)


def test_fake_official_checkpoint_loads_with_identical_outputs(full_model, make_inputs, tmp_path):
    path = tmp_path / "GGT_6M.pth"
    torch.save({"model_state_dict": full_model.state_dict()}, path)
    model, card = load_model(path)
    assert model.config == full_model.config  # sizes (and CLIP head counts) recovered from shapes
    assert card.normalisation == "batch" and card.statistics is None
    assert card.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (card.bands, card.aux_variables) == (BANDS, AUX_VARIABLES)
    assert_same_outputs(model, full_model, make_inputs)


def test_official_checkpoint_variants(tiny_model, make_inputs, tmp_path):
    state = tiny_model.state_dict()
    # Training checkpoints carry optimiser state too; DDP-wrapped saves prefix "module."; transformers >= 4.31
    # does not save the position ids.
    variant = {f"module.{k}": v for k, v in state.items() if not k.endswith("position_ids")}
    path = tmp_path / "latest_model_13.pth"
    torch.save({"epoch": 13, "model_state_dict": variant, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "train_loss": 0.5}, path)
    # Head counts are not in the tensor shapes: the tiny model's 4 heads must be given.
    model, _ = load_model(path, config=GeoTreeCLIPConfig.tiny())
    assert_same_outputs(model, tiny_model, make_inputs)
    inferred, _ = load_model(path)
    assert inferred.config.vision_heads == 1 and inferred.config.vision_hidden == 64


def test_safetensors_round_trip(tiny_model, make_inputs, tmp_path):
    card = ModelCard.for_model(tiny_model, species_lists=("GlobalGeoTree-10kEval-90",), source_sha256="ab" * 32,
                               notes="round trip")
    path = save_model(tiny_model, card, tmp_path / "tiny.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary file left behind
    model, loaded = load_model(path)
    assert loaded == card
    assert_same_outputs(model, tiny_model, make_inputs)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()[CARD_KEY])["notes"] == "round trip"
        assert set(fh.keys()) == set(tiny_model.state_dict())


def test_demo_model_round_trip_keeps_fixed_normalisation(make_inputs, tmp_path):
    model, card = demo_model()
    assert card.normalisation == "fixed" and model.config.normalisation == "fixed"
    # the shipped demo model's statistics are derived from its training shards: plausible reflectance ranges
    stats = card.statistics
    assert all(0.0 <= lo < hi <= 1.5 for lo, hi in zip(stats["band_min"], stats["band_max"]))
    assert all(lo < hi for lo, hi in zip(stats["aux_min"], stats["aux_max"]))
    again, _ = demo_model()
    assert_same_outputs(model, again, make_inputs)  # the same file, the same model
    loaded, loaded_card = load_model(save_model(model, card, tmp_path / "demo.safetensors"))
    assert loaded_card == card and loaded.config == model.config
    assert_same_outputs(loaded, model, make_inputs)


def test_save_model_takes_config_from_the_model(tiny_model, tmp_path):
    stale = ModelCard(config=GeoTreeCLIPConfig.full().to_dict(), normalisation="fixed")
    _, card = load_model(save_model(tiny_model, stale, tmp_path / "m.safetensors"))
    assert card.config == tiny_model.config.to_dict() and card.normalisation == "batch"


def test_save_model_refuses_other_suffixes(tiny_model, tmp_path):
    with pytest.raises(OutputError):
        save_model(tiny_model, ModelCard.for_model(tiny_model), tmp_path / "m.pth")
    with pytest.raises(OutputError):
        save_model(tiny_model, ModelCard.for_model(tiny_model), tmp_path / "missing-dir" / "m.safetensors")


def test_card_json_round_trip():
    _, card = demo_model()
    assert ModelCard.from_json(card.to_json()) == card
    with pytest.raises(ValueError):
        ModelCard.from_json(json.dumps({"config": {}, "colour": "green"}))


class NotATensor:
    def __init__(self):
        self.payload = "arbitrary object"


def test_pth_with_pickled_object_is_refused(tiny_model, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": tiny_model.state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(ModelError, match="refused") as excinfo:
        load_model(path)
    assert_one_line_model_error(excinfo)


@pytest.mark.parametrize("name, content", [
    ("notes.txt", b"just some text\nover two lines\n"),
    ("model.pth", b"this is not a checkpoint"),
    ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"),
    ("empty.safetensors", b""),
])
def test_non_checkpoints_raise_model_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError) as excinfo:
        load_model(path)
    assert_one_line_model_error(excinfo)


def test_missing_file_and_directory(tmp_path):
    for path in (tmp_path / "nope.safetensors", tmp_path):
        with pytest.raises(ModelError) as excinfo:
            load_model(path)
        assert_one_line_model_error(excinfo)


def test_wrong_keys_and_shapes(tiny_model, tmp_path):
    state = tiny_model.state_dict()
    cases = {
        "foreign.pth": {"model_state_dict": {"conv1.weight": torch.zeros(3, 3)}},
        "missing.pth": {"model_state_dict": {k: v for k, v in state.items() if not k.startswith("fusion.")}},
        "extra.pth": {"model_state_dict": {**state, "logit_scale": torch.tensor(4.6)}},
        "not-a-dict.pth": [torch.zeros(2)],
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ModelError) as excinfo:
            load_model(tmp_path / name, config=GeoTreeCLIPConfig.tiny())
        assert_one_line_model_error(excinfo)
    torch.save({"model_state_dict": state}, tmp_path / "tiny.pth")
    with pytest.raises(ModelError) as excinfo:  # sizes that do not fit the given config
        load_model(tmp_path / "tiny.pth", config=GeoTreeCLIPConfig.tiny(vision_mlp=96))
    assert_one_line_model_error(excinfo)


def test_safetensors_without_card_or_with_bad_card(tiny_model, tmp_path):
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={CARD_KEY: "{\"config\": {\"vision_hidden\": -1}}"})
    card = dataclasses.replace(ModelCard.for_model(tiny_model), config=GeoTreeCLIPConfig.full().to_dict())
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata={CARD_KEY: card.to_json()})
    demo, demo_card = demo_model()
    stats = {**demo_card.statistics, "band_max": [0.5] * 10}
    save_file({k: v.contiguous() for k, v in demo.state_dict().items()}, str(tmp_path / "stats.safetensors"),
              metadata={CARD_KEY: dataclasses.replace(demo_card, statistics=stats).to_json()})
    for name in ("bare", "bad", "mismatch", "stats"):
        with pytest.raises(ModelError) as excinfo:
            load_model(tmp_path / f"{name}.safetensors")
        assert_one_line_model_error(excinfo)
