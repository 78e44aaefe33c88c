"""Few-shot classification heads on GeoTreeCLIP location embeddings, and their files.

A head maps a location embedding to species probabilities without the text tower: ``softmax(scale * z W^T + b)``
with ``z`` the L2-normalised embedding. Two kinds:

* ``prototype``: each species' row of ``W`` is the normalised mean of its samples' normalised embeddings, ``b = 0``
  and ``scale`` is the model's logit scale (100), exactly the form of zero-shot classification with the class
  prototypes in place of the text features. Works from one sample per species.
* ``linear``: multinomial logistic regression on ``z`` (class-balanced cross-entropy plus an L2 penalty on ``W``,
  full-batch L-BFGS, started from the prototypes), ``scale = 1``. Better when there are several samples per species
  and the species overlap in embedding space.

A head file is a ``.safetensors`` with tensors ``weight`` (C, D) and ``bias`` (C,) and JSON metadata: the kind, the
scale, the taxonomy of the C species (level0, family, genus, species), sample counts, the key of the model whose
embeddings it was fitted on, and the cross-validated top-1 accuracy. It is untrusted input: only tensors and strings
are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from treemap.documents import check_file
from treemap.durable import replace, sync_file, write_error
from treemap.errors import ModelError
from treemap.models.geotreeclip import LOGIT_SCALE
from treemap.taxonomy import SpeciesList, Taxon

HEAD_KINDS = ("prototype", "linear")
HEAD_FORMAT = "treemap-head"
HEAD_VERSION = 1


@dataclass(frozen=True)
class Head:
    kind: str
    weight: torch.Tensor  # (C, D) float32
    bias: torch.Tensor  # (C,) float32
    scale: float
    species: SpeciesList
    model_key: str
    counts: tuple[int, ...] = ()
    cv_top1: float | None = None
    #: Whose features the head takes: None for GeoTreeCLIP's location embedding; for SeCo-Eco, the recipe
    #: (``{"encoder": "seco-eco", "chip": ..., "stride": ..., "season": ...}``) its features were made with.
    encoder: dict | None = None

    @property
    def encoder_name(self) -> str:
        return "geotreeclip" if self.encoder is None else str(self.encoder.get("encoder"))

    def __post_init__(self):
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],) \
                or len(self.species) != self.weight.shape[0]:
            raise ModelError(f"head shapes disagree: weight {tuple(self.weight.shape)}, bias "
                             f"{tuple(self.bias.shape)}, {len(self.species)} species")

    @property
    def embed_dim(self) -> int:
        return int(self.weight.shape[1])

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C) float32 probabilities for (B, D) embeddings (float32 whatever the input dtype)."""
        with torch.autocast(embeddings.device.type, enabled=False):
            z = F.normalize(embeddings.float(), dim=-1)
            w = self.weight.to(z.device)
            return (self.scale * (z @ w.T) + self.bias.to(z.device)).softmax(dim=-1)


def _prototypes(z: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    sums = torch.zeros(n_classes, z.shape[1], dtype=z.dtype).index_add_(0, labels, z)
    return F.normalize(sums, dim=-1)


def fit_weights(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int, kind: str, *,
                weight_decay: float = 1e-3, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(weight, bias, scale)`` of a head of ``kind`` fitted to embeddings (N, D) with labels (N,) in [0, C)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r} ({', '.join(HEAD_KINDS)})")
    z = F.normalize(embeddings.detach().double(), dim=-1)
    labels = labels.long()
    protos = _prototypes(z, labels, n_classes)
    if kind == "prototype":
        return protos.float(), torch.zeros(n_classes), LOGIT_SCALE
    counts = torch.bincount(labels, minlength=n_classes).double()
    class_weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), counts.new_zeros(()))
    weight = (protos * 10.0).clone().requires_grad_(True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels, weight=class_weight)
        loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach().float(), bias.detach().float(), 1.0


