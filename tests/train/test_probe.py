"""`treemap train probe`: frozen-feature k-NN and the early-stopped linear probe, F1 scores, the command line and its
one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train import probe as probe_cli
from train.seco_eval import f1_scores, fit_linear_probe, knn_multilabel_predict, knn_predict, knn_votes
from treemap.models.seco import SecoConfig, random_seco, save_seco
from treemap.phenology import BAND_ORDER, SEASONS

REPO = Path(__file__).resolve().parents[2]


# -- early stopping ---------------------------------------------------------------------------------------------------
def overfitting_case(seed=0):
    """Two classes 0.3 apart along every one of 100 noisy features, 20 training rows: Adam first follows the shared
    signal, then fits the noise of the 20 rows, and the validation loss turns up again."""
    g = torch.Generator().manual_seed(seed)
    direction = 0.15 * torch.sign(torch.randn(100, generator=g))

    def draw(n):
        y = torch.randint(0, 2, (n,), generator=g)
        return (2 * y[:, None] - 1) * direction + torch.randn(n, 100, generator=g), y

    return draw(20), draw(400)


def test_early_stopping_keeps_the_best_validation_epoch():
    (xtr, ytr), (xva, yva) = overfitting_case()
    long = fit_linear_probe(xtr, ytr, xva, yva, epochs=400, lr=0.003, weight_decay=0.0, patience=400)
    assert long.epochs_run == 400 and len(long.validation_loss) == 400
    losses = np.array(long.validation_loss)
    assert long.best_epoch == int(losses.argmin()) + 1
    assert 5 < long.best_epoch < 200  # the case does overfit: the minimum comes early ...
    assert losses[0] > losses.min() + 0.05 and losses[-1] > losses.min() + 0.1  # ... and the last epoch is worse
    assert long.train_loss[-1] < long.train_loss[long.best_epoch - 1]  # while the training loss kept falling
    # the head kept is the best epoch's, not the last one
    kept = float(F.cross_entropy(long.logits(xva), yva))
    assert kept == pytest.approx(losses.min(), rel=1e-5)
    # with patience it stops `patience` epochs after the same best epoch
    short = fit_linear_probe(xtr, ytr, xva, yva, epochs=400, lr=0.003, weight_decay=0.0, patience=15)
    assert short.best_epoch == long.best_epoch
    assert short.epochs_run == long.best_epoch + 15
    assert torch.equal(short.predict(xva), long.predict(xva))


def test_without_validation_the_probe_trains_every_epoch():
    (xtr, ytr), _ = overfitting_case(1)
    fitted = fit_linear_probe(xtr, ytr, epochs=30, patience=5)
    assert fitted.epochs_run == fitted.best_epoch == 30 and fitted.validation_loss == []


def test_multilabel_probe_uses_sigmoid_and_bce():
    (xtr, ytr), (xva, yva) = overfitting_case(2)
    two = torch.stack([ytr, 1 - ytr], dim=1)
    fitted = fit_linear_probe(xtr, two, xva, torch.stack([yva, 1 - yva], dim=1), epochs=50, patience=50)
    assert fitted.multilabel
    assert fitted.predict(xva).dtype == torch.bool and fitted.predict(xva).shape == (len(xva), 2)
    bce = F.binary_cross_entropy_with_logits(fitted.logits(xva), torch.stack([yva, 1 - yva], dim=1).float())
    assert float(bce) == pytest.approx(fitted.validation_loss[fitted.best_epoch - 1], rel=1e-5)


# -- F1 ---------------------------------------------------------------------------------------------------------------
def test_f1_single_label_by_hand():
    truth, predicted = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0])
    # class 0: tp 1 fp 1 fn 1 -> 2/4; class 1: tp 2 fp 1 fn 0 -> 4/5; class 2: tp 0 fp 0 fn 1 -> 0
    scores = f1_scores(predicted, truth, 3)
    assert scores["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert scores["micro_f1"] == pytest.approx(0.6)  # = accuracy, 3 of 5
    # a class absent from the truth and the predictions does not count in the macro mean
    assert f1_scores(predicted, truth, 5)["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_f1_multilabel_by_hand():
    truth = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    predicted = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0]])
    # class 0: tp 2 -> 1; class 1: tp 1 fn 1 -> 2/3; class 2: fp 1 fn 1 -> 0; class 3 absent
    scores = f1_scores(predicted, truth)
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert scores["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # tp 3, fp 1, fn 2


# -- k-NN and the probe on synthetic features ---------------------------------------------------------------------------
def clusters(n, classes=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_knn_votes_are_weight_shares():
    train_f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    train_y = torch.tensor([[1, 0], [0, 1], [1, 1]])
    query = torch.tensor([[1.0, 0.2]])
    sims = F.normalize(query, dim=1) @ F.normalize(train_f, dim=1).T
    w = torch.exp(sims[0] / 0.07)
    expected = torch.stack([w[0] + w[2], w[1] + w[2]]) / w.sum()
    assert torch.allclose(knn_votes(train_f, train_y, query, k=3)[0], expected, atol=1e-6)
    assert knn_multilabel_predict(train_f, train_y, query, k=3).tolist() == [(expected > 0.5).tolist()]
    # single-label votes pick what knn_predict picks
    xtr, ytr = clusters(100)
    xte, _ = clusters(50, seed=1)
    assert torch.equal(knn_votes(xtr, ytr, xte, k=7).argmax(dim=1), knn_predict(xtr, ytr, xte, k=7))


def test_probes_separate_separable_features_and_fail_on_shuffled_labels():
    (xtr, ytr), (xva, yva), (xte, yte) = clusters(200, seed=1), clusters(60, seed=2), clusters(300, seed=3)
    knn = knn_predict(xtr, ytr, xte, k=10)
    linear = fit_linear_probe(xtr, ytr, xva, yva).predict(xte)
    assert float((knn == yte).float().mean()) > 0.9
    assert float((linear == yte).float().mean()) > 0.9
    # Shuffled labels: with few clusters a cluster's majority label may match its true label by chance (1/4 each),
    # so this half uses 20 classes, where chance agreement is 1/20 and a probe that finds the clusters'
    # true labels through anything but the training labels would stand out.
    (xtr, ytr), (xva, yva), (xte, yte) = (clusters(n, classes=20, seed=s) for n, s in ((600, 11), (200, 12), (600, 13)))
    g = torch.Generator().manual_seed(5)
    shuffled, shuffled_val = ytr[torch.randperm(len(ytr), generator=g)], yva[torch.randperm(len(yva), generator=g)]
    knn = knn_predict(xtr, shuffled, xte, k=10)
    linear = fit_linear_probe(xtr, shuffled, xva, shuffled_val, n_classes=20).predict(xte)
    assert float((knn == yte).float().mean()) < 0.25  # chance is 0.05
    assert float((linear == yte).float().mean()) < 0.25
    # and the same features with their true labels are learnt
    assert float((fit_linear_probe(xtr, ytr, xva, yva, n_classes=20).predict(xte) == yte).float().mean()) > 0.9


def test_multilabel_knn_and_probe_separate_and_fail_on_shuffled_labels():
    def multi(n, seed):
        x, y = clusters(n, seed=seed)
        return x, torch.stack([y % 2, y // 2, (y == 3).long()], dim=1)  # three labels, each a union of clusters

    (xtr, ytr), (xva, yva), (xte, yte) = multi(200, 1), multi(60, 2), multi(300, 3)
    good = f1_scores(knn_multilabel_predict(xtr, ytr, xte, k=10), yte)
    probe = fit_linear_probe(xtr, ytr, xva, yva)
    fitted = f1_scores(probe.predict(xte), yte)
    assert good["micro_f1"] > 0.9 and good["macro_f1"] > 0.9
    assert fitted["micro_f1"] > 0.9 and fitted["macro_f1"] > 0.9
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(5))]
    bad = f1_scores(knn_multilabel_predict(xtr, shuffled, xte, k=10), yte)
    assert bad["macro_f1"] < 0.7


# -- the command line ---------------------------------------------------------------------------------------------------
def patch_set(n=60, seasonal=True, seed=0, classes=3, size=8):
    """Patches whose class sets the spectrum (plus per-patch brightness and pixel noise)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    spectrum = rng.uniform(0.05, 0.4, (classes, len(BAND_ORDER)))
    shape = (n, len(SEASONS), len(BAND_ORDER), size, size) if seasonal else (n, len(BAND_ORDER), size, size)
    base = spectrum[labels].reshape(n, *([1] if seasonal else []), len(BAND_ORDER), 1, 1)
    refl = base * rng.uniform(0.9, 1.1, (n,) + (1,) * (len(shape) - 1)) * (1 + 0.05 * rng.normal(size=shape))
    return refl.astype(np.float32), labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    refl, labels = patch_set()
    split = (np.arange(len(labels)) >= 42).astype(np.int8)
    refl[0, 1:] = np.nan  # one usable season: left out for --season concat, kept for mean
    np.savez(folder / "seasonal.npz", reflectance=refl, labels=labels, split=split,
             classes=np.array(["oak", "pine", "beech"]))
    flat, flat_labels = patch_set(45, seasonal=False, seed=1)
    multi = np.stack([flat_labels == 0, flat_labels != 2], axis=1).astype(np.uint8)
    np.savez(folder / "multi.npz", reflectance=flat, labels=multi)
    model = save_seco(random_seco(SecoConfig.tiny(), seed=3), folder / "seco.safetensors")
    return folder, model


