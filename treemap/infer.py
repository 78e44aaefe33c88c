"""From monthly composites to species probabilities: pixel patches, batching, device placement, zero-shot head.

A pixel's input is its 5 x 5 neighbourhood in each of the 12 monthly composites (12, 10, 5, 5) plus the 27 auxiliary
variables (longitude/latitude of the pixel centre; the rest missing unless given). A month counts as present for a
pixel when its centre pixel has a clear observation; gaps inside a present month's patch take the patch mean.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from treemap.taxonomy import SpeciesList

log = logging.getLogger("treemap.infer")

N_AUX = 27
PATCH = 5


@dataclass(frozen=True)
class InferenceSpec:
    batch_size: int = 4096
    device: str = "auto"

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def pixel_patches(composites: np.ndarray, halo: int, rows: slice) -> np.ndarray:
    """Patches (N, 12, 10, 5, 5) for the core pixels of the given core rows, row-major.

    ``composites`` is (12, 10, H + 2 halo, W + 2 halo); requires halo >= 2.
    """
    if halo < PATCH // 2:
        raise ValueError("the halo must be at least 2 pixels for 5 x 5 patches")
    r = PATCH // 2
    start, stop = rows.start, rows.stop
    width = composites.shape[-1] - 2 * halo
    block = composites[:, :, start + halo - r: stop + halo + r, halo - r: halo + width + r]
    windows = np.lib.stride_tricks.sliding_window_view(block, (PATCH, PATCH), axis=(2, 3))
    # windows: (12, 10, rows, width, 5, 5) -> (rows*width, 12, 10, 5, 5)
    # copy(): a writable C-ordered array even where the transposed view happens to be contiguous (1-px-wide cores)
    out = windows.transpose(2, 3, 0, 1, 4, 5).copy().reshape(-1, 12, composites.shape[1], PATCH, PATCH)
    return fill_present_months(out)


def fill_present_months(patches: np.ndarray) -> np.ndarray:
    """Months whose centre pixel is missing become all-NaN (missing); other gaps take the patch mean per band."""
    c = PATCH // 2
    centre_missing = np.isnan(patches[:, :, :, c, c]).any(axis=2)  # (N, 12)
    patches[centre_missing] = np.nan
    gaps = np.isnan(patches) & ~centre_missing[:, :, None, None, None]
    if gaps.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(patches, axis=(3, 4), keepdims=True)
        patches[gaps] = np.broadcast_to(means, patches.shape)[gaps]
    return patches


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


class SpeciesPredictor:
    """Species probabilities for pixel patches with a GeoTreeCLIP model: zero-shot over a species list (text
    features), or with a few-shot head (:mod:`treemap.heads`), which then sets the species."""

    def __init__(self, model, species: SpeciesList, spec: InferenceSpec = InferenceSpec(),
                 model_key: str | None = None, cache_dir: Path | None = None, head=None):
        self.device = spec.resolve_device()
        self.batch_size = spec.batch_size
        self.model = model.to(self.device).eval()
        self.head = head
        if head is not None:
            self.species = head.species
            self.text = None
        else:
            self.species = species
            self.text = text_features(self.model, species, model_key, cache_dir).to(self.device)

    def _to_device(self, array: np.ndarray, slot: int) -> torch.Tensor:
        """A batch on the device. On CUDA it goes through a reused page-locked (pinned) host buffer, so the copy is
        a direct DMA that runs asynchronously (``non_blocking``) instead of a staged pageable copy."""
        host = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return host
        buffers = self.__dict__.setdefault("_pinned", {})
        buf = buffers.get(slot)
        if buf is None or buf.numel() < host.numel():
            # a fresh buffer: the previous one may still feed an in-flight copy, so it is never overwritten
            buf = torch.empty(max(host.numel(), self.batch_size * host[0].numel() if host.shape[0] else 0),
                              dtype=host.dtype, pin_memory=True)
            buffers[slot] = buf
        else:
            torch.cuda.current_stream(self.device).synchronize()  # the last copy out of this buffer has finished
        staged = buf[: host.numel()].view(host.shape)
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def predict(self, patches: np.ndarray, aux: np.ndarray) -> np.ndarray:
        """Probabilities (N, S) float32 for patches (N, 12, 10, 5, 5) and aux (N, 27)."""
        out = np.empty((patches.shape[0], len(self.species)), dtype=np.float32)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, patches.shape[0], self.batch_size):
                stop = min(start + self.batch_size, patches.shape[0])
                x = self._to_device(patches[start:stop], 0)
                a = self._to_device(aux[start:stop], 1)
                emb = self.model.encode_location(x, a)
                probs = self.head.probabilities(emb) if self.head is not None else self.model.zero_shot(emb, self.text)
                out[start:stop] = probs.float().cpu().numpy()
        return out

    def predict_tile(
        self, composites: np.ndarray, halo: int, lonlat: np.ndarray, valid: np.ndarray, rows_per_block: int = 64
    ) -> np.ndarray:
        """Probabilities (S, H, W) for a tile's core; NaN where ``valid`` is False or no month is present.

        ``lonlat`` is (2, H, W) pixel-centre longitude/latitude; ``valid`` (H, W) marks pixels inside the AOI.
        """
        h, w = valid.shape
        probs = np.full((len(self.species), h, w), np.nan, dtype=np.float32)
        for r0 in range(0, h, rows_per_block):
            r1 = min(r0 + rows_per_block, h)
            patches = pixel_patches(composites, halo, slice(r0, r1))
            present = ~np.isnan(patches).all(axis=(2, 3, 4))  # (N, 12)
            keep = valid[r0:r1].reshape(-1) & present.any(axis=1)
            if not keep.any():
                continue
            aux = np.full((int(keep.sum()), N_AUX), np.nan, dtype=np.float32)
            aux[:, 0] = lonlat[0, r0:r1].reshape(-1)[keep]
            aux[:, 1] = lonlat[1, r0:r1].reshape(-1)[keep]
            result = self.predict(np.ascontiguousarray(patches[keep]), aux)
            flat = np.full((keep.size, len(self.species)), np.nan, dtype=np.float32)
            flat[keep] = result
            probs[:, r0:r1] = flat.T.reshape(len(self.species), r1 - r0, w)
        return probs