def cross_validated_top1(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int, kind: str, *,
                         folds: int = 5, seed: int = 0) -> float | None:
    """Top-1 accuracy of ``kind`` heads in stratified k-fold cross-validation (k = min(folds, smallest class
    with at least 2 samples)); samples of single-sample species are always in training. None when no species has
    two samples."""
    labels = labels.long()
    counts = torch.bincount(labels, minlength=n_classes)
    multi = counts >= 2
    if not bool(multi.any()):
        return None
    k = int(min(folds, int(counts[multi].min())))
    rng = np.random.default_rng(seed)
    fold = np.full(labels.shape[0], -1)
    for c in np.flatnonzero(multi.numpy()):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        fold[idx] = np.arange(idx.size) % k
    correct = total = 0
    for f in range(k):
        test = torch.from_numpy(fold == f)
        w, b, s = fit_weights(embeddings[~test], labels[~test], n_classes, kind)
        z = F.normalize(embeddings[test].float(), dim=-1)
        pred = (s * z @ w.T + b).argmax(dim=-1)
        correct += int((pred == labels[test]).sum())
        total += int(test.sum())
    return correct / total


def fit_head(embeddings: torch.Tensor, taxa: list[Taxon], kind: str, model_key: str, *,
             cross_validate: bool = True) -> Head:
    """A head over the distinct species of ``taxa`` (one per sample, in first-seen order)."""
    if len(taxa) != embeddings.shape[0] or not taxa:
        raise ModelError("few-shot fitting needs one label per embedding and at least one sample")
    species: dict[str, Taxon] = {}
    for t in taxa:
        species.setdefault(t.species, t)
    names = list(species)
    labels = torch.tensor([names.index(t.species) for t in taxa])
    w, b, s = fit_weights(embeddings, labels, len(names), kind)
    counts = tuple(int(c) for c in torch.bincount(labels, minlength=len(names)))
    cv = cross_validated_top1(embeddings, labels, len(names), kind) if cross_validate and len(names) > 1 else None
    return Head(kind, w, b, s, SpeciesList(tuple(species.values()), name="few-shot"), model_key, counts, cv)


def save_head(head: Head, path: str | os.PathLike) -> Path:
    """Write a head file atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": HEAD_FORMAT, "version": str(HEAD_VERSION), "kind": head.kind, "scale": repr(float(head.scale)),
        "model_key": head.model_key,
        "taxa": json.dumps([[t.level0, t.family, t.genus, t.species] for t in head.species.taxa]),
        "counts": json.dumps(list(head.counts)),
        "cv_top1": json.dumps(head.cv_top1),
    }
    if head.encoder is not None:
        meta["encoder"] = json.dumps(head.encoder, sort_keys=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"weight": head.weight.float().contiguous(), "bias": head.bias.float().contiguous()}, str(tmp),
                  metadata=meta)
        sync_file(tmp)
        replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_head(path: str | os.PathLike) -> Head:
    """Read a head file; a bad file raises :class:`ModelError` with a one-line reason."""
    from safetensors import safe_open

    path = check_file(path, what="head file", kind="safetensors", error=ModelError)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = set(fh.keys())
            if meta.get("format") != HEAD_FORMAT or keys != {"weight", "bias"}:
                raise ModelError(f"{path} is not a treemap head file")
            weight, bias = fh.get_tensor("weight").float(), fh.get_tensor("bias").float()
        taxa = tuple(Taxon(*map(str, row)) for row in json.loads(meta["taxa"]))
        head = Head(kind=meta["kind"], weight=weight, bias=bias, scale=float(meta["scale"]),
                    species=SpeciesList(taxa, name=path.stem), model_key=meta["model_key"],
                    counts=tuple(int(c) for c in json.loads(meta.get("counts", "[]"))),
                    cv_top1=json.loads(meta.get("cv_top1", "null")),
                    encoder=json.loads(meta["encoder"]) if "encoder" in meta else None)
    except ModelError:
        raise
    except Exception as exc:  # safetensors header errors, bad JSON, wrong row lengths
        raise ModelError(f"head file {path} cannot be read: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    if head.kind not in HEAD_KINDS or not torch.isfinite(weight).all() or not torch.isfinite(bias).all():
        raise ModelError(f"head file {path} holds an unknown kind or non-finite weights")
    return head
