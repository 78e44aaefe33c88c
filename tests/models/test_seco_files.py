"""SeCo-Eco files (treemap.models.seco_files): safetensors round trip, foreign files refused, torchvision-layout
import (prefixes stripped, wrong channels/shapes/keys refused, pickles that run code refused)."""

from __future__ import annotations

import pytest
import torch

from seco_helpers import reflectance, tiny_seco
from treemap.errors import ModelError, OutputError
from treemap.models.seco_files import import_resnet50, load_seco, save_seco
from treemap.models.seco_input import to_input
from treemap.models.seco_net import SecoConfig, random_seco


@pytest.fixture(scope="module")
def tiny():
    return tiny_seco()


def test_safetensors_round_trip_identical_outputs(tiny, tmp_path):
    path = save_seco(tiny, tmp_path / "seco.safetensors", notes="test")
    loaded = load_seco(path)
    assert loaded.config == tiny.config and loaded.stats == tiny.stats
    x = reflectance(seed=1)
    with torch.no_grad():
        a, b = tiny.eval()(to_input(x, tiny.stats)), loaded(to_input(x, loaded.stats))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(tiny.features(x), loaded.features(x))
    with pytest.raises(OutputError):
        save_seco(tiny, tmp_path / "seco.pth")


def test_load_seco_refuses_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(8, 9, 7, 7)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    for name in ("plain.safetensors", "junk.safetensors", "missing.safetensors"):
        with pytest.raises(ModelError) as excinfo:
            load_seco(tmp_path / name)
        assert "\n" not in str(excinfo.value)


def _backbone_outputs(model, seed=2):
    with torch.no_grad():
        return model.backbone.eval()(torch.randn(2, 9, 32, 32, generator=torch.Generator().manual_seed(seed)))


def test_importer_accepts_prefixed_torchvision_layouts(tmp_path):
    from safetensors.torch import save_file

    config = SecoConfig.tiny()
    source = random_seco(config, seed=11)
    state = source.backbone.state_dict()
    # a MoCo checkpoint: DataParallel + encoder_q prefixes, an MLP fc head, a key encoder and a queue
    moco = {f"module.encoder_q.{k}": v for k, v in state.items()}
    moco.update({"module.encoder_q.fc.0.weight": torch.zeros(4, config.feature_dim),
                 "module.encoder_k.conv1.weight": torch.zeros(1), "module.queue": torch.zeros(8, 4),
                 "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"state_dict": moco, "epoch": 3}, tmp_path / "moco.pth")
    save_file({f"backbone.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "bb.safetensors"))
    torch.save({f"model.{k}": v for k, v in state.items()} | {"model.fc.weight": torch.zeros(10, 64),
                                                               "model.fc.bias": torch.zeros(10)}, tmp_path / "m.pt")
    expected = _backbone_outputs(source)
    for name in ("moco.pth", "bb.safetensors", "m.pt"):
        imported = import_resnet50(tmp_path / name, config)
        assert torch.equal(_backbone_outputs(imported), expected), name


def test_importer_refuses_wrong_channels_shapes_and_keys(tmp_path):
    config = SecoConfig.tiny()
    state = random_seco(config).backbone.state_dict()
    rgb = random_seco(SecoConfig.tiny(in_channels=3)).backbone.state_dict()
    wide = random_seco(SecoConfig.tiny(widths=(8, 16, 16, 32))).backbone.state_dict()
    cases = {
        "rgb.pth": (rgb, "conv1.*3 input channels.*needs 9"),
        "wide.pth": (wide, "wrong shape"),
        "missing.pth": ({k: v for k, v in state.items() if not k.startswith("layer4.")}, "missing"),
        "extra.pth": ({**state, "decoder.weight": torch.zeros(2)}, "unexpected"),
        "not-tensors.pth": ({"conv1.weight": [1, 2]}, "not a state dict of tensors"),
    }
    for name, (obj, message) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ModelError, match=message) as excinfo:
            import_resnet50(tmp_path / name, config)
        assert excinfo.type is ModelError and "\n" not in str(excinfo.value)


MARKER_NAME = "pickle-ran-code"


def _leave_marker(path):
    with open(path, "w") as fh:
        fh.write("the checkpoint ran code")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_importer_refuses_pickles_that_run_code(tmp_path):
    marker = tmp_path / MARKER_NAME
    state = random_seco(SecoConfig.tiny()).backbone.state_dict()
    torch.save({"state_dict": state, "hook": RunsCode(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(ModelError, match="refused") as excinfo:
        import_resnet50(tmp_path / "evil.pth", SecoConfig.tiny())
    assert "\n" not in str(excinfo.value)
    assert not marker.exists()
