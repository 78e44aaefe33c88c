"""Frozen-feature probes of an encoder on labelled patches: weighted k-NN and a linear probe with early stopping.

    python -m train.probe --patches P.npz --encoder seco-eco --model runs/x/seco.safetensors [--season mean]
    python -m train.probe --patches P.npz --encoder random --model runs/x/seco.safetensors --seed 1
    python -m train.probe --patches P.npz --encoder band-means
    treemap train probe ...  (the same program)

Prints one JSON object: ``encoder``, ``model``, ``season``, ``task`` (single-label / multi-label), ``classes``,
``feature_dim``, ``patches`` (in the file), ``dropped`` (left out, see ``--season``), ``train`` (the training
split, validation included), ``validation`` (held out of it for early stopping), ``test``, ``train_per_class`` and
``test_per_class``, ``knn`` and ``linear`` scores (``linear`` adds ``best_epoch``, ``epochs_run`` and the kept
epoch's ``validation_loss``), ``seed``, ``seconds`` and ``patches_file``.

* Patches (``--patches``, an ``.npz`` read without pickle):

  - ``reflectance``: (N, 10, P, P) float32 reflectance in ``treemap.phenology.BAND_ORDER`` (NaN = missing), or
    (N, 4, 10, P, P) seasonal patches (``treemap.phenology.SEASONS`` order, as ``seasonal_composites.tif``); these
    take ``--season``: ``K`` (0-3 or a season's name) embeds that season, ``mean`` (the default) averages the
    embeddings of the patch's usable seasons, ``concat`` concatenates the four seasons' embeddings. A season (or a
    single image) is usable when at least ``--min-valid`` of its pixels have all 10 bands; patches without what
    ``--season`` needs (for ``concat``: all four seasons) are left out and counted as ``dropped``.
  - ``labels``: (N,) class indices (single-label) or (N, C) 0/1 (multi-label).
  - ``split`` (optional): (N,) 0 = train, 1 = test. Without it a seeded split stratified by class holds out
    ``--test-share`` of every class (multi-label: of all patches).
  - ``classes`` (optional): the class names, one per class index (or label column).

* Encoders (``--encoder``): ``seco-eco`` -- the backbone of a SeCo-Eco model (``--model``, a ``seco.safetensors``
  of ``treemap train seco-eco``, read by ``treemap.models.seco.load_seco``), pooled features in eval mode;
  ``random`` -- the same architecture with seeded random weights (``--seed``): the config and input statistics of
  ``--model`` when given, else the ``--tiny`` (or full ResNet-50) config with statistics of the training patches;
  ``band-means`` -- no network: the spatial means of the 10 bands and of the NDVI (11 numbers per image).

* Probes, both on the frozen features of the training split, scored on the test split:

  - k-NN (``train.seco_eval.knn_votes``): cosine similarity, the ``--k`` nearest training patches vote with weight
    ``exp(similarity / --temperature)`` (0.07); single-label: the heaviest class wins; multi-label: every class
    with more than half of the vote.
  - linear probe (``train.seco_eval.fit_linear_probe``): softmax (multi-label: one sigmoid per class, binary
    cross-entropy) on standardised features, full-batch Adam, one step an epoch. ``--val-share`` of the training
    split (stratified, seeded) is held out as validation; training stops after ``--patience`` epochs without a
    lower validation loss and the head of the best epoch is kept. The k-NN votes come from the whole training
    split.

  Scores: single-label ``accuracy`` and ``macro_f1``; multi-label ``micro_f1`` and ``macro_f1`` (macro: mean over
  the classes present in the test truth or the predictions).

Bad input (a missing or unreadable file, missing arrays, shapes that do not match, labels out of range, a class
that occurs but has no training patch) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from train.seco_eval import as_indicator, embed, f1_scores, fit_linear_probe, knn_multilabel_predict, knn_predict
from treemap.errors import SecoDataError, TreemapError
from treemap.phenology import BAND_ORDER, SEASONS

ENCODERS = ("seco-eco", "random", "band-means")
SEASON_MODES = ("mean", "concat")
_RED, _NIR = BAND_ORDER.index("B04"), BAND_ORDER.index("B08")


# -- the patch set ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchSet:
    """A labelled patch set as read from ``--patches`` (see the module docstring)."""

    reflectance: np.ndarray  # (N, 10, P, P) or (N, 4, 10, P, P) float32
    labels: np.ndarray  # (N,) int64 or (N, C) bool
    split: np.ndarray | None  # (N,) bool, True = test
    classes: tuple[str, ...]

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def seasonal(self) -> bool:
        return self.reflectance.ndim == 5

    def __len__(self) -> int:
        return int(self.reflectance.shape[0])


def _integral(a: np.ndarray, what: str, path: Path) -> np.ndarray:
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.number):
        raise SecoDataError(f"{path}: '{what}' must be numbers, not {a.dtype}")
    if not np.isfinite(a).all() or (a != np.round(a)).any():
        raise SecoDataError(f"{path}: '{what}' must be whole numbers")
    return a.astype(np.int64)


def read_patch_set(path: str | os.PathLike) -> PatchSet:
    """Read and check a labelled patch set (``reflectance``, ``labels``, optional ``split`` and ``classes``)."""
    path = Path(path)
    if not path.is_file():
        raise SecoDataError(f"no patch file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # not a zip, damaged, object arrays (no pickle)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SecoDataError(f"cannot read patch file {path}: {message}") from exc
    missing = [name for name in ("reflectance", "labels") if name not in arrays]
    if missing:
        raise SecoDataError(f"{path} has no '{missing[0]}' array (found: {', '.join(sorted(arrays)) or 'none'})")
    refl = arrays["reflectance"]
    bands = len(BAND_ORDER)
    if not np.issubdtype(refl.dtype, np.floating) and not np.issubdtype(refl.dtype, np.integer):
        raise SecoDataError(f"{path}: 'reflectance' must be numbers, not {refl.dtype}")
    shape_ok = (refl.ndim == 4 and refl.shape[1] == bands) or (
        refl.ndim == 5 and refl.shape[1:3] == (len(SEASONS), bands))
    if not shape_ok or refl.shape[0] < 1 or refl.shape[-1] < 1 or refl.shape[-2] < 1:
        raise SecoDataError(f"{path}: 'reflectance' must be shaped (N, {bands}, P, P) or (N, {len(SEASONS)}, {bands}, "
                            f"P, P), got {tuple(refl.shape)}")
    n = refl.shape[0]
    labels = arrays["labels"]
    if labels.ndim not in (1, 2) or labels.shape[0] != n:
        raise SecoDataError(f"{path}: 'labels' must be shaped ({n},) or ({n}, C) for {n} patches, "
                            f"got {tuple(labels.shape)}")
    labels = _integral(labels, "labels", path)
    if labels.ndim == 2:
        if labels.shape[1] < 1 or not np.isin(labels, (0, 1)).all():
            raise SecoDataError(f"{path}: multi-label 'labels' (N, C) must be 0 or 1")
        labels = labels.astype(bool)
    elif labels.min() < 0:
        raise SecoDataError(f"{path}: 'labels' must be class indices >= 0, found {int(labels.min())}")
    split = None
    if "split" in arrays:
        split = arrays["split"]
        if split.shape != (n,):
            raise SecoDataError(f"{path}: 'split' must be shaped ({n},), got {tuple(split.shape)}")
        split = _integral(split, "split", path)
        if not np.isin(split, (0, 1)).all():
            raise SecoDataError(f"{path}: 'split' must be 0 (train) or 1 (test)")
        split = split.astype(bool)
    n_classes = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1:
            raise SecoDataError(f"{path}: 'classes' must be a list of names")
        classes = tuple(str(c) for c in names.tolist())
        if labels.ndim == 2 and len(classes) != n_classes:
            raise SecoDataError(f"{path}: {len(classes)} 'classes' for {n_classes} label columns")
        if labels.ndim == 1 and len(classes) < n_classes:
            raise SecoDataError(f"{path}: label {n_classes - 1} is out of range for {len(classes)} 'classes'")
    else:
        classes = tuple(str(i) for i in range(n_classes))
    return PatchSet(np.asarray(refl, dtype=np.float32), labels, split, classes)


# -- splits -----------------------------------------------------------------------------------------------------------
def _strata(labels: np.ndarray) -> np.ndarray:
    """A stratum per patch: its class (single-label) or one stratum for all (multi-label)."""
    return labels if labels.ndim == 1 else np.zeros(labels.shape[0], dtype=np.int64)


def stratified_holdout(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(N,) bool: ``round(share * n)`` patches of every stratum (see :func:`_strata`) held out, seeded; a stratum
    keeps at least one patch on the other side (a single patch stays unheld)."""
    rng = np.random.default_rng(seed)
    strata = _strata(labels)
    held = np.zeros(len(strata), dtype=bool)
    for s in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == s))
        n_out = min(int(round(share * len(members))), len(members) - 1)
        held[members[:max(n_out, 0)]] = True
    return held


