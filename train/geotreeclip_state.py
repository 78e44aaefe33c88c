"""GeoTreeCLIP pretraining state: the process group (``Dist``), checkpoints (model, optimiser, scheduler, stream
positions, RNG states, statistics; written atomically, read back with ``weights_only=True``) and the metrics log.

Used by ``train.geotreeclip_run``; re-exported by ``train.geotreeclip``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from train.recipe import Recipe
from treemap.errors import TreemapError

CHECKPOINT_VERSION = 1


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
    keys = ("batch_size", "accumulation", "positives", "temperature", "month_dropout")
    if r["train"].get("aux_dropout"):  # only when used: checkpoints from before the option still resume
        keys += ("aux_dropout",)
    return {"model": r["model"], "data": {k: v for k, v in r["data"].items() if k != "workers"},
            "train": {k: r["train"][k] for k in keys}}


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
