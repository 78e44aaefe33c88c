"""GeoTreeCLIP pretraining, the model side of one batch: the model built from a recipe, its frozen parameters,
AdamW parameter groups, the warmup + cosine learning rate, prompt tokens, autocast, and the InfoNCE loss of a batch.

Used by ``train.geotreeclip_run`` (the loop) and ``train.evaluate``; re-exported by ``train.geotreeclip``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from train.data import hash_seed
from train.loss import gather_ids, gather_rows, info_nce
from train.recipe import Recipe, RecipeError
from treemap.models import GeoTreeCLIP, GeoTreeCLIPConfig, load_model, random_model
from treemap.models.tokenizer import tokenize

FROZEN = ("temporal_extractor.clip_vit.model.vision_model.post_layernorm.",)
"""Parameters the forward never uses (GeoTreeCLIP reads the vision tower before its post-LayerNorm): frozen, so
DistributedDataParallel needs no unused-parameter search."""


def build_model(recipe: Recipe, stats: dict[str, list[float]]) -> GeoTreeCLIP:
    m = recipe.model
    if m.init:
        model, _ = load_model(m.init)
    else:
        base = GeoTreeCLIPConfig.tiny if m.size == "tiny" else GeoTreeCLIPConfig.full
        try:
            config = base(**m.overrides)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"model.overrides: {exc}") from None
        model = random_model(config, seed=m.seed)
    model.set_normalisation("fixed", **stats)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN))
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and convolution weights); none on biases, LayerNorms and embeddings."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim >= 2 and "embedding" not in name.split(".")[-2]
        (decay if is_matrix else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine from 1 down to ``min_ratio`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PromptTokens:
    """Token ids of prompts, tokenised once each."""

    def __init__(self, context_length: int):
        self.context_length = context_length
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        new = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if new:
            for p, ids in zip(new, tokenize(new, context_length=self.context_length)):
                self.cache[p] = ids
        return torch.stack([self.cache[p] for p in prompts])


def contrastive_loss(model, batch: dict, tokens: PromptTokens, device: torch.device, temperature: float,
                     positives: str, autocast) -> torch.Tensor:
    """The global-batch InfoNCE of one (local) batch: distinct prompts are encoded once per rank."""
    prompts = batch["prompts"]
    unique = list(dict.fromkeys(prompts))
    index = torch.tensor([unique.index(p) for p in prompts], device=device)
    with autocast:
        location, text = model(batch["images"].to(device), batch["aux"].to(device), tokens(unique).to(device))
    text_rows = text[index]
    labels = None
    if positives == "label":
        ids = torch.tensor([hash_seed(p) for p in prompts], dtype=torch.int64, device=device)
        labels = gather_ids(ids)
    return info_nce(gather_rows(location.float()), gather_rows(text_rows.float()), temperature, labels)


def _merge(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {
        "images": torch.cat([p["images"] for p in parts]),
        "aux": torch.cat([p["aux"] for p in parts]),
        "prompts": [x for p in parts for x in p["prompts"]],
        "keys": [x for p in parts for x in p["keys"]],
        "positions": {k: v for p in parts for k, v in p["positions"].items()},
    }


def _autocast(recipe: Recipe, device: torch.device):
    precision = recipe.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
