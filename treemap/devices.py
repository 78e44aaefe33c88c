"""Which devices a run may use: the check of ``--device`` before anything runs, and a worker's GPU."""

from __future__ import annotations

import torch

from treemap.errors import DeviceError


def available_devices() -> list[str]:
    """The devices this machine offers, as --device takes them."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str) -> str:
    """``device`` when this machine has it (``auto`` always), else a one-line :class:`DeviceError` naming the
    devices that are available."""
    if device == "auto":
        return device
    available = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N (this machine has: "
                          f"{', '.join(available)})") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available on this machine (it has: "
                              f"{', '.join(available)})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: there is no such GPU (this machine has: {', '.join(available)})")
        return device
    if parsed.type == "mps" and "mps" in available:
        return device
    raise DeviceError(f"--device {device}: not available on this machine (it has: {', '.join(available)})")


def worker_device(device: str) -> str:
    """``auto`` on a local-cluster worker with CUDA: the GPU of the worker's index (one worker per GPU)."""
    from treemap.scale import worker_index

    index = worker_index()
    if device != "auto" or index is None or not torch.cuda.is_available():
        return device
    return f"cuda:{index % torch.cuda.device_count()}"


def visible_gpus(device: str) -> int:
    """The GPUs a prediction on ``device`` can spread over: all visible ones for ``auto``, one for ``cuda[:i]``."""
    if device == "auto":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 1 if device.startswith("cuda") else 0


# --- models --------------------------------------------------------------------------------------------------------
