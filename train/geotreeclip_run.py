"""GeoTreeCLIP pretraining, the run: setup from a recipe, resume, the loop of optimiser steps (accumulation, DDP
gradient sync, clipping, AdamW, schedule), periodic checkpoints and metrics, and the final ``.safetensors`` model.

``run`` is the entry point (used by ``train.geotreeclip.main`` and ``train.demo_model``); re-exported by
``train.geotreeclip``.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from train.data import SpeciesFilter, StreamBatches, compute_statistics, scan
from train.fastpath import folded_month_encoder
from train.geotreeclip_model import (
    PromptTokens, _autocast, _merge, build_model, contrastive_loss, lr_factor, param_groups,
)
from train.geotreeclip_state import (
    CHECKPOINT_VERSION, Dist, Metrics, _compat, _rng_state, _set_rng_state, latest_checkpoint, load_checkpoint,
    save_checkpoint,
)
from train.recipe import Recipe, RecipeError
from treemap.models import GeoTreeCLIP, ModelCard, save_model
from treemap.shards import list_shards

log = logging.getLogger("train.geotreeclip")


class TrainingInterrupted(RuntimeError):
    """Raised by ``stop_after`` (tests): the run stops like a crash, without a final checkpoint."""


# -- the run -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    model: Path | None
    steps: int
    final_loss: float | None
    seconds: float
    out: Path


def _total_steps(recipe: Recipe, kept: int) -> int:
    t = recipe.train
    if t.steps is not None:
        return int(t.steps)
    return max(1, int(t.epochs * kept // (t.batch_size * t.accumulation)))


def run(recipe: Recipe, *, resume: bool = True, stop_after: int | None = None, device: str = "auto") -> TrainResult:
    """Train as the recipe says (this process's share under torchrun); returns where the model went."""
    t0 = time.perf_counter()
    ctx = Dist.setup(device)
    t, d = recipe.train, recipe.data
    if d.streams % ctx.world:
        raise RecipeError(f"data.streams ({d.streams}) must be a multiple of the number of processes ({ctx.world})")
    mine = list(range(ctx.rank, d.streams, ctx.world))
    workers = d.workers
    if workers > len(mine):
        raise RecipeError(f"data.workers ({workers}) exceeds the {len(mine)} stream(s) of a process")
    out = Path(recipe.output.dir)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()

    shards = list_shards(list(d.shards))
    species_filter = SpeciesFilter(frozenset(d.include_species), frozenset(d.exclude_species))
    ckpt_path = latest_checkpoint(out) if resume else None
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None and state["compat"] != _compat(recipe):
        raise RecipeError(f"{ckpt_path} was written by a different recipe (model, data or batch); "
                          f"use another output folder or --no-resume")
    if state is None:
        counts = ctx.broadcast(scan(shards, species_filter) if ctx.main else None)
        n = d.normalisation
        stats = ctx.broadcast(compute_statistics(shards, n.samples, n.band_quantiles, n.aux_ranges, species_filter)
                              if ctx.main else None)
    else:
        counts, stats = state["counts"], state["stats"]
        log.info("resuming from %s (step %d)", ckpt_path, state["step"])
    if counts["kept"] == 0:
        raise RecipeError("no training samples left after the species filter")
    total = _total_steps(recipe, counts["kept"])
    warmup = t.warmup_steps if t.warmup_steps is not None else int(round(t.warmup_fraction * total))

    model = build_model(recipe, stats).to(ctx.device).train()
    ddp = model
    if ctx.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, t.min_lr_ratio))
    step, positions, last_loss = 0, {}, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        positions = {int(k): tuple(v) for k, v in state["positions"].items()}
        rngs = state["rng"]
        _set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
        last_loss = state.get("loss")

    per_stream = t.batch_size // d.streams
    micro = step * t.accumulation
    dataset = StreamBatches(shards, mine, d.streams, per_stream, seed=recipe.model.seed,
                            shuffle_buffer=d.shuffle_buffer, species_filter=species_filter,
                            positions={s: positions.get(s, (0, 0)) for s in mine}, month_dropout=t.month_dropout,
                            start_step=micro, aux_dropout=t.aux_dropout)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=2 if workers else None)
    batches = iter(loader)
    tokens = PromptTokens(model.config.context_length)
    autocast = _autocast(recipe, ctx.device)
    metrics = Metrics(out / "metrics.jsonl", ctx.main, step)
    if ctx.main:
        log.info("%d sample(s) in %d shard(s); %d step(s) of %d x %d sample(s); %d stream(s), %d process(es)",
                 counts["kept"], len(shards), total, t.batch_size, t.accumulation, d.streams, ctx.world)
        metrics.write({"event": "start", "step": step, "steps": total, "samples": counts["kept"],
                       "world_size": ctx.world, "recipe": recipe.source})

    params = [p for p in model.parameters() if p.requires_grad]
    with folded_month_encoder(model):
        step, last_loss = _loop(ctx, recipe, ddp, model, optimizer, scheduler, batches, tokens, autocast, metrics,
                                params, out, step, total, workers, positions, counts, stats, last_loss, stop_after,
                                t0)

    model_path = None
    if ctx.main:
        model_path = _save_final(recipe, model, out, step, last_loss, counts)
        metrics.write({"event": "end", "step": step, "steps": total, "final_loss": last_loss,
                       "model": str(model_path), "time": round(time.perf_counter() - t0, 2)})
    ctx.barrier()
    return TrainResult(model_path, step, last_loss, time.perf_counter() - t0, out)


