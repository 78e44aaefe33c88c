"""Training data: deterministic sample streams over shards, their batches, and normalisation statistics.

The data order is defined by ``streams`` (a recipe setting), not by the number of processes. Stream ``s`` is the
endless sequence of epochs of reader part ``s`` out of ``streams`` (``treemap.shards.part_records``: shard-level
split, or a sample-level split when there are fewer shards than streams), each epoch re-shuffled with a seed of its
own. Global micro-batch ``k`` is the concatenation, over streams in order, of items ``k b .. (k + 1) b - 1`` of every
stream (``b = batch_size / streams``). A process owns streams ``rank, rank + world, ...``; within a process,
DataLoader workers own streams in turn. So one process with two streams and two processes with one stream each see
the same global batches.

A stream's position is ``(epoch, records consumed in that epoch)``; a resumed run starts each stream at its saved
position, replaying the current epoch's record order without decoding the skipped records.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from treemap.shards import (TEXT, Record, Sample, ShardError, _split_name, collate, count_samples, decode_record,
                            part_records)

log = logging.getLogger("train.data")


def record_species(record: Record) -> str | None:
    try:
        return json.loads(record[1][TEXT].decode("utf-8")).get("level3_species")
    except (KeyError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class SpeciesFilter:
    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def keep(self, species: str | None) -> bool:
        if species is None:
            return not self.include
        if self.include and species not in self.include:
            return False
        return species not in self.exclude


def scan(shards: Sequence[Path], species_filter: SpeciesFilter = SpeciesFilter()) -> dict:
    """Sample counts (total and per species after the filter). Without a filter only member names are read."""
    total, kept, per_species = 0, 0, {}
    for path in shards:
        if not species_filter:
            n = count_samples(path)
            total += n
            kept += n
            continue
        try:
            with tarfile.open(path, mode="r:*") as tar:
                for member in tar.getmembers():
                    if member.isfile() and _split_name(member.name)[1] == TEXT:
                        total += 1
                        fh = tar.extractfile(member)
                        species = json.loads(fh.read().decode("utf-8")).get("level3_species") if fh else None
                        if species_filter.keep(species):
                            kept += 1
                            per_species[species] = per_species.get(species, 0) + 1
        except (OSError, tarfile.TarError, ValueError) as exc:
            raise ShardError(f"cannot scan shard {path}: {exc}") from exc
    return {"total": total, "kept": kept, "per_species": dict(sorted(per_species.items()))}


# -- streams --------------------------------------------------------------------------------------------------------
class Stream:
    """One endless, deterministic sample stream (see the module docstring)."""

    def __init__(self, shards: Sequence[Path], stream: int, streams: int, *, seed: int, shuffle_buffer: int,
                 species_filter: SpeciesFilter = SpeciesFilter(), start: tuple[int, int] = (0, 0)):
        self.shards, self.stream, self.streams = list(shards), stream, streams
        self.seed, self.shuffle_buffer, self.filter = seed, shuffle_buffer, species_filter
        self.epoch, self.consumed = start

    def _epoch_records(self, epoch: int) -> Iterator[Record]:
        for record in part_records(self.shards, self.stream, self.streams, seed=self.seed, epoch=epoch,
                                   shuffle_shards=True, shuffle_buffer=self.shuffle_buffer):
            if not self.filter or self.filter.keep(record_species(record)):
                yield record

    def __iter__(self) -> Iterator[Sample]:
        skip = self.consumed
        while True:
            produced = 0
            for index, record in enumerate(self._epoch_records(self.epoch)):
                if index < skip:
                    continue
                try:
                    sample = decode_record(record)
                except ShardError as exc:
                    log.warning("skipping %s", exc)
                    sample = None
                self.consumed = index + 1
                produced += 1
                if sample is not None:
                    yield sample
            if not produced and not skip:
                raise ShardError(f"data stream {self.stream} of {self.streams} has no samples")
            self.epoch, self.consumed, skip = self.epoch + 1, 0, 0

    def position(self) -> tuple[int, int]:
        return self.epoch, self.consumed


class StreamBatches(torch.utils.data.IterableDataset):
    """Per micro-step chunks of a process's streams: each chunk concatenates ``per_stream`` samples of each owned
    stream, with the streams' positions after it. DataLoader workers split the streams among themselves."""

    def __init__(self, shards, streams: Sequence[int], n_streams: int, per_stream: int, *, seed: int,
                 shuffle_buffer: int, species_filter: SpeciesFilter = SpeciesFilter(),
                 positions: dict[int, tuple[int, int]] | None = None, month_dropout: float = 0.0,
                 start_step: int = 0, aux_dropout: float = 0.0):
        super().__init__()
        self.shards = [Path(s) for s in shards]
        self.streams, self.n_streams, self.per_stream = list(streams), n_streams, per_stream
        self.seed, self.shuffle_buffer, self.filter = seed, shuffle_buffer, species_filter
        self.positions = dict(positions or {})
        self.month_dropout, self.start_step = month_dropout, start_step
        self.aux_dropout = aux_dropout

    def owned(self) -> list[int]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.streams
        return self.streams[info.id::info.num_workers]

    def __iter__(self):
        mine = self.owned()
        iters = {s: Stream(self.shards, s, self.n_streams, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                           species_filter=self.filter, start=self.positions.get(s, (0, 0))) for s in mine}
        gens = {s: iter(st) for s, st in iters.items()}
        step = self.start_step
        while True:
            parts = []
            for s in mine:
                part = collate([next(gens[s]) for _ in range(self.per_stream)])
                if self.month_dropout > 0:
                    part["images"] = drop_months(part["images"], self.month_dropout, seed=(self.seed, step, s))
                if self.aux_dropout > 0:
                    part["aux"] = drop_aux(part["aux"], self.aux_dropout, seed=(self.seed, step, s, "aux"))
                parts.append(part)
            batch = {
                "images": torch.cat([p["images"] for p in parts]),
                "aux": torch.cat([p["aux"] for p in parts]),
                "prompts": [x for p in parts for x in p["prompts"]],
                "keys": [x for p in parts for x in p["keys"]],
                "positions": {s: iters[s].position() for s in mine},
                "step": step,
            }
            step += 1
            yield batch


