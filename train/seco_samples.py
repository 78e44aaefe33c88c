"""SeCo-Eco pretraining data from a ``treemap train sample`` folder (SSL4Eco sampling): the shards of its ``done``
locations as :class:`train.seco_patches.SeasonalPatches`, one location per shard.

* **Which locations.** Those whose latest ``index.jsonl`` record says ``done`` and whose shard reads
  (:func:`train.sample_store.read_shard`); ``dropped`` and ``failed`` ones are left out. A shard that does not read
  or lacks a band the model takes is skipped with one warning for all of them. No usable location is an error.
* **Finished runs only.** While ``train sample`` works, ``index.jsonl`` is a journal. A folder whose run still holds
  its lock (``.treemap-work/.lock``), whose lock file a killed run left behind, or whose index has a cut line or two
  records of one location is refused: run the same ``treemap train sample`` command to finish it first.
* **Channels.** Shards hold ``B02 B03 B04 B05 B06 B07 B08 B8A NDVI`` (harmonised reflectance, 0-1, float16 by
  default); :class:`SeasonalPatches` holds reflectance in ``treemap.phenology.BAND_ORDER`` (10 bands). The eight
  bands are placed by name, B11 and B12 (which SeCo-Eco does not take) are NaN, and the shard's NDVI is not used:
  the model input computes NDVI from B04 and B08 (:func:`treemap.models.seco.to_input`), as it does for seasonal
  composites. No scaling: the shards are reflectance already (not DN).
* **Clouds.** A shard keeps each season's image unmasked (a cloudy pixel keeps its cloud) with a ``clear`` mask.
  Pixels that are not clear become NaN, i.e. missing, as in seasonal composites (which are built from clear
  observations only); the model input sets them to the channel mean.
* **Seasons.** A shard holds the seasons that had a scene, by name; the other seasons are NaN and invalid. A season
  is valid when at least ``min_valid`` of the (cropped) patch's pixels are clear with all eight bands; a location
  needs two valid seasons (with the sampler's ``--max-cloud`` of 20 % every season of a ``done`` location passes).
* **Patch size.** A location gives one ``patch_size`` patch (default: the shards' own size, at most 64 px, the
  composites default), cut from the middle of the shard's patch when that is larger -- the trainer takes whole,
  fixed patches as it does with composites. A ``patch_size`` larger than a shard's patch is an error.
* **Weights.** The sampler's location weight (``meta.weight`` of the shard, else the index record's ``weight``: 1/4
  where the mean NDVI of the clear pixels is below 0.1 in every chosen season, measured on the whole patch) is kept
  in :attr:`SeasonalPatches.weights` and wins over the weight :func:`train.seco_patches.location_weights` would
  compute from the crop.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

import numpy as np

from train.seco_patches import SeasonalPatches, usable_seasons
from treemap.errors import SecoDataError
from treemap.phenology import BAND_ORDER, SEASONS

log = logging.getLogger("train.seco_eco")

#: The training patch edge when none is given and the shards are larger (the ``--composites`` default).
DEFAULT_PATCH = 64
#: The bands of a shard that the model takes (its other channel, NDVI, is recomputed from B04 and B08).
SHARD_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A")

_INDEX, _RUN, _LOCK = "index.jsonl", "run.json", Path(".treemap-work") / ".lock"


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _check_finished(folder: Path) -> None:
    """Refuse a sample folder whose run is working or was stopped before it rewrote its index."""
    lock = folder / _LOCK
    if not lock.exists():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:  # the run released it just now: finished
        return
    except OSError as exc:
        raise SecoDataError(f"cannot check whether a sampling run is writing to {folder}: {exc.strerror or exc}"
                            ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SecoDataError(f"a treemap train sample run is still writing to {folder}: wait for it to finish"
                                ) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    raise SecoDataError(f"the treemap train sample run in {folder} was stopped before it finished (its lock file "
                        f"{_LOCK} is still there): run the same command again to finish it")


def read_index(folder: str | os.PathLike) -> list[dict]:
    """The records of a finished ``train sample`` folder's ``index.jsonl``, in file order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SecoDataError(f"{folder} is not a folder (--samples takes the --out folder of treemap train sample)")
    if not (folder / _RUN).is_file():
        raise SecoDataError(f"{folder} is not a treemap train sample folder: it has no {_RUN}")
    _check_finished(folder)
    path = folder / _INDEX
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecoDataError(f"{folder} has no {_INDEX}: the sampling run wrote no location yet") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecoDataError(f"cannot read {path}: {_first_line(exc)}") from None
    records, seen = [], set()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise SecoDataError(f"{path} line {n} is not a JSON record: the index is cut or still a journal; run "
                                f"the same treemap train sample command again to finish it") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise SecoDataError(f"{path} line {n} is not a location record (no 'id')")
        if record["id"] in seen:
            raise SecoDataError(f"{path} has two records of location {record['id']}: it is still the journal of an "
                                f"unfinished run; run the same treemap train sample command again to finish it")
        seen.add(record["id"])
        records.append(record)
    if not records:
        raise SecoDataError(f"{path} holds no location record")
    return records