def run_main(capsys, *args):
    code = probe_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_random_tiny_end_to_end_through_treemap_train(files):
    folder, _ = files
    proc = subprocess.run([sys.executable, "-m", "treemap", "train", "probe", "--patches", str(folder / "seasonal.npz"),
                           "--encoder", "random", "--tiny", "--k", "5"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["encoder"] == "random" and report["season"] == "mean" and report["task"] == "single-label"
    assert report["feature_dim"] == SecoConfig.tiny().feature_dim
    assert (report["train"], report["test"], report["dropped"]) == (42, 18, 0)
    assert report["train_per_class"] == {"oak": 14, "pine": 14, "beech": 14}
    assert report["test_per_class"] == {"oak": 6, "pine": 6, "beech": 6}
    assert 0 < report["validation"] < report["train"]
    for probe in ("knn", "linear"):
        assert 0 <= report[probe]["accuracy"] <= 1 and 0 <= report[probe]["macro_f1"] <= 1
    assert 1 <= report["linear"]["best_epoch"] <= report["linear"]["epochs_run"]


def test_cli_band_means_and_seasons(files, capsys):
    folder, _ = files
    code, out, err = run_main(capsys, "--patches", folder / "seasonal.npz", "--encoder", "band-means")
    assert code == 0, err
    report = json.loads(out)
    assert report["feature_dim"] == len(BAND_ORDER) + 1 and report["model"] is None
    assert report["knn"]["accuracy"] > 0.9 and report["linear"]["accuracy"] > 0.9  # the spectrum is the class
    code, out, err = run_main(capsys, "--patches", folder / "seasonal.npz", "--encoder", "band-means", "--season",
                              "concat")
    assert code == 0, err
    report = json.loads(out)
    assert report["feature_dim"] == 4 * (len(BAND_ORDER) + 1) and report["dropped"] == 1
    code, out, err = run_main(capsys, "--patches", folder / "seasonal.npz", "--encoder", "band-means", "--season",
                              SEASONS[2])
    assert code == 0, err
    assert json.loads(out)["season"] == SEASONS[2] and json.loads(out)["dropped"] == 1


def test_cli_seco_model_equals_random_with_its_seed(files, capsys):
    """A model file holding seed-3 random weights gives the same features as --encoder random --seed 3 with that
    model's architecture and statistics: the same scores."""
    folder, model = files
    common = ["--patches", folder / "seasonal.npz", "--model", model, "--seed", 3]
    code, out, err = run_main(capsys, *common, "--encoder", "seco-eco")
    assert code == 0, err
    seco = json.loads(out)
    code, out, err = run_main(capsys, *common, "--encoder", "random")
    assert code == 0, err
    random = json.loads(out)
    assert seco["knn"] == random["knn"] and seco["linear"] == random["linear"]
    code, out, err = run_main(capsys, *common[:-1], 4, "--encoder", "random")
    assert code == 0, err
    assert json.loads(out)["feature_dim"] == seco["feature_dim"]


def test_cli_multilabel_with_a_seeded_split(files, capsys):
    folder, _ = files
    code, out, err = run_main(capsys, "--patches", folder / "multi.npz", "--encoder", "band-means", "--test-share",
                              "0.4")
    assert code == 0, err
    report = json.loads(out)
    assert report["task"] == "multi-label" and report["season"] is None and report["classes"] == ["0", "1"]
    assert report["test"] == 18 and report["train"] == 27
    assert set(report["knn"]) >= {"micro_f1", "macro_f1"} and report["knn"]["micro_f1"] > 0.9
    assert report["linear"]["micro_f1"] > 0.9


@pytest.fixture(scope="module")
def bad_files(files):
    folder, _ = files
    refl, labels = patch_set(30, seasonal=False)
    np.savez(folder / "nolabels.npz", reflectance=refl)
    np.savez(folder / "short.npz", reflectance=refl, labels=labels[:-1])
    np.savez(folder / "bands.npz", reflectance=refl[:, :9], labels=labels)
    split = (labels == 2).astype(np.int8)  # every class-2 patch is a test patch
    np.savez(folder / "untrained.npz", reflectance=refl, labels=labels, split=split)
    (folder / "text.npz").write_text("not a zip")
    return folder


@pytest.mark.parametrize("args, fragment", [
    (["--patches", "{f}/absent.npz", "--encoder", "band-means"], "no patch file"),
    (["--patches", "{f}/text.npz", "--encoder", "band-means"], "cannot read patch file"),
    (["--patches", "{f}/nolabels.npz", "--encoder", "band-means"], "has no 'labels' array"),
    (["--patches", "{f}/short.npz", "--encoder", "band-means"], "'labels' must be shaped (30,)"),
    (["--patches", "{f}/bands.npz", "--encoder", "band-means"], "'reflectance' must be shaped"),
    (["--patches", "{f}/untrained.npz", "--encoder", "band-means"], "class '2' has no training patch"),
    (["--patches", "{f}/short.npz", "--encoder", "resnet"], "--encoder: invalid choice: 'resnet'"),
    (["--patches", "{f}/multi.npz", "--encoder", "band-means", "--season", "1"], "--season needs seasonal patches"),
    (["--patches", "{f}/seasonal.npz", "--encoder", "band-means", "--season", "7"], "--season must be 0-3"),
    (["--patches", "{f}/seasonal.npz", "--encoder", "seco-eco"], "--encoder seco-eco needs --model"),
    (["--patches", "{f}/seasonal.npz", "--encoder", "seco-eco", "--model", "{f}/none.safetensors"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(bad_files, capsys, args, fragment):
    args = [a.format(f=bad_files) for a in args]
    try:
        code = probe_cli.main(args)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m train.probe: error: ") and fragment in err, err


def test_bad_input_through_treemap_train_has_no_traceback(bad_files):
    proc = subprocess.run([sys.executable, "-m", "treemap", "train", "probe", "--patches",
                           str(bad_files / "untrained.npz"), "--encoder", "band-means"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "treemap train probe: error: class '2' has no training patch (10 in the test split)"]
