"""SeCo-Eco pretraining: patches from seasonal composites, sampling, season pairs, MoCo training, frozen-feature
evaluation, command line and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train import seco_eco
from train.seco_eco import (
    SecoDataError, SecoTrainConfig, location_weights, make_patches, prepare_inputs, read_patches, season_pairs,
    train,
)
from train.seco_eval import accuracy, embed, knn_predict, linear_probe
from treemap.models.seco import SecoConfig, load_seco
from treemap.phenology import BAND_ORDER, SEASONS

RED, NIR = BAND_ORDER.index("B04"), BAND_ORDER.index("B08")


def synthetic(n, classes=4, size=32, seed=0):
    """(n, 4, 10, P, P) reflectance and class labels. A class sets the spectrum; each location has its own
    brightness per band and spatial texture shared by its four season images (the signal contrast can learn); the
    seasons scale the spectrum."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    spectrum = rng.uniform(0.05, 0.4, (classes, len(BAND_ORDER)))
    season = rng.uniform(0.7, 1.3, (len(SEASONS), len(BAND_ORDER)))
    texture = rng.normal(0, 1, (n, 1, 1, size, size))
    brightness = rng.uniform(0.8, 1.2, (n, 1, len(BAND_ORDER), 1, 1))
    refl = spectrum[labels][:, None, :, None, None] * season[None, :, :, None, None] * brightness
    refl = refl * (1 + 0.2 * texture) + rng.normal(0, 0.01, (n, len(SEASONS), len(BAND_ORDER), size, size))
    return refl.astype(np.float32), labels


def test_make_patches_drops_locations_with_fewer_than_two_seasons():
    refl, _ = synthetic(3, size=4)
    refl[0, 1:] = np.nan  # one usable season: dropped
    refl[1, 2:] = np.nan  # two: kept
    refl[2, 0, :, :2] = np.nan  # half the pixels missing: still usable at min_valid 0.5
    patches = make_patches(refl, np.arange(6).reshape(3, 2))
    assert len(patches) == 2
    assert patches.valid.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert patches.origins.tolist() == [[2, 3], [4, 5]]


def test_low_ndvi_locations_get_a_quarter_weight():
    refl = np.full((3, 4, 10, 2, 2), 0.2, dtype=np.float32)
    refl[:, :, NIR] = 0.21  # NDVI ~0.02 everywhere
    refl[1, 2, NIR] = 0.5  # one green season: full weight
    refl[2, 3] = np.nan  # an unusable season does not count
    weights = location_weights(make_patches(refl))
    assert weights.tolist() == [0.25, 1.0, 0.25]


def test_season_pairs_are_two_different_usable_seasons():
    g = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, True, True, True], [False, True, False, True], [True, False, True, True]] * 200)
    seen = set()
    for _ in range(5):
        pairs = season_pairs(valid, g)
        assert (pairs[:, 0] != pairs[:, 1]).all()
        assert valid.gather(1, pairs).all()
        assert set(map(tuple, pairs[1::3].tolist())) <= {(1, 3), (3, 1)}
        seen |= set(map(tuple, pairs[0::3].tolist()))
    assert len(seen) == 12  # every ordered pair of the 4 seasons occurs
    with pytest.raises(SecoDataError):
        season_pairs(torch.tensor([[True, False, False, False]]), g)


def write_composites(path, refl_grid):
    """A seasonal_composites.tif like ``treemap phenology --seasonal`` writes: int16, scale 1e-4, nodata -32768."""
    import rasterio
    from rasterio.transform import from_origin

    data = np.where(np.isnan(refl_grid), seco_eco.NODATA, np.round(refl_grid / seco_eco.SCALE)).astype(np.int16)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="int16",
                   nodata=seco_eco.NODATA, crs="EPSG:32632", transform=from_origin(500000, 5200000, 10, 10))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, (s, b) in enumerate([(s, b) for s in SEASONS for b in BAND_ORDER], start=1):
            dst.set_band_description(i, f"{s} {b}")
            dst.update_tags(i, scale=str(seco_eco.SCALE))
    return path