# -- encoders ---------------------------------------------------------------------------------------------------------
def band_means(reflectance: np.ndarray) -> torch.Tensor:
    """(N, 10, P, P) reflectance -> (N, 11): the spatial mean of every band and of the NDVI over finite pixels."""
    x = np.asarray(reflectance, dtype=np.float64)
    red, nir = x[:, _RED], x[:, _NIR]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = np.where(np.abs(nir + red) > 1e-6, (nir - red) / (nir + red), 0.0)
    ndvi = np.where(np.isnan(nir + red), np.nan, np.clip(ndvi, -1, 1))
    stacked = np.concatenate([x, ndvi[:, None]], axis=1).reshape(x.shape[0], x.shape[1] + 1, -1)
    with warnings.catch_warnings():  # an all-missing image gives NaN; such images were dropped before
        warnings.simplefilter("ignore", RuntimeWarning)
        return torch.from_numpy(np.nanmean(stacked, axis=-1)).float()


def _network(encoder: str, model_path: str | None, tiny: bool, seed: int, train_images: np.ndarray):
    from treemap.models.seco import SecoConfig, compute_stats, load_seco, random_seco, raw_channels

    if model_path is not None:
        loaded = load_seco(model_path)
        if encoder == "seco-eco":
            return loaded
        return random_seco(loaded.config, loaded.stats, seed=seed)
    config = SecoConfig.tiny() if tiny else SecoConfig()
    stats = compute_stats(raw_channels(torch.from_numpy(train_images), band_axis=1), band_axis=1)
    return random_seco(config, stats, seed=seed)


