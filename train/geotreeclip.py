"""Contrastive pretraining of GeoTreeCLIP on GlobalGeoTree-format shards.

    python -m train.geotreeclip --recipe recipes/pretrain-tiny-demo.yaml [--shards DIR] [--out DIR]
    torchrun --nproc_per_node 8 -m train.geotreeclip --recipe recipes/pretrain-geotreeclip-6m.yaml
    treemap train geotreeclip ...  (the same program)

What one optimiser step does: ``accumulation`` micro-steps, each one global batch (``batch_size`` samples over all
ranks) -> location embeddings and text embeddings (each distinct prompt of a rank's batch encoded once) -> gathered
over ranks -> symmetric InfoNCE at temperature 0.07 -> backward (DDP gradient sync on the last micro-step only); then
gradient clipping, AdamW, and the learning rate of a linear warmup followed by a cosine decay.

* Device and precision: CUDA with bf16 autocast where available (``precision: auto``), else float32 on the CPU.
* Distributed: under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) a process group is started, nccl on GPUs and gloo on
  CPUs; the model is wrapped in DistributedDataParallel; data streams are split per rank (see ``train.data``).
* Normalisation: "fixed" -- statistics computed once from the training shards (``train.data.compute_statistics``),
  kept in the checkpoints and in the final model card. The official per-batch min/max rule would give every rank
  (and every batch size) different input scaling.
* Checkpoints every ``checkpoint_every`` steps under ``<out>/checkpoints`` (model, optimiser, scheduler, stream
  positions, RNG states of every rank, statistics), written atomically, read back with ``weights_only=True``. A run
  started again with the same recipe and output folder resumes from the latest one and produces the same weights as
  an uninterrupted run.
* Metrics: one line per ``log_every`` steps on stderr and one JSON object per line in ``<out>/metrics.jsonl``.
* Result: ``<out>/<output.model>``, a treemap ``.safetensors`` model with its card.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from train.fastpath import folded_month_encoder
from train.data import SpeciesFilter, StreamBatches, compute_statistics, hash_seed, scan
from train.loss import gather_ids, gather_rows, info_nce
from train.recipe import Recipe, RecipeError, load_recipe
from treemap.errors import TreemapError
from treemap.models import GeoTreeCLIP, GeoTreeCLIPConfig, ModelCard, load_model, random_model, save_model
from treemap.models.tokenizer import tokenize
from treemap.shards import list_shards

log = logging.getLogger("train.geotreeclip")

CHECKPOINT_VERSION = 1
FROZEN = ("temporal_extractor.clip_vit.model.vision_model.post_layernorm.",)
"""Parameters the forward never uses (GeoTreeCLIP reads the vision tower before its post-LayerNorm): frozen, so
DistributedDataParallel needs no unused-parameter search."""


class TrainingInterrupted(RuntimeError):
    """Raised by ``stop_after`` (tests): the run stops like a crash, without a final checkpoint."""


# -- process group ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str = "auto") -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            if local_world > 1:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        return cls(rank, world, local, dev)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


# -- model and optimiser --------------------------------------------------------------------------------------------
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


# -- checkpoints ------------------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _compat(recipe: Recipe) -> dict:
    """The recipe fields a checkpoint must agree with to be resumed."""
    r = recipe.to_json()
    return {"model": r["model"], "data": {k: v for k, v in r["data"].items() if k != "workers"},
            "train": {k: r["train"][k] for k in ("batch_size", "accumulation", "positives", "temperature",
                                                 "month_dropout")}}


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(checkpoint_dir(out).glob("step-*.pt"))
    return found[-1] if found else None


def save_checkpoint(out: Path, state: dict, keep: int) -> Path:
    folder = checkpoint_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state['step']:09d}.pt"
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("step-*.pt"))[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TreemapError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if state.get("version") != CHECKPOINT_VERSION:
        raise TreemapError(f"checkpoint {path} has version {state.get('version')}, expected {CHECKPOINT_VERSION}")
    return state


# -- metrics -----------------------------------------------------------------------------------------------------------
class Metrics:
    """stderr lines and a JSON-lines file (rank 0 only). On resume, entries after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if "loss" in record:
            print(f"step {record['step']}/{record['steps']}  loss {record['loss']:.4f}  lr {record['lr']:.3g}  "
                  f"epoch {record['epoch']:.2f}  {record['samples_per_s']:.0f} samples/s", file=sys.stderr,
                  flush=True)


# -- the run -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    model: Path | None
    steps: int
    final_loss: float | None
    seconds: float
    out: Path


def _autocast(recipe: Recipe, device: torch.device):
    precision = recipe.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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
                            start_step=micro)
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


# -- command line ------------------------------------------------------------------------------------------------------
def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_parser(prog: str = "python -m train.geotreeclip") -> argparse.ArgumentParser:
    """The options of ``python -m train.geotreeclip`` = ``treemap train geotreeclip``."""
    from train import Parser

    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, type=Path,
                        help="YAML training recipe (recipes/pretrain-*.yaml)")
    parser.add_argument("--shards", nargs="+", help="training shards (folders, files, globs); replaces data.shards")
    parser.add_argument("--out", type=Path, help="output folder; replaces output.dir")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set train.steps=100")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in the output folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto (the default: CUDA when this machine has it, else the CPU), cpu or cuda; under "
                             "torchrun each rank takes the GPU of its LOCAL_RANK")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m train.geotreeclip`` and ``treemap train geotreeclip``: prints the model's path."""
    parser = build_parser(*([prog] if prog else []))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from treemap.infer import check_device

        check_device(args.device)  # --device cuda without CUDA: one line naming this machine's devices
        overrides = parse_overrides(args.set)
        if args.shards:
            overrides["data.shards"] = [str(Path(s).absolute()) if "://" not in s else s for s in args.shards]
        if args.out:
            overrides["output.dir"] = str(args.out.absolute())
        recipe = load_recipe(args.recipe, overrides)
        result = run(recipe, resume=not args.no_resume, stop_after=args.stop_after, device=args.device)
    except TrainingInterrupted as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 3
    except TreemapError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result.model is not None:
        print(result.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
