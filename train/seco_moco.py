"""SeCo-Eco pretraining objective: the settings (``SecoTrainConfig``) and ``SecoTrainer`` -- MoCo v2 query and
momentum key encoders, one queue of negatives per subspace, the InfoNCE loss, SGD with cosine decay, and the
checkpoint state (tensors and plain containers only).

Used by ``train.seco_train``; re-exported by ``train.seco_eco``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from train.seco_patches import augment, season_pairs
from treemap.errors import ModelError
from treemap.models.seco import SecoModel


# -- config and trainer -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecoTrainConfig:
    """Pretraining settings; defaults are the SSL4Eco / MoCo v2 values."""

    steps: int = 100_000
    batch_size: int = 256
    lr: float = 0.03
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    key_momentum: float = 0.999
    queue_size: int = 65_536
    temperature: float = 0.07
    noise: float = 0.05
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2 or self.queue_size < self.batch_size:
            raise ValueError("need steps >= 1, batch_size >= 2 and queue_size >= batch_size")
        if not 0 <= self.key_momentum < 1 or self.temperature <= 0 or self.lr <= 0:
            raise ValueError("need 0 <= key_momentum < 1, temperature > 0 and lr > 0")


CHECKPOINT_VERSION = 1


class SecoTrainer:
    """Query/key encoders, queues and optimiser of one MoCo v2 seasonal-contrast run."""

    def __init__(self, model: SecoModel, config: SecoTrainConfig):
        self.config = config
        self.model = model.train()
        self.key = copy.deepcopy(model).train()
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.subspaces = tuple(model.config.subspaces)
        g = torch.Generator().manual_seed(config.seed + 1)
        queue = torch.randn(len(self.subspaces), config.queue_size, model.config.projection_dim, generator=g)
        self.queue = F.normalize(queue, dim=-1)
        self.queue_ptr = 0
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.sgd_momentum,
                                         weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * step / self.config.steps))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.config.key_momentum
        for pk, pq in zip(self.key.parameters(), self.model.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        for bk, bq in zip(self.key.buffers(), self.model.buffers()):
            bk.copy_(bq)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """keys: (S, B, D) normalised."""
        n, size = keys.shape[1], self.queue.shape[1]
        idx = (torch.arange(n) + self.queue_ptr) % size
        self.queue[:, idx] = keys
        self.queue_ptr = int((self.queue_ptr + n) % size)

    def loss(self, inputs: Tensor, valid: Tensor) -> tuple[Tensor, dict[str, float], Tensor]:
        """inputs (B, 4, 9, P, P) model input, valid (B, 4) -> loss, per-subspace losses, keys to enqueue."""
        c, g = self.config, self.generator
        rows = torch.arange(inputs.shape[0])
        pairs = season_pairs(valid, g)
        image_a, image_b = inputs[rows, pairs[:, 0]], inputs[rows, pairs[:, 1]]
        query = {k: F.normalize(v, dim=1) for k, v in self.model(augment(image_a, g, c.noise)).items()}
        with torch.no_grad():
            self._momentum_update()
            other = {k: F.normalize(v, dim=1) for k, v in self.key(augment(image_b, g, c.noise)).items()}
            same = {}
            if len(self.subspaces) > 1:
                same = {k: F.normalize(v, dim=1) for k, v in self.key(augment(image_a, g, c.noise)).items()}
        losses, enqueue = {}, []
        for i, name in enumerate(self.subspaces):
            q = query[name]
            if i == 0:  # season-agnostic: the other season is the positive
                pos, hard = other[name], None
            else:  # season-specific: the same season is the positive, the other season a hard negative
                pos, hard = same[name], other[name]
            logits = [(q * pos).sum(dim=1, keepdim=True)]
            if hard is not None:
                logits.append((q * hard).sum(dim=1, keepdim=True))
            logits.append(q @ self.queue[i].T)
            logits = torch.cat(logits, dim=1) / c.temperature
            losses[name] = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))
            enqueue.append(pos)
        total = torch.stack(list(losses.values())).mean()
        return total, {k: float(v.detach()) for k, v in losses.items()}, torch.stack(enqueue)

    def step(self, inputs: Tensor, valid: Tensor) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)
        total, parts, keys = self.loss(inputs, valid)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self._enqueue(keys)
        self.step_count += 1
        return {"step": self.step_count, "loss": float(total.detach()), **{f"loss_{k}": v for k, v in parts.items()},
                "lr": self.optimizer.param_groups[0]["lr"]}

    # checkpoints: tensors and plain containers only (read back with weights_only=True)
    def state(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "model": self.model.state_dict(), "key": self.key.state_dict(),
                "queue": self.queue, "queue_ptr": self.queue_ptr, "optimizer": self.optimizer.state_dict(),
                "step": self.step_count, "generator": self.generator.get_state(), "train_config": asdict(self.config),
                "mean": list(self.model.stats.mean), "std": list(self.model.stats.std)}

    def restore(self, state: dict) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ModelError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        self.model.load_state_dict(state["model"])
        self.key.load_state_dict(state["key"])
        self.queue = state["queue"].clone()
        self.queue_ptr = int(state["queue_ptr"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])
