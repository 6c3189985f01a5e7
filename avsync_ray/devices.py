"""Devices and dtypes by the names configs use: one place for every command, actor and worker (no Ray here)."""

from __future__ import annotations

import torch

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device a config asks for that this machine (or this actor) does not have."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config's ``dtype`` name (``float32``, ``bfloat16``, ``float16``)."""
    if name not in TORCH_DTYPES:
        raise DeviceError(f"unknown dtype {name!r}; choose one of {sorted(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def resolve_device(device: str = "auto", num_gpus: float | None = None) -> torch.device:
    """``auto`` is CUDA when this process can use a GPU (for a Ray actor: one with ``num_gpus`` > 0), else the
    CPU; any other name is taken as it is, after checking that a CUDA device exists."""
    if device == "auto":
        wants_gpu = num_gpus is None or num_gpus > 0
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"device={device!r} is not a torch device ({exc}); use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={device!r} needs a CUDA GPU, and this machine has none; use device=cpu or device=auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved
