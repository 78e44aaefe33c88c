"""Feeding the location encoder from a tile that lives on the device.

The host path (:func:`treemap.patches.kept_patches`) cuts every kept pixel's 5 x 5 x 12 x 10 patch on the host and
ships it to the device: 25 copies of every composite value cross the bus, and the encoder's normaliser scales all 25.
Here the tile's composites cross once (:class:`DeviceTile`), already scaled when the model's statistics are fixed,
and the patches of each batch are gathered from them on the device (:func:`gather_patches`), their gaps filled there
(:func:`fill_gaps`, the rule of :func:`treemap.patches.fill_present_months`). Results stay on the device until the tile
is done, so there is no host synchronisation per batch: the host queues a tile's batches and the device runs them.

Uploads go through :class:`Uploader`: page-locked (pinned) staging buffers in a ring, copied on a side CUDA stream
whose event the compute stream waits for, so a copy overlaps the previous batch's compute; a slot is reused only
after its copy's event has fired. ``TREEMAP_COPY_STREAM=0`` copies on the compute stream instead. The ring logic also
runs on the CPU (``staged=True``: plain buffers, no streams), which is how it is tested here.

Everything here is torch, so the same code runs on CPU tensors; tests compare it with the host path on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("treemap.feed")

PATCH = 5
# Batch sizing: the share of the device's free memory a batch may take, and the bounds of the result.
MEMORY_SHARE = 0.5
MIN_BATCH = 256
MAX_BATCH = 65536


def scale_composites(composites: Tensor, band_min: Tensor, band_max: Tensor, eps: float = 1e-6) -> Tensor:
    """The fixed-statistics rule of :class:`treemap.models.normalise.FixedNormaliser` applied to a tile's composites
    ``(12, C, H, W)`` once; NaN (missing) stays NaN so that gap filling and month presence still see it."""
    lo = band_min.to(composites.dtype)[None, :, None, None]
    hi = band_max.to(composites.dtype)[None, :, None, None]
    return 2.0 * ((composites - lo) / (hi - lo + eps)) - 1.0


def patch_index(rows: Tensor, cols: Tensor, width: int) -> Tensor:
    """Flat indices ``(K, 25)`` into a (H, width) plane of the 5 x 5 windows whose top-left corners are
    ``(rows, cols)``."""
    d = torch.arange(PATCH, device=rows.device)
    r = rows[:, None, None] + d[None, :, None]
    c = cols[:, None, None] + d[None, None, :]
    return (r * width + c).reshape(rows.shape[0], PATCH * PATCH)


def gather_patches(plane: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Patches ``(K, 12, C, 5, 5)`` of a tile ``plane`` ``(12, C, H, W)`` whose windows start at ``(rows, cols)``
    (the top-left pixel: a core pixel at core row i of a tile with halo h starts at row i + h - 2)."""
    t, c, _, w = plane.shape
    idx = patch_index(rows, cols, w)  # (K, 25)
    flat = plane.reshape(t * c, -1)  # a view: composites are C-ordered
    out = flat[:, idx.reshape(-1)].reshape(t, c, rows.shape[0], PATCH, PATCH)
    return out.permute(2, 0, 1, 3, 4).contiguous()


def fill_gaps(patches: Tensor) -> tuple[Tensor, Tensor]:
    """``(patches, present)``: months whose centre pixel is missing become all-NaN; other gaps take the patch mean
    per band (the rule of :func:`treemap.patches.fill_present_months`). ``present`` ``(K, 12)`` marks the months kept."""
    k = PATCH // 2
    centre_missing = torch.isnan(patches[:, :, :, k, k]).any(dim=2)  # (K, 12)
    # no shortcut for gap-free batches: testing for one would make the host wait for the device on every batch
    patches = patches.masked_fill(centre_missing[:, :, None, None, None], float("nan"))
    nan = torch.isnan(patches)
    gaps = nan & ~centre_missing[:, :, None, None, None]
    means = torch.nanmean(patches, dim=(3, 4), keepdim=True)
    return torch.where(gaps, means.expand_as(patches), patches), ~centre_missing


