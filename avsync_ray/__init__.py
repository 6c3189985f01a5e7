"""avsync-ray: audio-synchronized visual animation (AVSyncD, ECCV 2024) on Ray.

Heavy submodules (torch, diffusers, Ray) load on first use, so ``import avsync_ray`` and the CLI stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "AVSyncDPipeline": "avsync_ray.pipelines",
    "AVSyncDPipelineOutput": "avsync_ray.pipelines",
    "AVSyncDUNet3DModel": "avsync_ray.models",
    "ImageBindAudioEncoder": "avsync_ray.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avsync_ray' has no attribute {name!r}")
