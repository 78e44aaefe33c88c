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
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from train.geotreeclip_model import (
    FROZEN, PromptTokens, _autocast, _merge, build_model, contrastive_loss, lr_factor, param_groups,
)
from train.geotreeclip_run import TrainingInterrupted, TrainResult, _checkpoint, _loop, _save_final, _total_steps, run
from train.geotreeclip_state import (
    CHECKPOINT_VERSION, Dist, Metrics, _compat, _rng_state, _set_rng_state, _tuples, checkpoint_dir,
    latest_checkpoint, load_checkpoint, save_checkpoint,
)
from train.recipe import RecipeError, load_recipe
from treemap.errors import TreemapError

__all__ = [
    # train.geotreeclip_model
    "FROZEN", "PromptTokens", "_autocast", "_merge", "build_model", "contrastive_loss", "lr_factor", "param_groups",
    # train.geotreeclip_run
    "TrainResult", "TrainingInterrupted", "_checkpoint", "_loop", "_save_final", "_total_steps", "run",
    # train.geotreeclip_state
    "CHECKPOINT_VERSION", "Dist", "Metrics", "_compat", "_rng_state", "_set_rng_state", "_tuples", "checkpoint_dir",
    "latest_checkpoint", "load_checkpoint", "save_checkpoint",
    # command line (this module)
    "build_parser", "main", "parse_overrides",
]

log = logging.getLogger("train.geotreeclip")


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
        from treemap.devices import check_device

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
