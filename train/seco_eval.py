"""Frozen-feature evaluation of a SeCo-Eco backbone (the SSL4Eco protocol): k-NN and a linear probe.

* :func:`embed`: model input (or reflectance) -> backbone features, in eval mode without gradients.
* :func:`knn_predict`: cosine similarity to every training feature, the ``k`` most similar vote with weight
  ``exp(similarity / temperature)`` (temperature 0.07); the class with the largest summed weight wins.
* :func:`linear_probe`: a linear classifier (softmax regression) on standardised frozen features, full-batch Adam.

For ``treemap train probe`` (``train.probe``), multi-label tasks and early stopping:

* :func:`knn_votes`: the same weighted votes as :func:`knn_predict`, as each class's share of the summed weight of
  the ``k`` neighbours; for a multi-label target (N, C) of 0/1 a neighbour votes for every class it has.
  :func:`knn_multilabel_predict` keeps the classes whose share exceeds 0.5.
* :func:`fit_linear_probe`: the linear probe (softmax + cross-entropy, or for multi-label targets one sigmoid per
  class + binary cross-entropy) with early stopping: each epoch is one full-batch Adam step on the training
  features; after every epoch the loss on held-out validation features is measured; training stops after
  ``patience`` epochs without a lower validation loss, and the head of the epoch with the lowest one is kept
  (the earliest, on ties). Without validation features it trains all ``epochs`` and keeps the last.
* :func:`f1_scores`: micro F1 (from the true/false positives and false negatives summed over classes) and macro F1
  (the mean of the per-class F1 over the classes that occur in the truth or the predictions).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from treemap.models.seco import SecoModel, to_input


@torch.no_grad()
def embed(model: SecoModel, x: Tensor | np.ndarray, batch_size: int = 256, reflectance: bool = False) -> Tensor:
    """(N, 9, H, W) model input -> (N, feature_dim) backbone features; ``reflectance=True`` takes (N, 10, H, W)
    reflectance in ``BAND_ORDER`` and scales it with the model's statistics first."""
    x = torch.as_tensor(x).float()
    if reflectance:
        x = to_input(x, model.stats)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.backbone(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def knn_predict(train_features: Tensor, train_labels: Tensor, features: Tensor, k: int = 20,
                temperature: float = 0.07, n_classes: int | None = None) -> Tensor:
    """Weighted k-NN on cosine similarity; returns the predicted label of every row of ``features``."""
    train_labels = torch.as_tensor(train_labels).long()
    n_classes = n_classes or int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    sim = F.normalize(features.float(), dim=1) @ F.normalize(train_features.float(), dim=1).T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(features.shape[0], n_classes)
    votes.scatter_add_(1, train_labels[idx], torch.exp(top / temperature))
    return votes.argmax(dim=1)


def linear_probe(train_features: Tensor, train_labels: Tensor, features: Tensor, epochs: int = 300,
                 lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> Tensor:
    """Fit softmax regression on standardised ``train_features``; returns predictions for ``features``."""
    train_labels = torch.as_tensor(train_labels).long()
    mean = train_features.mean(dim=0, keepdim=True)
    std = train_features.std(dim=0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (features - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(xtr.shape[1], int(train_labels.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(head(xtr), train_labels).backward()
            opt.step()
    with torch.no_grad():
        return head(xte).argmax(dim=1)


def accuracy(predicted: Tensor, labels: Tensor) -> float:
    return float((torch.as_tensor(predicted) == torch.as_tensor(labels)).float().mean())


# -- multi-label k-NN, the early-stopped linear probe, F1 ------------------------------------------------------------
def knn_votes(train_features: Tensor, train_targets: Tensor, features: Tensor, k: int = 20,
              temperature: float = 0.07, n_classes: int | None = None) -> Tensor:
    """(M, C) share of the ``k`` nearest training rows' weights ``exp(sim / temperature)`` that goes to each class.
    ``train_targets``: (N,) class indices or (N, C) 0/1 (a neighbour then votes for each of its classes)."""
    train_targets = torch.as_tensor(train_targets)
    if train_targets.dim() == 1:
        targets = F.one_hot(train_targets.long(), n_classes or int(train_targets.max()) + 1).float()
    else:
        targets = train_targets.float()
    k = min(k, train_features.shape[0])
    sim = F.normalize(features.float(), dim=1) @ F.normalize(train_features.float(), dim=1).T
    top, idx = sim.topk(k, dim=1)
    # subtracting each row's largest similarity leaves the shares as they are and keeps exp() finite
    weights = torch.exp((top - top[:, :1]) / temperature)  # (M, k)
    votes = torch.einsum("mk,mkc->mc", weights, targets[idx])
    return votes / weights.sum(dim=1, keepdim=True)


def knn_multilabel_predict(train_features: Tensor, train_targets: Tensor, features: Tensor, k: int = 20,
                           temperature: float = 0.07, threshold: float = 0.5) -> Tensor:
    """Multi-label weighted k-NN: (M, C) bool, a class where its share of the neighbours' weight > ``threshold``."""
    return knn_votes(train_features, train_targets, features, k, temperature) > threshold


@dataclass
class LinearProbe:
    """A fitted linear probe: standardisation, the kept head, and how the fit went."""

    mean: Tensor
    std: Tensor
    head: torch.nn.Linear
    multilabel: bool
    best_epoch: int  # 1-based epoch whose head is kept
    epochs_run: int
    train_loss: list[float] = field(default_factory=list)  # after each epoch's step
    validation_loss: list[float] = field(default_factory=list)  # after each epoch's step (empty without validation)

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        return self.head((features.float() - self.mean) / self.std)

    def predict(self, features: Tensor) -> Tensor:
        """(M,) class indices, or (M, C) bool for a multi-label probe (sigmoid > 0.5)."""
        z = self.logits(features)
        return z > 0 if self.multilabel else z.argmax(dim=1)


def _probe_loss(logits: Tensor, targets: Tensor, multilabel: bool) -> Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def fit_linear_probe(train_features: Tensor, train_targets: Tensor, val_features: Tensor | None = None,
                     val_targets: Tensor | None = None, epochs: int = 500, lr: float = 0.05,
                     weight_decay: float = 1e-4, patience: int = 50, n_classes: int | None = None,
                     seed: int = 0) -> LinearProbe:
    """Fit a linear probe with early stopping on the validation loss (see the module docstring).
    ``train_targets``: (N,) class indices (softmax) or (N, C) 0/1 (multi-label: sigmoid + binary cross-entropy)."""
    train_targets = torch.as_tensor(train_targets)
    multilabel = train_targets.dim() == 2
    ytr = train_targets.float() if multilabel else train_targets.long()
    n_out = ytr.shape[1] if multilabel else (n_classes or int(ytr.max()) + 1)
    train_features = train_features.float()
    mean = train_features.mean(dim=0, keepdim=True)
    std = train_features.std(dim=0, keepdim=True).nan_to_num(1.0).clamp_min(1e-6)
    xtr = (train_features - mean) / std
    has_val = val_features is not None and val_targets is not None and len(val_features) > 0
    if has_val:
        xva = (val_features.float() - mean) / std
        yva = torch.as_tensor(val_targets)
        yva = yva.float() if multilabel else yva.long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(xtr.shape[1], n_out)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    probe = LinearProbe(mean, std, head, multilabel, best_epoch=0, epochs_run=0)
    best_loss, best_state = float("inf"), copy.deepcopy(head.state_dict())
    for epoch in range(1, epochs + 1):
        with torch.enable_grad():
            opt.zero_grad()
            loss = _probe_loss(head(xtr), ytr, multilabel)
            loss.backward()
            opt.step()
        probe.epochs_run = epoch
        with torch.no_grad():
            probe.train_loss.append(float(_probe_loss(head(xtr), ytr, multilabel)))
            if not has_val:
                continue
            val_loss = float(_probe_loss(head(xva), yva, multilabel))
        probe.validation_loss.append(val_loss)
        if val_loss < best_loss:
            best_loss, probe.best_epoch, best_state = val_loss, epoch, copy.deepcopy(head.state_dict())
        elif epoch - probe.best_epoch >= patience:
            break
    if has_val:
        head.load_state_dict(best_state)
    else:
        probe.best_epoch = probe.epochs_run
    return probe


def as_indicator(labels: Tensor, n_classes: int) -> Tensor:
    """(M,) class indices -> (M, C) bool; (M, C) 0/1 -> bool."""
    labels = torch.as_tensor(labels)
    if labels.dim() == 1:
        return F.one_hot(labels.long(), n_classes).bool()
    return labels.bool()


def f1_scores(predicted: Tensor, truth: Tensor, n_classes: int | None = None) -> dict[str, float]:
    """Micro and macro F1 of class indices (M,) or 0/1 indicators (M, C) against the truth (same form).
    Macro averages over the classes that occur in the truth or the predictions (as scikit-learn does)."""
    truth = torch.as_tensor(truth)
    predicted = torch.as_tensor(predicted)
    if n_classes is None:
        n_classes = truth.shape[1] if truth.dim() == 2 else int(max(truth.max(), predicted.max())) + 1
    p, t = as_indicator(predicted, n_classes), as_indicator(truth, n_classes)
    tp = (p & t).sum(dim=0).double()
    fp = (p & ~t).sum(dim=0).double()
    fn = (~p & t).sum(dim=0).double()
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    micro = float(2 * tp.sum() / denominator.sum()) if bool(present.any()) else 0.0
    macro = float((2 * tp[present] / denominator[present]).mean()) if bool(present.any()) else 0.0
    return {"micro_f1": micro, "macro_f1": macro}
