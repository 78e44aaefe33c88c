"""Frozen-feature evaluation of a SeCo-Eco backbone (the SSL4Eco protocol): k-NN and a linear probe.

* :func:`embed`: model input (or reflectance) -> backbone features, in eval mode without gradients.
* :func:`knn_predict`: cosine similarity to every training feature, the ``k`` most similar vote with weight
  ``exp(similarity / temperature)`` (temperature 0.07); the class with the largest summed weight wins.
* :func:`linear_probe`: a linear classifier (softmax regression) on standardised frozen features, full-batch Adam.
"""

from __future__ import annotations

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