@pytest.fixture(scope="module")
def composites(tmp_path_factory):
    refl, _ = synthetic(6, size=16, seed=4)  # 6 locations of 16 px -> a 32 x 48 raster
    grid = refl.reshape(2, 3, 40, 16, 16).transpose(2, 0, 3, 1, 4).reshape(40, 32, 48).copy()
    grid[10:40, 0:16, 0:16] = np.nan  # location (0, 0): one season left, dropped
    grid[20:40, 0:16, 16:32] = np.nan  # location (0, 16): two seasons left, kept
    return write_composites(tmp_path_factory.mktemp("seco") / "seasonal_composites.tif", grid), refl


def test_read_patches_from_seasonal_composites(composites):
    path, refl = composites
    patches = read_patches(path, patch_size=16)
    assert len(patches) == 5
    assert patches.origins.tolist() == [[0, 16], [0, 32], [16, 0], [16, 16], [16, 32]]
    assert patches.valid[0].tolist() == [True, True, False, False]
    np.testing.assert_allclose(patches.reflectance[1], refl[2], atol=6e-5)  # int16 at 1e-4
    assert len(read_patches(path, patch_size=16, stride=8)) > 5
    with pytest.raises(SecoDataError, match="smaller"):
        read_patches(path, patch_size=64)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    refl, labels = synthetic(256)
    patches = make_patches(refl)
    config = SecoTrainConfig(steps=40, batch_size=32, queue_size=64, lr=0.2, key_momentum=0.99, log_every=0)
    model, history = train(patches, config, SecoConfig.tiny())
    return model, history, patches, labels, config


def test_training_loss_decreases(trained):
    _, history, _, _, config = trained
    assert [h["step"] for h in history] == list(range(1, config.steps + 1))
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all()
    # the first steps score against the random initial queue; compare once it holds real keys
    full = config.queue_size // config.batch_size + 1
    early, late = losses[full:full + 8].mean(), losses[-8:].mean()
    assert late < early - 0.3, (early, late)
    for name in ("agnostic", "season"):
        part = np.array([h[f"loss_{name}"] for h in history])
        assert part[-8:].mean() < part[full:full + 8].mean()


def test_knn_and_linear_probe_on_frozen_features_beat_chance(trained):
    model, _, patches, labels, _ = trained
    inputs, _ = prepare_inputs(patches, model.stats)
    features = embed(model, inputs[:, 0])
    assert features.shape == (len(patches), model.config.feature_dim)
    y = torch.as_tensor(labels)
    train_idx, test_idx = slice(0, 192), slice(192, None)  # held-out locations
    knn = knn_predict(features[train_idx], y[train_idx], features[test_idx], k=10, temperature=0.07)
    probe = linear_probe(features[train_idx], y[train_idx], features[test_idx])
    chance = 1 / 4
    assert accuracy(knn, y[test_idx]) > chance + 0.25
    assert accuracy(probe, y[test_idx]) > chance + 0.25
    # reflectance in, the model's own statistics applied
    again = embed(model, torch.from_numpy(patches.reflectance[:4, 0]), reflectance=True)
    assert torch.allclose(again, features[:4], atol=1e-5)


def test_knn_votes_are_weighted():
    train_f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    # with k = 5 a plain majority would say 1; the temperature-weighted votes of the close neighbours say 0
    assert knn_predict(train_f, train_y, torch.tensor([[1.0, 0.05]]), k=5).tolist() == [0]
    assert knn_predict(train_f, train_y, torch.tensor([[0.05, 1.0]]), k=5).tolist() == [1]


def test_cli_writes_a_model_and_resumes(composites, tmp_path, capsys):
    path, _ = composites
    out = tmp_path / "run"
    args = ["--composites", str(path), "--out", str(out), "--patch-size", "16", "--tiny", "--batch-size", "4",
            "--queue-size", "8", "--checkpoint-every", "1", "--log-every", "1"]
    assert seco_eco.main(args + ["--steps", "2"]) == 0
    model = load_seco(out / "seco.safetensors")
    assert model.config == SecoConfig.tiny()
    assert (out / "checkpoint.pt").exists()
    assert seco_eco.main(args + ["--steps", "3"]) == 0  # resumes at step 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert seco_eco.main(args + ["--steps", "3", "--composites", str(tmp_path / "nope.tif")]) == 2
    assert "error:" in capsys.readouterr().err
