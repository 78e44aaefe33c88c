"""Helpers of the training tests: synthetic GlobalGeoTree shards (a few species with distinct seasonal spectra),
a small recipe, a hand-written official-format shard."""

from __future__ import annotations

import io
import json
import math
import tarfile

import torch

from treemap.models import AUX_VARIABLES
from treemap.shards import Sample, write_shard

SPECIES = [
    ("Deciduous Broadleaf", "Fagaceae", "Fagus", "Fagus sylvatica", "Frequent"),
    ("Deciduous Broadleaf", "Fagaceae", "Quercus", "Quercus robur", "Frequent"),
    ("Evergreen Needleleaf", "Pinaceae", "Pinus", "Pinus sylvestris", "Common"),
    ("Deciduous Needleleaf", "Pinaceae", "Larix", "Larix decidua", "Rare"),
]


def synthetic_sample(key: str, species: int, g: torch.Generator) -> Sample:
    months = torch.arange(12, dtype=torch.float32)
    season = torch.sin((months - 3 - species) / 12 * 2 * math.pi)[:, None, None, None]
    base = 0.05 + 0.03 * species + 0.02 * torch.arange(10, dtype=torch.float32)[None, :, None, None]
    images = (base + (0.05 + 0.02 * species) * season + 0.01 * torch.randn(12, 10, 5, 5, generator=g))
    images = images.clamp(0.001, 0.8)
    for m in torch.randperm(12, generator=g)[: int(torch.randint(0, 4, (1,), generator=g))]:
        images[m] = math.nan
    level0, family, genus, name, _ = SPECIES[species]
    aux = {v: None for v in AUX_VARIABLES}
    aux.update(longitude=8.0 + float(torch.rand(1, generator=g)), latitude=50.0 + float(torch.rand(1, generator=g)),
               elevation=200.0 + 50 * species)
    return Sample(key, images, {"level0": level0, "level1_family": family, "level2_genus": genus,
                                "level3_species": name}, aux)


def write_synthetic(folder, shards: int = 4, per_shard: int = 48, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    k = 0
    for s in range(shards):
        samples = []
        for _ in range(per_shard):
            samples.append(synthetic_sample(f"{seed}s{k:05d}", k % len(SPECIES), g))
            k += 1
        write_shard(folder / f"shard-{s:06d}.tar", samples)
    return folder


def tiny_recipe(shards, out, **train) -> dict:
    """A recipe (as data) small enough for a test: a one-layer tiny model, 16-sample batches over 2 streams."""
    t = {"steps": 8, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "checkpoint_every": 100, "log_every": 1}
    t.update(train)
    return {
        "model": {"size": "tiny", "seed": 0, "overrides": {"vision_layers": 1, "text_layers": 1}},
        "data": {"shards": [str(shards)], "streams": 2, "shuffle_buffer": 32,
                 "normalisation": {"samples": 96, "aux_ranges": {"longitude": [-180, 180], "latitude": [-90, 90]}}},
        "train": t,
        "output": {"dir": str(out), "dtype": "float32"},
    }


TEXT = {"level0": "Deciduous Broadleaf", "level1_family": "Fagaceae", "level2_genus": "Fagus",
        "level3_species": "Fagus sylvatica"}


def official_shard(path, entries):
    """A shard as the GlobalGeoTree scripts write it: float64 images, extra keys, JSON sometimes in a list."""
    with tarfile.open(path, "w") as tar:
        for key, images, text, aux in entries:
            buf = io.BytesIO()
            torch.save(images, buf)
            for name, data in ((f"{key}.images.pth", buf.getvalue()), (f"{key}.text.json", json.dumps(text).encode()),
                               (f"{key}.auxiliary.json", json.dumps(aux).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