def usable(reflectance: np.ndarray, min_valid: float) -> np.ndarray:
    """(N,) or (N, 4) bool: images where at least ``min_valid`` of the pixels have all 10 bands."""
    complete = np.isfinite(reflectance).all(axis=-3)
    return complete.reshape(*complete.shape[:-2], -1).mean(axis=-1) >= min_valid


def parse_season(value: str | None) -> int | str | None:
    """``--season``: None, 'mean', 'concat', an index 0-3 or a season's name -> None, the mode or the index."""
    if value is None or value in SEASON_MODES:
        return value
    if value in SEASONS:
        return SEASONS.index(value)
    try:
        k = int(value)
    except ValueError:
        k = -1
    if not 0 <= k < len(SEASONS):
        raise SecoDataError(f"--season must be 0-{len(SEASONS) - 1}, a season ({', '.join(SEASONS)}), "
                            f"'mean' or 'concat', not '{value}'")
    return k


def features_of(patches: PatchSet, encoder: str, season: int | str | None, model_path: str | None = None,
                tiny: bool = False, seed: int = 0, min_valid: float = 0.5, batch_size: int = 256,
                train_mask: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray, int]:
    """Features of the patches that have what ``season`` needs: (features (M, D), kept (N,) bool, feature dim).
    ``train_mask`` picks the patches whose statistics a ``random`` network without a model file uses."""
    if encoder not in ENCODERS:
        raise SecoDataError(f"unknown encoder '{encoder}' (one of {', '.join(ENCODERS)})")
    refl = patches.reflectance
    if patches.seasonal:
        season = "mean" if season is None else season
        ok = usable(refl, min_valid)  # (N, 4)
        if season == "mean":
            kept = ok.any(axis=1)
        elif season == "concat":
            kept = ok.all(axis=1)
        else:
            kept = ok[:, season]
    else:
        if season is not None:
            raise SecoDataError("--season needs seasonal patches shaped (N, 4, 10, P, P)")
        kept = usable(refl, min_valid)
        ok = None
    if not kept.any():
        raise SecoDataError(f"no patch has {'the season(s) --season needs' if patches.seasonal else 'an image'} with "
                            f"at least {min_valid:.0%} of its pixels complete")
    images = refl[kept]
    if ok is not None:
        ok = ok[kept]
        if isinstance(season, int):
            images, ok = images[:, season], None
    # images: (M, 10, P, P), or (M, 4, 10, P, P) with ok (M, 4) for mean / concat
    flat = images.reshape(-1, *images.shape[-3:])
    if encoder == "band-means":
        flat_features = band_means(flat)
    else:
        # a random network without a model file: input statistics of the training patches' usable images
        sel = (train_mask if train_mask is not None else np.ones(len(patches), bool))[kept]
        stats_images = images[sel] if ok is None else images[sel][ok[sel]]
        network = _network(encoder, model_path, tiny, seed, stats_images if len(stats_images) else flat)
        flat_features = embed(network, torch.from_numpy(flat), batch_size=batch_size, reflectance=True)
    if ok is None:
        features = flat_features
    else:
        per_season = flat_features.reshape(images.shape[0], len(SEASONS), -1)
        if season == "concat":
            features = per_season.reshape(images.shape[0], -1)
        else:
            weights = torch.from_numpy(ok).float()
            per_season = per_season.nan_to_num(0.0) * weights[..., None]
            features = per_season.sum(dim=1) / weights.sum(dim=1, keepdim=True)
    return features.float(), kept, int(features.shape[1])