def _loop(ctx, recipe, ddp, model, optimizer, scheduler, batches, tokens, autocast, metrics, params, out, step,
          total, workers, positions, counts, stats, last_loss, stop_after, t0):
    """Optimiser steps from ``step`` to ``total``; returns the step reached and the last loss."""
    t = recipe.train
    window_t, window_samples, window_losses = time.perf_counter(), 0, []
    while step < total:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for k in range(t.accumulation):
            parts = [next(batches) for _ in range(max(1, workers))]
            batch = _merge(parts)
            positions.update(batch["positions"])
            sync = nullcontext() if (k == t.accumulation - 1 or ctx.world == 1) else ddp.no_sync()
            with sync:
                loss = contrastive_loss(ddp, batch, tokens, ctx.device, t.temperature, t.positives, autocast)
                (loss / t.accumulation).backward()
            step_loss += loss.item() / t.accumulation
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        last_loss = step_loss
        window_samples += t.batch_size * t.accumulation
        window_losses.append(step_loss)
        if ctx.main and (step % t.log_every == 0 or step == total):
            elapsed = time.perf_counter() - window_t
            metrics.write({"step": step, "steps": total, "loss": float(np.mean(window_losses)),
                           "lr": scheduler.get_last_lr()[0], "epoch": step * t.batch_size * t.accumulation
                           / counts["kept"], "samples_per_s": window_samples / max(elapsed, 1e-9),
                           "time": round(time.perf_counter() - t0, 2)})
            window_t, window_samples, window_losses = time.perf_counter(), 0, []
        if step % t.checkpoint_every == 0 or step == total:
            _checkpoint(ctx, out, recipe, model, optimizer, scheduler, step, positions, counts, stats, last_loss)
        if stop_after is not None and step >= stop_after and step < total:
            raise TrainingInterrupted(f"stopped after step {step} (stop_after)")

    return step, last_loss



def _checkpoint(ctx: Dist, out: Path, recipe: Recipe, model, optimizer, scheduler, step: int, positions: dict,
                counts: dict, stats: dict, loss: float | None) -> None:
    all_positions = {}
    for part in ctx.gather(dict(positions)):
        all_positions.update(part)
    rngs = ctx.gather(_rng_state())
    if ctx.main:
        state = {
            "version": CHECKPOINT_VERSION, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "positions": {str(k): list(v) for k, v in sorted(all_positions.items())}, "rng": rngs,
            "counts": counts, "stats": stats, "loss": loss, "compat": _compat(recipe),
        }
        path = save_checkpoint(out, state, recipe.train.keep_checkpoints)
        log.info("checkpoint %s", path)
    ctx.barrier()


def _save_final(recipe: Recipe, model: GeoTreeCLIP, out: Path, steps: int, loss: float | None, counts: dict) -> Path:
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[recipe.output.dtype]
    final = copy.deepcopy(model).eval().to("cpu", dtype)
    excluded = ", ".join(recipe.data.exclude_species) or "none"
    notes = (f"{recipe.output.notes} " if recipe.output.notes else "") + (
        f"Trained by train.geotreeclip ({Path(recipe.source).name if recipe.source else 'recipe'}): {steps} steps "
        f"of {recipe.train.batch_size} x {recipe.train.accumulation} samples on {counts['kept']} samples, "
        f"final loss {loss:.4f}; species held out: {excluded}; fixed normalisation from the training shards; "
        f"weights stored as {recipe.output.dtype}.")
    card = ModelCard.for_model(final, species_lists=tuple(recipe.output.species_lists), notes=notes)
    path = save_model(final, card, out / recipe.output.model)
    log.info("model written to %s", path)
    return path