def drop_months(images: torch.Tensor, rate: float, seed) -> torch.Tensor:
    """Augmentation: mark each present month missing (all NaN) with probability ``rate``, keeping at least one
    present month per sample; the draw depends only on ``seed`` (so resumes and DDP runs repeat it)."""
    g = torch.Generator().manual_seed(hash_seed(seed))
    b, t = images.shape[:2]
    present = ~torch.isnan(images).flatten(2).all(-1)
    drop = (torch.rand(b, t, generator=g) < rate) & present
    keep_one = (present & ~drop).any(1)
    drop[~keep_one] = False
    out = images.clone()
    out[drop] = float("nan")
    return out


#: Auxiliary variables :func:`drop_aux` never drops: longitude and latitude (always known for a pixel).
KEEP_AUX = 2


def drop_aux(aux: torch.Tensor, rate: float, seed) -> torch.Tensor:
    """Augmentation: mark each present auxiliary variable of each sample missing (NaN) with probability ``rate``,
    apart from the first :data:`KEEP_AUX` (longitude, latitude); the draw depends only on ``seed``."""
    g = torch.Generator().manual_seed(hash_seed(seed))
    drop = torch.rand(aux.shape, generator=g) < rate
    drop[:, :KEEP_AUX] = False
    return aux.masked_fill(drop, float("nan"))


def hash_seed(obj) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(obj).encode()).digest()[:8], "little") & ((1 << 63) - 1)


# -- normalisation statistics ---------------------------------------------------------------------------------------
def compute_statistics(shards: Sequence[Path], samples: int, band_quantiles: tuple[float, float],
                       aux_ranges: dict[str, tuple[float, float]] | None = None,
                       species_filter: SpeciesFilter = SpeciesFilter()) -> dict[str, list[float]]:
    """Fixed-normalisation statistics of the training samples (:func:`treemap.models.statistics.shard_statistics`),
    counting only the species the filter keeps."""
    from treemap.models.statistics import shard_statistics

    keep = (lambda record: species_filter.keep(record_species(record))) if species_filter else None
    return shard_statistics(shards, samples, band_quantiles, aux_ranges, keep)