# -- the probe --------------------------------------------------------------------------------------------------------
def _scores(predicted: torch.Tensor, truth: torch.Tensor, n_classes: int, multilabel: bool) -> dict:
    f1 = f1_scores(predicted, truth, n_classes)
    if multilabel:
        exact = float((as_indicator(predicted, n_classes) == as_indicator(truth, n_classes)).all(dim=1)
                      .float().mean())
        return {"micro_f1": round(f1["micro_f1"], 4), "macro_f1": round(f1["macro_f1"], 4),
                "exact_match": round(exact, 4)}
    accuracy = float((predicted == truth).float().mean())
    return {"accuracy": round(accuracy, 4), "macro_f1": round(f1["macro_f1"], 4)}


def _per_class(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))
    return {name: int(c) for name, c in zip(classes, counts)}


def probe(patches: PatchSet, encoder: str, model_path: str | None = None, season: int | str | None = None,
          tiny: bool = False, seed: int = 0, k: int = 20, temperature: float = 0.07, test_share: float = 0.3,
          val_share: float = 0.2, epochs: int = 3000, lr: float = 0.01, weight_decay: float = 1e-4,
          patience: int = 100, min_valid: float = 0.5, batch_size: int = 256) -> dict:
    """Probe the frozen features of ``encoder`` on ``patches``; returns the report printed as JSON."""
    t0 = time.perf_counter()
    n_classes = len(patches.classes)
    if encoder not in ENCODERS:
        raise SecoDataError(f"unknown encoder '{encoder}' (one of {', '.join(ENCODERS)})")
    if encoder == "seco-eco" and model_path is None:
        raise SecoDataError("--encoder seco-eco needs --model (a seco.safetensors)")
    if patches.seasonal and season is None:
        season = "mean"
    test = patches.split if patches.split is not None else stratified_holdout(patches.labels, test_share, seed)
    features, kept, dim = features_of(patches, encoder, season, model_path, tiny, seed, min_valid, batch_size,
                                      train_mask=~test)
    labels, test = patches.labels[kept], test[kept]
    if test.all() or not test.any():
        raise SecoDataError(f"the {'test' if not test.any() else 'training'} split is empty "
                            f"(after leaving out {int((~kept).sum())} patches without usable images)")
    train_counts = _per_class(labels[~test], patches.classes)
    test_counts = _per_class(labels[test], patches.classes)
    all_counts = _per_class(labels, patches.classes)
    for name in patches.classes:
        if all_counts[name] and not train_counts[name]:
            raise SecoDataError(f"class '{name}' has no training patch ({test_counts[name]} in the test split)")
    multilabel = patches.multilabel
    y = torch.from_numpy(labels)
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    xtr, xte, ytr, yte = features[train_idx], features[test_idx], y[train_idx], y[test_idx]

    if multilabel:
        knn = knn_multilabel_predict(xtr, ytr, xte, k=k, temperature=temperature)
    else:
        knn = knn_predict(xtr, ytr, xte, k=k, temperature=temperature, n_classes=n_classes)

    held = stratified_holdout(labels[train_idx], val_share, seed + 1) if val_share > 0 else \
        np.zeros(len(train_idx), dtype=bool)
    fit, val = train_idx[~held], train_idx[held]
    linear = fit_linear_probe(features[fit], y[fit], features[val], y[val], epochs=epochs, lr=lr,
                              weight_decay=weight_decay, patience=patience, n_classes=n_classes, seed=seed)
    predicted = linear.predict(xte)
    best_val = linear.validation_loss[linear.best_epoch - 1] if linear.validation_loss else None
    return {
        "encoder": encoder,
        "model": str(model_path) if model_path is not None and encoder != "band-means" else None,
        "season": (SEASONS[season] if isinstance(season, int) else season) if patches.seasonal else None,
        "task": "multi-label" if multilabel else "single-label",
        "classes": list(patches.classes),
        "feature_dim": dim,
        "patches": len(patches),
        "dropped": int((~kept).sum()),
        "train": len(train_idx),  # the training split, validation included
        "validation": len(val),  # held out of the training split to stop the linear probe
        "test": len(test_idx),
        "train_per_class": train_counts,
        "test_per_class": test_counts,
        "knn": {"k": min(k, len(train_idx)), "temperature": temperature,
                **_scores(knn, yte, n_classes, multilabel)},
        "linear": {**_scores(predicted, yte, n_classes, multilabel), "best_epoch": linear.best_epoch,
                   "epochs_run": linear.epochs_run,
                   "validation_loss": None if best_val is None else round(best_val, 4)},
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# -- command line -----------------------------------------------------------------------------------------------------
def build_parser(prog: str = "python -m train.probe") -> argparse.ArgumentParser:
    """The options of ``python -m train.probe`` = ``treemap train probe``."""
    from train import Parser

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--patches", required=True, help="labelled patches (.npz: reflectance, labels, [split, classes])")
    p.add_argument("--encoder", required=True, choices=ENCODERS,
                   help="seco-eco (--model), random (the same architecture, random weights) or band-means")
    p.add_argument("--model", help="a SeCo-Eco seco.safetensors (for random: the architecture and statistics)")
    p.add_argument("--tiny", action="store_true", help="random without --model: the tiny ResNet config")
    p.add_argument("--season", help="seasonal patches: a season 0-3 (or its name), mean (default) or concat")
    p.add_argument("--seed", type=int, default=0, help="random weights, the splits without 'split', probe init")
    p.add_argument("--k", type=int, default=20, help="neighbours of the k-NN")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote weight exp(similarity / T)")
    p.add_argument("--test-share", type=float, default=0.3, help="test share when the file has no 'split'")
    p.add_argument("--val-share", type=float, default=0.2,
                   help="share of the training split held out to stop the linear probe (0: no early stopping)")
    p.add_argument("--epochs", type=int, default=3000, help="most epochs (full-batch steps) of the linear probe")
    p.add_argument("--patience", type=int, default=100, help="epochs without a lower validation loss before stopping")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate of the linear probe")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--min-valid", type=float, default=0.5,
                   help="share of an image's pixels that must have all bands for it to be usable")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder batch")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m train.probe`` and ``treemap train probe``: prints one JSON object."""
    p = build_parser(*([prog] if prog else []))
    args = p.parse_args(argv)
    checks = [(args.k >= 1, "--k must be at least 1"), (args.epochs >= 1, "--epochs must be at least 1"),
              (args.patience >= 1, "--patience must be at least 1"), (args.batch_size >= 1, "--batch-size must be "
              "at least 1"), (0 < args.test_share < 1, "--test-share must be between 0 and 1"),
              (0 <= args.val_share < 1, "--val-share must be at least 0 and below 1"),
              (0 < args.min_valid <= 1, "--min-valid must be above 0 and at most 1"),
              (args.temperature > 0 and math.isfinite(args.temperature), "--temperature must be positive"),
              (args.lr > 0, "--lr must be positive"), (args.encoder != "seco-eco" or args.model,
                                                        "--encoder seco-eco needs --model")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        season = parse_season(args.season)
        patches = read_patch_set(args.patches)
        report = probe(patches, args.encoder, args.model, season, tiny=args.tiny, seed=args.seed, k=args.k,
                       temperature=args.temperature, test_share=args.test_share, val_share=args.val_share,
                       epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
                       min_valid=args.min_valid, batch_size=args.batch_size)
    except TreemapError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    report["patches_file"] = str(args.patches)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
