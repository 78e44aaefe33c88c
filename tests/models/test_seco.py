"""SeCo-Eco ResNet-50: sizes, torchvision names, input channels, safetensors files, torchvision-layout import."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from treemap.errors import ModelError, OutputError
from treemap.models.seco import (
    CHANNELS, ChannelStats, SecoConfig, SecoResNet, import_resnet50, load_seco, parameter_count, random_seco,
    raw_channels, save_seco, to_input,
)
from treemap.phenology import BAND_ORDER

# torchvision resnet50: 25,557,032 parameters; minus fc (2048 x 1000 + 1000), plus 6 more input channels on conv1
# (64 x 6 x 7 x 7).
EXPECTED_RESNET50_9CH = 25_557_032 - (2048 * 1000 + 1000) + 64 * 6 * 7 * 7  # 23,526,848


@pytest.fixture(scope="module")
def stats():
    return ChannelStats(tuple(0.1 * i for i in range(9)), tuple(0.5 + 0.1 * i for i in range(9)))


@pytest.fixture(scope="module")
def tiny(stats):
    return random_seco(SecoConfig.tiny(), stats, seed=3)


def reflectance(batch=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, len(BAND_ORDER), size, size, generator=g) * 0.4


def test_tiny_forward_shapes(tiny):
    x = to_input(reflectance(), tiny.stats)
    assert x.shape == (3, 9, 32, 32)
    with torch.no_grad():
        out = tiny(x)
        feats = tiny.features(reflectance())
    assert set(out) == {"agnostic", "season"}
    assert all(v.shape == (3, tiny.config.projection_dim) for v in out.values())
    assert feats.shape == (3, tiny.config.feature_dim)


def test_full_resnet50_matches_torchvision_sizes_and_names():
    backbone = SecoResNet(SecoConfig())
    assert parameter_count(backbone) == EXPECTED_RESNET50_9CH == 23_526_848
    state = backbone.state_dict()
    assert len(state) == 320 - 2  # torchvision resnet50's 320 entries without fc.weight / fc.bias
    assert tuple(state["conv1.weight"].shape) == (64, 9, 7, 7)
    for key in ("bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer3.5.conv3.weight", "layer4.2.bn3.num_batches_tracked"):
        assert key in state
    assert not any(k.startswith("fc.") for k in state)
    assert SecoConfig().feature_dim == 2048
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(1, 9, 64, 64)).shape == (1, 2048)


def test_to_input_channel_order_ndvi_and_nodata():
    x = torch.zeros(1, len(BAND_ORDER), 2, 2)
    for i in range(len(BAND_ORDER)):
        x[:, i] = 0.01 * (i + 1)
    out = to_input(x)
    expected = [0.01 * (BAND_ORDER.index(b) + 1) for b in CHANNELS[:-1]]
    assert torch.allclose(out[0, :8, 0, 0], torch.tensor(expected))
    red, nir = 0.01 * (BAND_ORDER.index("B04") + 1), 0.01 * (BAND_ORDER.index("B08") + 1)
    assert out[0, 8, 0, 0].item() == pytest.approx((nir - red) / (nir + red), rel=1e-5)
    assert "B11" not in CHANNELS and "B12" not in CHANNELS
    # nodata: a missing red band gives NaN NDVI in raw channels and 0 (the mean) in the model input
    x[0, BAND_ORDER.index("B04"), 1, 1] = float("nan")
    raw = raw_channels(x)
    assert torch.isnan(raw[0, 8, 1, 1]) and torch.isnan(raw[0, 2, 1, 1]) and not torch.isnan(raw[0, 0, 1, 1])
    stats = ChannelStats((0.5,) * 9, (2.0,) * 9)
    scaled = to_input(x, stats)
    assert torch.isfinite(scaled).all()
    assert scaled[0, 8, 1, 1] == 0 and scaled[0, 2, 1, 1] == 0
    assert scaled[0, 0, 0, 0].item() == pytest.approx((0.01 - 0.5) / 2.0)
    # numpy input with the band axis elsewhere
    season_first = np.random.default_rng(0).random((4, 10, 3, 3)).astype(np.float32)
    assert to_input(season_first, band_axis=1).shape == (4, 9, 3, 3)
    with pytest.raises(ValueError, match="10 bands"):
        to_input(torch.zeros(1, 9, 2, 2))


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