def _shard_patch(folder: Path, record: dict, patch_size: int | None, min_valid: float, mask_clouds: bool):
    """(reflectance (4, 10, P, P), valid (4,), weight) of one done location; ValueError when its shard is unusable."""
    from train.sample_store import read_shard, shard_path

    path = folder / record["shard"] if isinstance(record.get("shard"), str) else shard_path(folder, record["id"])
    shard = read_shard(path)
    channels = [str(c) for c in shard["channels"].tolist()]
    lacking = [b for b in SHARD_BANDS if b not in channels]
    if lacking or len(channels) != shard["images"].shape[1]:
        raise ValueError(f"{path}: channels {' '.join(channels)} lack {' '.join(lacking) or 'names'}")
    images, clear = shard["images"], shard["clear"]
    size = images.shape[-1]
    if images.shape[-2] != size:
        raise ValueError(f"{path}: patches of {images.shape[-2]} x {size} px are not square")
    p = size if patch_size is None else patch_size
    if p > size:
        raise SecoDataError(f"{path} holds {size} px patches, smaller than the patch size {p}: give --patch-size "
                            f"{size} or less")
    o = (size - p) // 2  # the middle of the shard's patch
    images, clear = images[..., o:o + p, o:o + p].astype(np.float32), clear[..., o:o + p, o:o + p]
    refl = np.full((len(SEASONS), len(BAND_ORDER), p, p), np.nan, dtype=np.float32)
    present = np.zeros(len(SEASONS), dtype=bool)
    for k, name in enumerate(str(s) for s in shard["seasons"].tolist()):
        if name not in SEASONS:
            raise ValueError(f"{path}: unknown season {name!r}")
        s = SEASONS.index(name)
        for band in SHARD_BANDS:
            refl[s, BAND_ORDER.index(band)] = images[k, channels.index(band)]
        if mask_clouds:
            refl[s, :, ~clear[k]] = np.nan
        present[s] = True
    # B11/B12 are NaN by design: usable_seasons looks at the eight bands the model takes
    complete = refl[:, [BAND_ORDER.index(b) for b in SHARD_BANDS]]
    valid = present & usable_seasons(complete[None], min_valid)[0]
    weight = shard["meta"].get("weight", record.get("weight"))
    return refl, valid, float(weight) if isinstance(weight, (int, float)) else float("nan")


def read_samples(folder: str | os.PathLike, patch_size: int | None = None, min_valid: float = 0.5,
                 mask_clouds: bool = True) -> SeasonalPatches:
    """The done locations of a ``treemap train sample`` folder as :class:`SeasonalPatches` (see the module doc):
    ``origins`` are the grid node indices (i, j), ``ids`` the location ids, ``weights`` the sampler's weights."""
    folder = Path(folder)
    if patch_size is not None and patch_size < 1:
        raise SecoDataError(f"the patch size must be positive, got {patch_size}")
    records = read_index(folder)
    done = [r for r in records if r.get("state") == "done"]
    if not done:
        states = {}
        for r in records:
            states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
        counts = ", ".join(f"{v} {k}" for k, v in states.items())
        raise SecoDataError(f"{folder / _INDEX} has no done location ({counts})")
    if patch_size is None:  # the shards' own size, capped at the composites default
        size = None
        for r in done:
            try:
                size = _shard_patch(folder, r, None, min_valid, mask_clouds)[0].shape[-1]
                break
            except ValueError:
                continue
        patch_size = min(size, DEFAULT_PATCH) if size else None
    refl, valid, weights, ids, origins, skipped, few = [], [], [], [], [], [], 0
    for r in done:
        try:
            x, v, w = _shard_patch(folder, r, patch_size, min_valid, mask_clouds)
        except SecoDataError:
            raise
        except ValueError as exc:
            skipped.append(_first_line(exc))
            continue
        if v.sum() < 2:
            few += 1
            continue
        refl.append(x)
        valid.append(v)
        weights.append(w)
        ids.append(r["id"])
        origins.append((int(r.get("i", 0)), int(r.get("j", 0))))
    if not refl:
        why = [f"{len(skipped)} shard(s) unusable (first: {skipped[0]})"] if skipped else []
        why += [f"{few} with fewer than 2 seasons with {min_valid:.0%} clear pixels"] if few else []
        raise SecoDataError(f"no usable location in {folder}: {len(done)} done, {'; '.join(why)}")
    if skipped:
        log.warning("%d of %d done locations left out: shard unusable (first: %s)", len(skipped), len(done),
                    skipped[0])
    if few:
        log.warning("%d of %d done locations left out: fewer than 2 seasons with %.0f%% clear pixels", few,
                    len(done), 100 * min_valid)
    return SeasonalPatches(np.stack(refl), np.stack(valid), np.array(origins, dtype=np.int64),
                           weights=np.array(weights, dtype=np.float64), ids=tuple(ids))
