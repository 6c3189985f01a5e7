"""Devices and dtypes by the names configs use, and the lock every model loader holds: one place for every
command, actor and worker (no Ray here)."""

from __future__ import annotations

import functools
import threading

import torch

# Building a model is not thread-safe: diffusers' and accelerate's loaders build modules on the meta device by
# patching torch.nn for the whole process while they run, and seeded builds draw from the global RNG. Every loader
# a batch job's stage calls holds this lock, so the threads of a job run in process each load their own models.
MODEL_LOADING_LOCK = threading.RLock()


def loads_model(fn):
    """Decorates a function that builds or loads a model: it runs under :data:`MODEL_LOADING_LOCK`."""

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with MODEL_LOADING_LOCK:
            return fn(*args, **kwargs)

    return locked

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