def batch_from_memory(free_bytes: int, per_sample_bytes: float, share: float = MEMORY_SHARE,
                      lo: int = MIN_BATCH, hi: int = MAX_BATCH) -> int:
    """The largest batch, in steps of ``lo``, whose working set (``per_sample_bytes`` each) fits in ``share`` of
    ``free_bytes``, within ``[lo, hi]``."""
    if per_sample_bytes <= 0:
        return hi
    n = int(free_bytes * share / per_sample_bytes)
    return max(lo, min(hi, n // lo * lo))


def probe_batch_size(encode, sample_shape: tuple[int, ...], n_aux: int, device: torch.device,
                     probe: int = 512) -> int:
    """A batch size for ``encode(patches, aux)`` on a CUDA ``device``, sized from its free memory: one probe batch
    measures the peak memory per sample (activations, autocast copies, outputs), then :func:`batch_from_memory`."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.zeros((probe, *sample_shape), device=device)
    a = torch.zeros((probe, n_aux), device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        encode(x, a)
    torch.cuda.synchronize(device)
    per_sample = (torch.cuda.max_memory_allocated(device) - base) / probe
    del x, a
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    size = batch_from_memory(free, per_sample)
    log.info("batch size %d from %.1f GiB free and %.0f kB per sample", size, free / 2**30, per_sample / 1e3)
    return size


def copy_stream_enabled() -> bool:
    return os.environ.get("TREEMAP_COPY_STREAM", "1").strip().lower() not in ("0", "false", "no", "off")


class Uploader:
    """Host arrays to the device through a ring of staging buffers (see the module doc).

    On CUDA the buffers are pinned, the copy runs on a side stream (unless ``TREEMAP_COPY_STREAM=0``) and the
    compute stream waits for it with an event; a slot is overwritten only once its last copy has finished. On the
    CPU ``staged=False`` (the default there) hands back a view of the array; ``staged=True`` runs the ring logic with
    plain buffers, for tests."""

    def __init__(self, device: torch.device, slots: int = 2, staged: bool | None = None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.staged = self.cuda if staged is None else staged
        self.slots = slots
        self._buffers: dict[tuple[str, int], Tensor] = {}
        self._events: dict[tuple[str, int], object] = {}
        self._turn: dict[str, int] = {}
        self.stream = torch.cuda.Stream(device) if self.cuda and copy_stream_enabled() else None

    def put(self, array: np.ndarray, name: str) -> Tensor:
        """``array`` on the device, ready for work queued after this call on the current stream."""
        host = torch.from_numpy(np.ascontiguousarray(array))
        if not self.staged:
            return host.to(self.device) if self.cuda else host
        turn = self._turn.get(name, 0)
        self._turn[name] = (turn + 1) % self.slots
        key = (name, turn)
        event = self._events.get(key)
        if event is not None:
            event.synchronize()  # this slot's previous copy has left the buffer
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < host.numel() or buf.dtype != host.dtype:
            buf = torch.empty(host.numel(), dtype=host.dtype, pin_memory=self.cuda)
            self._buffers[key] = buf
        staged = buf[: host.numel()].view(host.shape)
        staged.copy_(host)
        if not self.cuda:
            return staged.clone()  # the CPU stand-in for the copy out of the staging buffer
        compute = torch.cuda.current_stream(self.device)
        stream = self.stream or compute
        with torch.cuda.stream(stream):
            out = staged.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        if self.stream is not None:
            compute.wait_event(done)
            out.record_stream(compute)  # the allocator must not reuse it before the compute stream is done with it
        self._events[key] = done
        return out


@dataclass
class DeviceTile:
    """A tile's composites ``(12, C, H + 2 halo, W + 2 halo)`` on the device, scaled once if ``scaled``."""

    plane: Tensor
    halo: int
    scaled: bool

    @classmethod
    def upload(cls, composites: np.ndarray, halo: int, uploader: Uploader, normaliser=None) -> "DeviceTile":
        """``normaliser``: a fixed-statistics normaliser (``band_min``/``band_max``) to apply now, or None to leave
        the values raw (the official per-batch rule needs each batch's own statistics)."""
        if halo < PATCH // 2:
            raise ValueError("the halo must be at least 2 pixels for 5 x 5 patches")
        plane = uploader.put(composites.astype(np.float32, copy=False), "composites")
        if normaliser is not None:
            plane = scale_composites(plane, normaliser.band_min, normaliser.band_max)
        return cls(plane, halo, normaliser is not None)

    def patches(self, core_rows: Tensor, core_cols: Tensor) -> tuple[Tensor, Tensor]:
        """``(patches, present)`` for core pixels ``(core_rows, core_cols)``: gathered, gaps filled; when the tile
        is scaled, missing months are 0 (what the normaliser writes) and the patches go to
        ``encode_normalised``."""
        off = self.halo - PATCH // 2
        patches, present = fill_gaps(gather_patches(self.plane, core_rows + off, core_cols + off))
        if self.scaled:
            patches = patches.masked_fill(torch.isnan(patches), 0.0)
        return patches, present
