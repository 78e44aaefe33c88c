"""SeCo-Eco pretraining run: ``train`` -- location sampling, the step loop, metrics, resumable checkpoints
(``<out>/checkpoint.pt``) and the final ``<out>/seco.safetensors``.

Used by ``train.seco_eco.main``; re-exported by ``train.seco_eco``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from train.seco_moco import SecoTrainConfig, SecoTrainer
from train.seco_patches import SeasonalPatches, location_weights, prepare_inputs
from treemap.errors import ModelError, OutputError, SecoDataError
from treemap.models.seco import SecoConfig, SecoModel, random_seco, save_seco

log = logging.getLogger("train.seco_eco")


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
