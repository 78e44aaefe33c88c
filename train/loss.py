"""Symmetric InfoNCE (CLIP loss) over the global batch, with a gather that works on every torch.distributed backend.

Location embeddings and text embeddings of all ranks are gathered, so every rank computes the loss of the whole
global batch (the same value on each). The gather keeps gradients: its backward sums the incoming gradients over
ranks (``all_reduce``) and returns this rank's rows. With DistributedDataParallel averaging parameter gradients over
``W`` ranks, the update equals the gradient of the global-batch loss, as in a single process with that batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x`` (equal row counts on every rank) over ranks, in rank order; differentiable."""
    return _GatherRows.apply(x) if _distributed() else x


def gather_ids(ids: Tensor) -> Tensor:
    """Like :func:`gather_rows` for integer tensors, without gradients."""
    if not _distributed():
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def info_nce(location: Tensor, text: Tensor, temperature: float = 0.07, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of matching rows of ``location`` and ``text`` (both ``(N, E)``, not normalised).

    ``labels`` (``(N,)`` ints) switches to label positives: every pair with the same label counts as a positive
    (targets spread evenly over them), which removes the contradiction of duplicate texts in one batch.
    """
    loc = F.normalize(location.float(), dim=-1)
    txt = F.normalize(text.float(), dim=-1)
    logits = loc @ txt.T / temperature
    if labels is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
