"""SeCo-Eco pretraining: seasonal contrast (MoCo v2) on patches of phenological seasonal composites or on the
shards of a treemap train sample folder.

    python -m train.seco_eco --composites DIR/seasonal_composites.tif --out runs/x [--steps N] [--tiny] ...
    python -m train.seco_eco --samples SAMPLE_DIR --out runs/x ...   (a treemap train sample folder)
    treemap train seco-eco ...  (the same program)

* Data (:func:`read_patches`): ``treemap phenology --seasonal`` writes ``seasonal_composites.tif`` (int16, nodata
  -32768, scale 1e-4, 40 bands = 4 seasons x 10 bands). It is cut into square patches (a location = a patch); a
  season of a patch is usable when at least ``min_valid`` of its pixels have all 10 bands; patches with fewer than
  2 usable seasons are dropped (a location needs two images).
* Or (:func:`train.seco_samples.read_samples`, ``--samples``): the output folder of ``treemap train sample``
  (SSL4Eco sampling), one location per ``done`` shard, the middle ``--patch-size`` pixels of its patch, clouds
  masked, the seasons without a scene invalid, and the sampler's location weight kept.
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
import logging
import sys
from dataclasses import replace
from pathlib import Path

from train.seco_moco import CHECKPOINT_VERSION, SecoTrainConfig, SecoTrainer
from train.seco_patches import (
    LOW_NDVI, LOW_NDVI_WEIGHT, NODATA, SCALE, SeasonalPatches, augment, location_weights, make_patches,
    prepare_inputs, read_patches, season_mean_ndvi, season_pairs, usable_seasons,
)
from train.seco_samples import read_samples
from train.seco_train import _save_checkpoint, train
from treemap.errors import SecoDataError, TreemapError
from treemap.models.seco import SecoConfig

__all__ = [
    # train.seco_patches
    "LOW_NDVI", "LOW_NDVI_WEIGHT", "NODATA", "SCALE", "SeasonalPatches", "augment", "location_weights",
    "make_patches", "prepare_inputs", "read_patches", "season_mean_ndvi", "season_pairs", "usable_seasons",
    # train.seco_samples
    "read_samples",
    # train.seco_moco
    "CHECKPOINT_VERSION", "SecoTrainConfig", "SecoTrainer",
    # train.seco_train
    "_save_checkpoint", "train",
    # used by tests through this module
    "SecoDataError",
    # command line (this module)
    "build_parser", "main",
]

log = logging.getLogger("train.seco_eco")


# -- command line -----------------------------------------------------------------------------------------------
def build_parser(prog: str = "python -m train.seco_eco") -> argparse.ArgumentParser:
    """The options of ``python -m train.seco_eco`` = ``treemap train seco-eco``."""
    from train import Parser

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--composites", help="seasonal_composites.tif from treemap phenology --seasonal")
    source.add_argument("--samples", metavar="DIR",
                        help="the --out folder of treemap train sample: its done locations' shards")
    p.add_argument("--out", required=True, help="output folder (seco.safetensors, metrics.jsonl, checkpoint.pt)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="edge of a location's square patch in pixels (default 64; --samples: the middle of each "
                        "shard's patch, default its own size up to 64)")
    p.add_argument("--stride", type=int, default=None,
                   help="--composites: patch stride in pixels (default: the patch size)")
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
        if args.samples is not None:
            if args.stride is not None:
                p.error("--stride applies to --composites only (--samples takes one patch per location)")
            patches = read_samples(args.samples, args.patch_size, args.min_valid)
            log.info("%d locations (%d px patches) from %s", len(patches), patches.reflectance.shape[-1],
                     args.samples)
        else:
            patches = read_patches(args.composites, args.patch_size or 64, args.stride, args.min_valid)
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
