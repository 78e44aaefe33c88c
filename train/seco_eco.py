"""SeCo-Eco pretraining: seasonal contrast (MoCo v2) on patches of phenological seasonal composites.

    python -m train.seco_eco --composites DIR/seasonal_composites.tif --out runs/x [--steps N] [--tiny] ...
    treemap train seco-eco ...  (the same program)

* Data (:func:`read_patches`): ``treemap phenology --seasonal`` writes ``seasonal_composites.tif`` (int16, nodata
  -32768, scale 1e-4, 40 bands = 4 seasons x 10 bands). It is cut into square patches (a location = a patch); a
  season of a patch is usable when at least ``min_valid`` of its pixels have all 10 bands; patches with fewer than
  2 usable seasons are dropped (a location needs two images).
* Sampling (:func:`location_weights`): locations are drawn with replacement, weight 1/4 where the mean NDVI is below
  0.1 in every usable season (bare ground, water, snow), 1 elsewhere. The mountain weight (x2) of SSL4Eco needs an
  elevation input, which this data source does not have, so it is not applied.
* Pairs (:func:`season_pairs`): per location, two different usable seasons drawn without replacement: query and key.
* Objective (:class:`SecoTrainer`): MoCo v2 -- a query encoder trained by SGD, a key encoder following it by momentum
  (``key_momentum``, 0.999), one queue of negatives per subspace (``queue_size``, 65,536), InfoNCE at
  ``temperature``. The default temperature is 0.07 (the SeCo / SSL4Eco value and that of MoCo v1; MoCo v2 used 0.2:
  set ``--temperature 0.2`` for it). Subspaces (see ``treemap.models.seco``):

  - ``agnostic``: query = augmented image of season a; positive = augmented image of season b of the same location;
    negatives = the agnostic queue.
  - ``season`` (every subspace after the first): positive = a second augmentation of the season-a image; negatives =
    the season-b image of the same location (hard negative) and that subspace's queue.

  The loss is the mean over subspaces. Augmentations: random flips, 90-degree rotations, Gaussian noise (in
  normalised units). Not done here: MoCo's shuffled BatchNorm (it needs several GPUs; single process only).
* Optimiser: SGD with momentum 0.9 and weight decay 1e-4, cosine learning-rate decay (MoCo v2 settings; lr 0.03 for a
  batch of 256).
* Input statistics: per-channel mean/std over the usable pixels of the training patches, stored in the model file.
* Checkpoints (``checkpoint_every`` > 0): ``<out>/checkpoint.pt`` (tensors and plain containers only, read back with
  ``weights_only=True``): both encoders, queues, optimiser, step, sampler RNG. A run started again with the same
  output folder resumes from it.
* Result: ``<out>/seco.safetensors`` (``treemap.models.seco.save_seco``) and ``<out>/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from treemap.errors import ModelError, OutputError, SecoDataError, TreemapError
from treemap.models.seco import (
    ChannelStats, SecoConfig, SecoModel, compute_stats, random_seco, raw_channels, save_seco, to_input,
)
from treemap.phenology import BAND_ORDER, SEASONS

log = logging.getLogger("train.seco_eco")

NODATA = -32768
SCALE = 1e-4
LOW_NDVI = 0.1
LOW_NDVI_WEIGHT = 0.25
CHECKPOINT_VERSION = 1


# -- data -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeasonalPatches:
    """Locations for pretraining: ``reflectance`` (N, 4, 10, P, P) float32 (NaN = missing) in ``SEASONS`` x
    ``BAND_ORDER`` order, ``valid`` (N, 4) usable seasons, ``origins`` (N, 2) row/column of each patch."""

    reflectance: np.ndarray
    valid: np.ndarray
    origins: np.ndarray

    def __len__(self) -> int:
        return int(self.reflectance.shape[0])


def usable_seasons(reflectance: np.ndarray, min_valid: float = 0.5) -> np.ndarray:
    """(N, 4) bool: seasons where at least ``min_valid`` of the pixels have all bands."""
    complete = np.isfinite(reflectance).all(axis=2)  # (N, 4, P, P)
    return complete.reshape(*complete.shape[:2], -1).mean(axis=-1) >= min_valid


def make_patches(reflectance: np.ndarray, origins: np.ndarray | None = None, min_valid: float = 0.5) -> SeasonalPatches:
    """Patches from an in-memory (N, 4, 10, P, P) reflectance array; drops those with fewer than 2 usable seasons."""
    reflectance = np.asarray(reflectance, dtype=np.float32)
    if reflectance.ndim != 5 or reflectance.shape[1:3] != (len(SEASONS), len(BAND_ORDER)):
        raise SecoDataError(f"expected patches shaped (N, {len(SEASONS)}, {len(BAND_ORDER)}, P, P), "
                            f"got {reflectance.shape}")
    if origins is None:
        origins = np.zeros((reflectance.shape[0], 2), dtype=np.int64)
    valid = usable_seasons(reflectance, min_valid)
    keep = valid.sum(axis=1) >= 2
    return SeasonalPatches(reflectance[keep], valid[keep], np.asarray(origins)[keep])


def read_patches(path: str | os.PathLike, patch_size: int = 64, stride: int | None = None,
                 min_valid: float = 0.5) -> SeasonalPatches:
    """Cut ``seasonal_composites.tif`` into ``patch_size`` patches every ``stride`` pixels (default: no overlap)."""
    import rasterio

    path = Path(path)
    stride = stride or patch_size
    expected = [f"{s} {b}" for s in SEASONS for b in BAND_ORDER]
    try:
        ds = rasterio.open(path)
    except Exception as exc:
        raise SecoDataError(f"cannot read seasonal composites {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
                            ) from exc
    with ds:
        if ds.count != len(expected):
            raise SecoDataError(f"{path} has {ds.count} bands; seasonal composites have {len(expected)} "
                                f"({len(SEASONS)} seasons x {len(BAND_ORDER)} bands)")
        names = list(ds.descriptions)
        if any(names) and names != expected:
            raise SecoDataError(f"{path} band {next(i for i, (a, b) in enumerate(zip(names, expected)) if a != b) + 1}"
                                f" is not in the seasonal composites order (expected '<season> <band>')")
        nodata = NODATA if ds.nodata is None else ds.nodata
        scale = float(ds.scales[0] or SCALE) if ds.scales and ds.scales[0] not in (None, 1.0) else SCALE
        chunks, origins = [], []
        for row in range(0, ds.height - patch_size + 1, stride):
            window = rasterio.windows.Window(0, row, ds.width, patch_size)
            raw = ds.read(window=window)  # (40, P, W)
            data = np.where(raw == nodata, np.nan, raw.astype(np.float32) * np.float32(scale))
            data = data.reshape(len(SEASONS), len(BAND_ORDER), patch_size, ds.width)
            for col in range(0, ds.width - patch_size + 1, stride):
                chunks.append(data[..., col:col + patch_size])
                origins.append((row, col))
    if not chunks:
        raise SecoDataError(f"{path} is smaller than one {patch_size} x {patch_size} patch")
    patches = make_patches(np.stack(chunks), np.array(origins, dtype=np.int64), min_valid)
    if len(patches) == 0:
        raise SecoDataError(f"no patch of {path} has 2 seasons with at least {min_valid:.0%} valid pixels")
    return patches


def season_mean_ndvi(patches: SeasonalPatches) -> np.ndarray:
    """(N, 4) mean NDVI per location and season over valid pixels (NaN for an unusable season)."""
    ndvi = raw_channels(torch.from_numpy(patches.reflectance), band_axis=2)[:, :, -1].numpy()
    with warnings.catch_warnings():  # an all-missing season gives NaN, masked below
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(ndvi.reshape(*ndvi.shape[:2], -1), axis=-1)
    return np.where(patches.valid, out, np.nan)


def location_weights(patches: SeasonalPatches) -> np.ndarray:
    """Sampling weight per location: 1/4 where mean NDVI < 0.1 in all usable seasons, else 1."""
    ndvi = season_mean_ndvi(patches)
    low = np.where(patches.valid, ndvi < LOW_NDVI, True).all(axis=1)
    return np.where(low, LOW_NDVI_WEIGHT, 1.0)


def season_pairs(valid: Tensor, generator: torch.Generator) -> Tensor:
    """(B, 4) usable seasons -> (B, 2) two different usable seasons per row, drawn without replacement."""
    if bool((valid.sum(dim=1) < 2).any()):
        raise SecoDataError("a location with fewer than 2 usable seasons cannot give a pair")
    scores = torch.rand(valid.shape, generator=generator).masked_fill(~valid, -1.0)
    return scores.topk(2, dim=1).indices


def augment(x: Tensor, generator: torch.Generator, noise: float = 0.0) -> Tensor:
    """Random horizontal/vertical flips, 90-degree rotation (square patches) and Gaussian noise, per sample."""
    b = x.shape[0]
    flips = torch.rand(b, 3, generator=generator) < 0.5
    sel = flips[:, 0].view(b, 1, 1, 1)
    x = torch.where(sel, x.flip(-1), x)
    x = torch.where(flips[:, 1].view(b, 1, 1, 1), x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(flips[:, 2].view(b, 1, 1, 1), x.transpose(-1, -2), x)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator)
    return x


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


def prepare_inputs(patches: SeasonalPatches, stats: ChannelStats | None = None) -> tuple[Tensor, ChannelStats]:
    """Patches -> model input (N, 4, 9, P, P) and the statistics used (computed from usable seasons if not given)."""
    reflectance = torch.from_numpy(patches.reflectance)
    if stats is None:
        raw = raw_channels(reflectance[torch.from_numpy(patches.valid)], band_axis=1)
        stats = compute_stats(raw, band_axis=1)
    return to_input(reflectance, stats, band_axis=2), stats


def _save_checkpoint(trainer: SecoTrainer, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(trainer.state(), tmp)
    os.replace(tmp, path)


def train(patches: SeasonalPatches, config: SecoTrainConfig = SecoTrainConfig(),
          model_config: SecoConfig = SecoConfig(), out: str | os.PathLike | None = None) -> tuple[SecoModel, list]:
    """Pretrain a SeCo-Eco model on ``patches``; with ``out``, write metrics, checkpoints and the model file there.
    Returns the trained (query) model in eval mode and the metric rows."""
    if len(patches) < 1:
        raise SecoDataError("no locations to train on")
    inputs, stats = prepare_inputs(patches)
    valid = torch.from_numpy(patches.valid)
    weights = torch.from_numpy(location_weights(patches)).double()
    trainer = SecoTrainer(random_seco(model_config, stats, seed=config.seed), config)
    out_dir = Path(out) if out is not None else None
    metrics_fh = None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from exc
        ckpt = out_dir / "checkpoint.pt"
        if ckpt.exists():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ModelError(f"{ckpt} cannot be resumed from: {str(exc).splitlines()[0]}") from exc
            trainer.restore(state)
            log.info("resumed from %s at step %d", ckpt, trainer.step_count)
        metrics_fh = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
    history = []
    try:
        while trainer.step_count < config.steps:
            idx = torch.multinomial(weights, config.batch_size, replacement=True, generator=trainer.generator)
            row = trainer.step(inputs[idx], valid[idx])
            history.append(row)
            if metrics_fh is not None:
                metrics_fh.write(json.dumps(row) + "\n")
            if config.log_every and trainer.step_count % config.log_every == 0:
                log.info("step %d loss %.4f", trainer.step_count, row["loss"])
            if out_dir is not None and config.checkpoint_every and trainer.step_count % config.checkpoint_every == 0:
                metrics_fh.flush()
                _save_checkpoint(trainer, out_dir / "checkpoint.pt")
    finally:
        if metrics_fh is not None:
            metrics_fh.close()
    model = trainer.model.eval()
    if out_dir is not None:
        save_seco(model, out_dir / "seco.safetensors",
                  notes=f"SeCo-Eco pretraining, {trainer.step_count} steps, {len(patches)} locations")
    return model, history


# -- command line -----------------------------------------------------------------------------------------------
def build_parser(prog: str = "python -m train.seco_eco") -> argparse.ArgumentParser:
    """The options of ``python -m train.seco_eco`` = ``treemap train seco-eco``."""
    from train import Parser

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--composites", required=True, help="seasonal_composites.tif from treemap phenology --seasonal")
    p.add_argument("--out", required=True, help="output folder (seco.safetensors, metrics.jsonl, checkpoint.pt)")
    p.add_argument("--patch-size", type=int, default=64, help="edge of a location's square patch in pixels")
    p.add_argument("--stride", type=int, default=None, help="patch stride in pixels (default: the patch size)")
    p.add_argument("--min-valid", type=float, default=0.5,
                   help="share of a patch's pixels that must have all bands for a season to be usable")
    p.add_argument("--tiny", action="store_true", help="tiny ResNet (smoke runs on a CPU)")
    d = SecoTrainConfig()
    helps = {"batch_size": "locations per training step", "seed": "seed of the sampling, augmentations and "
             "initialisation", "steps": "training steps (a second run with the same --out resumes)"}
    for name in ("steps", "batch_size", "queue_size", "seed", "log_every", "checkpoint_every"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=helps.get(name))
    for name in ("lr", "key_momentum", "temperature", "weight_decay", "noise"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m train.seco_eco`` and ``treemap train seco-eco``: prints the model's path."""
    p = build_parser(*([prog] if prog else []))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        fields = {k: getattr(args, k) for k in ("steps", "batch_size", "queue_size", "seed", "log_every",
                                                  "checkpoint_every", "lr", "key_momentum", "temperature",
                                                  "weight_decay", "noise")}
        config = replace(SecoTrainConfig(), **fields)
        patches = read_patches(args.composites, args.patch_size, args.stride, args.min_valid)
        log.info("%d locations from %s", len(patches), args.composites)
        train(patches, config, SecoConfig.tiny() if args.tiny else SecoConfig(), args.out)
    except TreemapError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(Path(args.out) / "seco.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
