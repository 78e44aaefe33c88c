"""GlobalGeoTree training shards: WebDataset-style tar files in the official layout, written and read.

One sample is three consecutive tar members sharing a key (WebDataset splits a member name at the first dot of its
base name: ``<key>.<extension>``)::

    <key>.images.pth      torch.save of a float32 tensor (12 months, 10 bands, 5, 5); NaN = missing
    <key>.text.json       {"level0", "level1_family", "level2_genus", "level3_species"}
    <key>.auxiliary.json  the 27 auxiliary variables by name (treemap.models.AUX_VARIABLES); null = missing

Reading never unpickles arbitrary objects: ``images.pth`` goes through ``torch.load(weights_only=True)``. The
reader also accepts what the official GlobalGeoTree shards contain: float64 images, a JSON list holding one object
instead of an object, and extra keys (``sample_id``) in ``auxiliary.json``.

Writing is atomic (temporary name in the same folder, then rename) and byte-reproducible (fixed member metadata).

:class:`ShardDataset` streams samples for a ``torch.utils.data.DataLoader``: shards are split between ranks and
DataLoader workers (shard-level split; with fewer shards than readers, every reader reads all shards and keeps every
n-th sample), optionally shuffled with a seeded buffer. :func:`part_records` is the underlying split, used by
``train/`` as well.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from treemap.durable import replace, sync_file, write_error
from treemap.errors import ShardError
from treemap.models.config import AUX_VARIABLES

log = logging.getLogger("treemap.shards")

IMAGES, TEXT, AUX = "images.pth", "text.json", "auxiliary.json"
PARTS = (IMAGES, TEXT, AUX)
TEXT_LEVELS = ("level0", "level1_family", "level2_genus", "level3_species")
MONTHS, CHANNELS = 12, 10


@dataclass
class Sample:
    """One training sample: monthly patches, taxonomy labels and auxiliary variables."""

    key: str
    images: torch.Tensor  # (12, 10, H, W) float32, NaN = missing
    text: dict[str, str]  # the four TEXT_LEVELS
    aux: dict[str, float | None]  # the 27 AUX_VARIABLES, None = missing

    @property
    def prompt(self) -> str:
        """The text the model reads: the four levels joined with ' / '."""
        return " / ".join(self.text[k] for k in TEXT_LEVELS)

    def aux_tensor(self) -> torch.Tensor:
        """``(27,)`` float32 in model order, NaN where missing."""
        return torch.tensor([math.nan if self.aux.get(v) is None else float(self.aux[v]) for v in AUX_VARIABLES],
                            dtype=torch.float32)


# -- writing ------------------------------------------------------------------------------------------------------
def _check_key(key: str) -> None:
    if not key or "." in key or "/" in key or key.startswith("_") or any(c.isspace() for c in key):
        raise ValueError(f"invalid sample key {key!r}: no dots, slashes, spaces or leading underscore")


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def encode_sample(sample: Sample) -> list[tuple[str, bytes]]:
    """The three tar members ``(name, bytes)`` of a sample, in the official order."""
    _check_key(sample.key)
    images = sample.images.detach().to("cpu", torch.float32).contiguous().clone()  # own storage: no view of a batch
    if images.ndim != 4 or tuple(images.shape[:2]) != (MONTHS, CHANNELS):
        raise ValueError(f"sample {sample.key}: images must be ({MONTHS}, {CHANNELS}, H, W), got "
                         f"{tuple(images.shape)}")
    missing = [k for k in TEXT_LEVELS if not isinstance(sample.text.get(k), str)]
    if missing:
        raise ValueError(f"sample {sample.key}: text lacks {missing}")
    unknown = sorted(set(sample.aux) - set(AUX_VARIABLES))
    if unknown:
        raise ValueError(f"sample {sample.key}: unknown auxiliary variables {unknown}")
    buf = io.BytesIO()
    torch.save(images, buf)
    text = {k: sample.text[k] for k in TEXT_LEVELS}
    aux = {v: _finite_or_none(sample.aux.get(v)) for v in AUX_VARIABLES}
    return [
        (f"{sample.key}.{IMAGES}", buf.getvalue()),
        (f"{sample.key}.{TEXT}", json.dumps(text, ensure_ascii=False).encode("utf-8")),
        (f"{sample.key}.{AUX}", json.dumps(aux, allow_nan=False).encode("utf-8")),
    ]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # reproducible bytes
    info.uname = info.gname = ""
    return info


def write_shard(path: str | os.PathLike, samples: Iterable[Sample]) -> int:
    """Write ``samples`` to the tar file ``path`` atomically; returns the number of samples written.

    Keys must be unique within the shard and contain no dot.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    seen: set[str] = set()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                if sample.key in seen:
                    raise ValueError(f"duplicate sample key {sample.key!r} in {path.name}")
                seen.add(sample.key)
                for name, data in encode_sample(sample):
                    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        sync_file(tmp)
        replace(tmp, path)
    except OSError as exc:  # a full disk, a vanished folder: a write failure (exit 74), never a half shard
        raise write_error(path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(seen)


# -- reading ------------------------------------------------------------------------------------------------------
def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: key = path up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return (f"{folder}/{stem}" if folder else stem), ext


Record = tuple[str, dict[str, bytes], str]  # key, {extension: bytes}, shard name


def iter_records(path: str | os.PathLike) -> Iterator[Record]:
    """Raw samples of one shard, streamed: ``(key, {extension: bytes}, shard name)`` without decoding."""
    path = Path(path)
    key, parts = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_name(member.name)
                if k != key:
                    if key is not None:
                        yield key, parts, path.name
                    key, parts = k, {}
                fh = tar.extractfile(member)
                parts[ext] = fh.read() if fh is not None else b""
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ShardError(f"cannot read shard {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if key is not None:
        yield key, parts, path.name


def _one_object(data: bytes, what: str) -> dict:
    obj = json.loads(data.decode("utf-8"))
    if isinstance(obj, list) and len(obj) == 1:  # some official shards wrap the object in a list
        obj = obj[0]
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a JSON object")
    return obj


def decode_record(record: Record) -> Sample:
    """Decode a raw sample; raises :class:`ShardError` naming the shard and key."""
    key, parts, shard = record
    try:
        absent = [p for p in PARTS if p not in parts]
        if absent:
            raise ValueError(f"missing {', '.join(absent)}")
        images = torch.load(io.BytesIO(parts[IMAGES]), map_location="cpu", weights_only=True)
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{IMAGES} holds {type(images).__name__}, not a tensor")
        if images.ndim != 4 or tuple(images.shape[:2]) != (MONTHS, CHANNELS) or not images.is_floating_point():
            raise ValueError(f"{IMAGES} must be a float tensor ({MONTHS}, {CHANNELS}, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        text_obj = _one_object(parts[TEXT], TEXT)
        missing = [k for k in TEXT_LEVELS if not isinstance(text_obj.get(k), str)]
        if missing:
            raise ValueError(f"{TEXT} lacks {missing}")
        aux_obj = _one_object(parts[AUX], AUX)
        aux = {}
        for name in AUX_VARIABLES:
            value = aux_obj.get(name)
            if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
                raise ValueError(f"{AUX} field {name} is not a number or null")
            aux[name] = _finite_or_none(value)
    except Exception as exc:  # torch.load raises several types for damaged data
        raise ShardError(f"shard {shard}, sample {key}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    return Sample(key, images.to(torch.float32).contiguous(), {k: text_obj[k] for k in TEXT_LEVELS}, aux)


def read_shard(path: str | os.PathLike, errors: str = "raise") -> Iterator[Sample]:
    """Decoded samples of one shard. ``errors="warn"`` logs and skips damaged samples instead of raising."""
    for record in iter_records(path):
        try:
            yield decode_record(record)
        except ShardError as exc:
            if errors == "raise":
                raise
            log.warning("skipping %s", exc)


def count_samples(path: str | os.PathLike) -> int:
    """Samples in a shard, from its member names (no decoding)."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            return sum(1 for m in tar.getmembers() if m.isfile() and _split_name(m.name)[1] == TEXT)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ShardError(f"cannot read shard {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def list_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths from a folder (its ``*.tar``, sorted), a glob pattern, a single file, or a list of these."""
    if isinstance(spec, (list, tuple)):
        out = [p for item in spec for p in list_shards(item)]
        return sorted(dict.fromkeys(out))
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        found = sorted(path.glob("*.tar"))
    elif any(c in text for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(text))
    elif path.is_file():
        found = [path]
    else:
        raise ShardError(f"no shards at {text}: not a folder, file or glob pattern that matches")
    if not found:
        raise ShardError(f"no .tar shards in {text}")
    return found


# -- splitting and streaming ----------------------------------------------------------------------------------------
def part_records(shards: Sequence[str | os.PathLike], part: int, parts: int, *, seed: int = 0, epoch: int = 0,
                 shuffle_shards: bool = False, shuffle_buffer: int = 0) -> Iterator[Record]:
    """The raw records of reader ``part`` out of ``parts``, deterministic in ``(seed, epoch, part)``.

    With at least as many shards as parts, part ``p`` reads shards ``p, p + parts, ...`` of the (optionally
    shuffled) shard list; otherwise every part reads all shards and keeps the samples whose running index is
    ``p`` modulo ``parts``. ``shuffle_buffer > 0`` shuffles within a buffer of that many samples.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not within 0..{parts - 1}")
    order = [Path(s) for s in shards]
    if shuffle_shards:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)

    def source() -> Iterator[Record]:
        if len(order) >= parts:
            for path in order[part::parts]:
                yield from iter_records(path)
        else:
            index = 0
            for path in order:
                for record in iter_records(path):
                    if index % parts == part:
                        yield record
                    index += 1

    if shuffle_buffer <= 1:
        yield from source()
        return
    rng = random.Random(f"buffer:{seed}:{epoch}:{part}:{parts}")
    buffer: list[Record] = []
    for record in source():
        if len(buffer) < shuffle_buffer:
            buffer.append(record)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], record = record, buffer[i]
        yield record
    rng.shuffle(buffer)
    yield from buffer


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(torch.utils.data.IterableDataset):
    """Samples of a set of shards for a ``DataLoader``, split between ranks and workers.

    ``rank``/``world_size`` default to those of an initialised ``torch.distributed`` process group (else 0 / 1);
    each DataLoader worker of a rank reads its own part. Call :meth:`set_epoch` before each epoch to re-shuffle.
    Damaged samples are logged and skipped (``errors="warn"``) or raise (``errors="raise"``).
    """

    def __init__(self, shards, *, rank: int | None = None, world_size: int | None = None,
                 shuffle_shards: bool = False, shuffle_buffer: int = 0, seed: int = 0, errors: str = "warn"):
        super().__init__()
        self.shards = list_shards(shards)
        self.rank, self.world_size = rank, world_size
        self.shuffle_shards, self.shuffle_buffer = shuffle_shards, shuffle_buffer
        self.seed, self.epoch, self.errors = seed, 0, errors

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Sample]:
        rank, world = _dist_rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        part, parts = rank * workers + worker, world * workers
        for record in part_records(self.shards, part, parts, seed=self.seed, epoch=self.epoch,
                                   shuffle_shards=self.shuffle_shards, shuffle_buffer=self.shuffle_buffer):
            try:
                yield decode_record(record)
            except ShardError as exc:
                if self.errors == "raise":
                    raise
                log.warning("skipping %s", exc)


def collate(samples: Sequence[Sample]) -> dict:
    """A batch: ``images`` (B, 12, 10, H, W), ``aux`` (B, 27) with NaN for missing, ``prompts`` and ``keys``."""
    return {
        "images": torch.stack([s.images for s in samples]),
        "aux": torch.stack([s.aux_tensor() for s in samples]),
        "prompts": [s.prompt for s in samples],
        "keys": [s.key for s in samples],
    }
