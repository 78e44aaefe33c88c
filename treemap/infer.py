"""From monthly composites to species probabilities: batching, device placement, zero-shot head (model sets and the
per-process caches: :mod:`treemap.modelset`; ``--device`` checks: :mod:`treemap.devices`).

A pixel's input is its 5 x 5 neighbourhood in each of the 12 monthly composites (12, 10, 5, 5; cut by
:mod:`treemap.patches` on the host or :mod:`treemap.feed` on the device) plus the 27 auxiliary variables
(longitude/latitude of the pixel centre; the rest missing unless given).
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from treemap.feed import DeviceTile, Uploader, probe_batch_size
from treemap.patches import PATCH, kept_patches, present_months, scale_composites_host, scaled_patches, window_gaps
from treemap.taxonomy import SpeciesList

log = logging.getLogger("treemap.infer")

N_AUX = 27


@dataclass(frozen=True)
class InferenceSpec:
    batch_size: int = 4096
    device: str = "auto"
    compile: bool = False  # torch.compile the location encoder (see PixelEncoder)
    # batch_size sized from the device's free memory instead (CUDA and fixed-statistics models; see PixelEncoder)
    auto_batch: bool = False
    # where patches are cut: "device" (treemap.feed: the tile goes to the device once), "host" (kept_patches),
    # "auto": the device path on CUDA, the host path on the CPU (TREEMAP_PATCHES overrides "auto")
    patches: str = "auto"

    def patches_on_device(self) -> bool:
        mode = self.patches
        if mode == "auto":
            mode = os.environ.get("TREEMAP_PATCHES", "auto").strip().lower() or "auto"
        if mode == "auto":
            return self.resolve_device().type == "cuda"
        if mode not in ("host", "device"):
            raise ValueError(f"patches must be host, device or auto, not {mode!r}")
        return mode == "device"

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def inference_spec(batch_size: int | None, device: str = "auto", compile: bool = False) -> InferenceSpec:
    """The spec of a request whose ``batch_size`` None means ``--batch-size auto``."""
    return InferenceSpec(batch_size or InferenceSpec.batch_size, device, compile, auto_batch=batch_size is None)


def text_features(model, species: SpeciesList, model_key: str | None = None,
                  cache_dir: Path | None = None) -> torch.Tensor:
    """Text features (S, E) of a species list, cached on disk under ``cache_dir`` keyed by the model and the list.

    Without a ``model_key`` (a digest of the model's weights) nothing is cached.
    """
    from safetensors.torch import load_file, save_file

    from treemap.models.tokenizer import tokenize

    path = None
    if model_key and cache_dir is not None:
        list_key = hashlib.sha256("\n".join(species.prompts).encode()).hexdigest()[:16]
        path = Path(cache_dir) / "text-features" / f"{model_key[:16]}-{list_key}.safetensors"
        if path.exists():
            try:
                cached = load_file(str(path))["text"]
                if cached.shape[0] == len(species):
                    log.debug("text features from %s", path)
                    return cached
            except Exception as exc:  # a damaged cache entry is recomputed, never trusted
                log.warning("ignoring unreadable text-feature cache %s (%s)", path, exc)
    device = next(model.parameters()).device
    with torch.inference_mode():
        text = model.encode_text(tokenize(list(species.prompts)).to(device)).float().cpu()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"text": text.contiguous()}, str(tmp))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not cache text features in %s (%s)", path, exc)
    return text


class PixelEncoder:
    """Per-pixel location embeddings of a GeoTreeCLIP model: batching, device placement, and a tile's pixels in
    row blocks (:meth:`embed_tile`). :class:`SpeciesPredictor` adds the species head on top."""

    def __init__(self, model, spec: InferenceSpec = InferenceSpec()):
        self.device = spec.resolve_device()
        self.batch_size = spec.batch_size
        self.model = model.to(self.device).eval()
        # --compile: the location encoder through torch.compile (inductor unless TREEMAP_COMPILE_BACKEND names
        # another backend), shapes marked dynamic so the last, short batch of a tile does not compile a second
        # graph. The first batch pays the compilation (41 s for the demo model on 2 CPU cores).
        self._encode = self.model.encode_location
        self._encode_normalised = self.model.encode_normalised
        if spec.compile:
            backend = os.environ.get("TREEMAP_COMPILE_BACKEND", "inductor")
            self._encode = torch.compile(self.model.encode_location, dynamic=True, backend=backend)
            self._encode_normalised = torch.compile(self.model.encode_normalised, dynamic=True, backend=backend)
        self.tile_patches = spec.patches_on_device()
        self.uploader = Uploader(self.device)
        normaliser = getattr(self.model, "normaliser", None)
        # fixed statistics: a tile is scaled once on the device; the official per-batch rule needs each batch raw
        self._fixed = normaliser if getattr(normaliser, "mode", "") == "fixed" else None
        if spec.auto_batch and self.device.type == "cuda":
            if self._fixed is not None:
                c = self.model.config
                self.batch_size = probe_batch_size(self.model.encode_location, (c.months, c.channels, PATCH, PATCH), N_AUX,
                                                   self.device)
            else:  # with the per-batch rule the batch is part of the result: keep the given size
                log.info("batch size %d: the model scales inputs per batch, so it is not sized from memory",
                         self.batch_size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    def _batched(self, patches: np.ndarray, aux: np.ndarray, width: int, head,
                 present: np.ndarray | None = None) -> np.ndarray:
        """``head(embeddings)`` (B, width) for every batch of patches (N, 12, 10, 5, 5) and aux (N, 27).

        With ``present`` (N, 12) the patches are already scaled (:func:`scaled_patches`) and go to
        ``encode_normalised``; the aux values are scaled here. Batches go up through :class:`treemap.feed.Uploader`
        and their results stay on the device until the last one is done (one copy back, no per-batch host wait)."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            out = torch.empty((patches.shape[0], width), dtype=torch.float32, device=self.device)
            for start in range(0, patches.shape[0], self.batch_size):
                stop = min(start + self.batch_size, patches.shape[0])
                x = self.uploader.put(patches[start:stop], "patches")
                a = self.uploader.put(aux[start:stop], "aux")
                if present is None:
                    emb = self._encode(x, a)
                else:
                    emb = self._encode_normalised(x, self.uploader.put(present[start:stop], "present"),
                                                  self._fixed.aux(a))
                out[start:stop] = head(emb).float()
        return out.cpu().numpy()

    @staticmethod
    def _unit(emb: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def embed(self, patches: np.ndarray, aux: np.ndarray) -> np.ndarray:
        """L2-normalised location embeddings (N, D) float32: the vectors the zero-shot head compares with the
        species' text features (computed in float32, also under autocast)."""
        return self._batched(patches, aux, self.embed_dim, self._unit)

    @staticmethod
    def _block_aux(lonlat: np.ndarray, layers: np.ndarray | None, r0: int, r1: int, keep: np.ndarray) -> np.ndarray:
        aux = np.full((int(keep.sum()), N_AUX), np.nan, dtype=np.float32)
        aux[:, 0] = lonlat[0, r0:r1].reshape(-1)[keep]
        aux[:, 1] = lonlat[1, r0:r1].reshape(-1)[keep]
        if layers is not None:
            aux[:, 2:] = layers[:, r0:r1].reshape(layers.shape[0], -1)[:, keep].T
        return aux

    def _per_pixel(self, composites: np.ndarray, halo: int, lonlat: np.ndarray, valid: np.ndarray, width: int,
                   head, rows_per_block: int, layers: np.ndarray | None) -> np.ndarray:
        """``head(embeddings)`` (N, width) for every pixel of a tile's core, as (width, H, W); NaN where ``valid``
        is False or no month is present. Pixels go to the encoder in row blocks, and in batches of at most
        ``batch_size`` within a block, on either path (so the per-batch normalisation sees the same batches)."""
        if self.tile_patches:
            return self._per_pixel_on_device(composites, halo, lonlat, valid, width, head, rows_per_block, layers)
        h, w = valid.shape
        result = np.full((width, h, w), np.nan, dtype=np.float32)
        scaled = None  # fixed statistics: the tile is scaled once, not every patch of it
        if self._fixed is not None:
            scaled = scale_composites_host(composites, self._fixed.band_min.cpu().numpy(),
                                           self._fixed.band_max.cpu().numpy())
        for r0 in range(0, h, rows_per_block):
            r1 = min(r0 + rows_per_block, h)
            keep = valid[r0:r1].reshape(-1) & present_months(composites, halo, slice(r0, r1)).any(axis=1)
            if not keep.any():
                continue
            aux = self._block_aux(lonlat, layers, r0, r1, keep)
            picked = np.flatnonzero(keep)
            gaps = window_gaps(composites, halo, slice(r0, r1))
            values = np.empty((picked.size, width), dtype=np.float32)
            # patches one batch at a time: a block's would be 64 rows x 512 px x 12 KB = 400 MB at the default size
            for start in range(0, picked.size, self.batch_size):
                part, stop = picked[start:start + self.batch_size], start + self.batch_size
                if scaled is None:
                    values[start:stop] = self._batched(kept_patches(composites, halo, slice(r0, r1), part, gaps),
                                                       aux[start:stop], width, head)
                else:
                    patches, present = scaled_patches(scaled, halo, slice(r0, r1), part, gaps)
                    values[start:stop] = self._batched(patches, aux[start:stop], width, head, present)
            flat = np.full((keep.size, width), np.nan, dtype=np.float32)
            flat[keep] = values
            result[:, r0:r1] = flat.T.reshape(width, r1 - r0, w)
        return result

    def _per_pixel_on_device(self, composites: np.ndarray, halo: int, lonlat: np.ndarray, valid: np.ndarray,
                             width: int, head, rows_per_block: int, layers: np.ndarray | None) -> np.ndarray:
        """:meth:`_per_pixel` with the tile on the device (:mod:`treemap.feed`): composites uploaded (and scaled,
        for fixed statistics) once, patches gathered and gap-filled there, results kept there until the tile is
        done: one copy back and one host synchronisation per tile."""
        h, w = valid.shape
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            tile = DeviceTile.upload(composites, halo, self.uploader, self._fixed)
            result = torch.full((h * w, width), float("nan"), dtype=torch.float32, device=self.device)
            for r0 in range(0, h, rows_per_block):
                r1 = min(r0 + rows_per_block, h)
                keep = valid[r0:r1].reshape(-1) & present_months(composites, halo, slice(r0, r1)).any(axis=1)
                if not keep.any():
                    continue
                aux = self.uploader.put(self._block_aux(lonlat, layers, r0, r1, keep), "aux")
                if self._fixed is not None:
                    aux = self._fixed.aux(aux)
                picked = self.uploader.put(np.flatnonzero(keep) + r0 * w, "pixels")  # flat core indices
                for start in range(0, picked.shape[0], self.batch_size):
                    sel = picked[start:start + self.batch_size]
                    patches, present = tile.patches(sel // w, sel % w)
                    part = aux[start:start + self.batch_size]
                    if self._fixed is not None:
                        emb = self._encode_normalised(patches, present, part)
                    else:
                        emb = self._encode(patches, part)
                    result[sel] = head(emb).float()
        return result.T.reshape(width, h, w).cpu().numpy()

    def embed_tile(self, composites: np.ndarray, halo: int, lonlat: np.ndarray, valid: np.ndarray,
                   rows_per_block: int = 64, layers: np.ndarray | None = None) -> np.ndarray:
        """L2-normalised embeddings (D, H, W) of a tile's core (arguments as :meth:`SpeciesPredictor.predict_tile`)."""
        return self._per_pixel(composites, halo, lonlat, valid, self.embed_dim, self._unit, rows_per_block, layers)


class SpeciesPredictor(PixelEncoder):
    """Species probabilities for pixel patches with a GeoTreeCLIP model: zero-shot over a species list (text
    features), or with a few-shot head (:mod:`treemap.heads`), which then sets the species."""

    def __init__(self, model, species: SpeciesList, spec: InferenceSpec = InferenceSpec(),
                 model_key: str | None = None, cache_dir: Path | None = None, head=None):
        super().__init__(model, spec)
        self.head = head
        if head is not None:
            self.species = head.species
            self.text = None
        else:
            self.species = species
            self.text = text_features(self.model, species, model_key, cache_dir).to(self.device)

    def _probabilities(self, emb: torch.Tensor) -> torch.Tensor:
        return self.head.probabilities(emb) if self.head is not None else self.model.zero_shot(emb, self.text)

    def predict(self, patches: np.ndarray, aux: np.ndarray) -> np.ndarray:
        """Probabilities (N, S) float32 for patches (N, 12, 10, 5, 5) and aux (N, 27)."""
        return self._batched(patches, aux, len(self.species), self._probabilities)

    def predict_tile(
        self, composites: np.ndarray, halo: int, lonlat: np.ndarray, valid: np.ndarray, rows_per_block: int = 64,
        layers: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probabilities (S, H, W) for a tile's core; NaN where ``valid`` is False or no month is present.

        ``lonlat`` is (2, H, W) pixel-centre longitude/latitude; ``valid`` (H, W) marks pixels inside the AOI;
        ``layers`` (25, H, W) the other auxiliary variables (:mod:`treemap.auxiliary`), NaN = missing; without
        them only longitude and latitude are given.
        """
        return self._per_pixel(composites, halo, lonlat, valid, len(self.species), self._probabilities,
                               rows_per_block, layers)
