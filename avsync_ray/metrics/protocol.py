"""The evaluation protocol of the paper (supplementary §3.4) as the official ``avgen/evaluations/`` runs it, in pure
functions: which clips, which seeds, which frames each metric sees, and each feature network's input.

Per test video: ``clips_per_video`` (3) clips of ``num_frames / fps`` (2) seconds starting at
``linspace(0, duration - 2, 3)`` (head, centre, tail). FID, IA and IT use frames 2..12 (zero-based 1..11: frame 1 is
the conditioning image); FVD uses all 12 frames of each clip.

``protocol="official"`` reproduces ASVA's preprocessing: FID frames resized to 229x229 (torchvision bicubic,
antialiased), centre-cropped, mapped to [-1, 1], into the FID Inception without its own resize; FVD frames
resized to 224x224 the same way, [-1, 1], into the I3D with ``rescale=False, resize=False``. ``protocol="standard"``
uses each network's standard pipeline instead: pytorch-fid's (bilinear ``F.interpolate`` to 299, ``2x - 1``) and
StyleGAN-V's (uint8 [0, 255] video, the I3D's own ``rescale=True, resize=True``). Numbers from the two protocols
(or from other libraries) are not comparable.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, functional as TF

from avsync_ray.media.frames import to_float_frames

Protocol = Literal["official", "standard"]
FUTURE_FRAMES = slice(1, None)  # FID, IA, IT: every frame but the conditioning one (the paper's v_2..b)
OFFICIAL_FID_SIZE = 229  # ASVA's FID resize (pytorch-fid's standard is 299)
STANDARD_FID_SIZE = 299
FVD_SIZE = 224


class ClipTooShortError(ValueError):
    """A test video shorter than one evaluation clip."""


def clip_starts(duration: float, clip_seconds: float = 2.0, count: int = 3) -> np.ndarray:
    """Start times of the evaluation clips: ``linspace(0, duration - clip_seconds, count)`` (the centre for one)."""
    if duration + 1e-6 < clip_seconds:
        raise ClipTooShortError(f"the video lasts {duration:.3f} s, an evaluation clip needs {clip_seconds:.3f} s")
    last = max(duration - clip_seconds, 0.0)
    return np.array([last / 2]) if count == 1 else np.linspace(0.0, last, count)


def clip_seed(base_seed: int, video_key: str, clip_index: int) -> int:
    """The seed of one clip, from (base seed, test video, clip index) alone: any clip regenerates by itself."""
    digest = hashlib.sha256(f"{base_seed}:{video_key}:{clip_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def float_frames(frames) -> torch.Tensor:
    """Frames as float (T, 3, H, W) in [0, 1]: uint8 or float (T, H, W, 3) arrays, or such a tensor already."""
    if isinstance(frames, torch.Tensor) and frames.is_floating_point() and frames.shape[1] == 3:
        return frames
    array = np.asarray(frames)
    if array.dtype == np.uint8:
        return to_float_frames(array)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 3, 1, 2)


def fid_input(images: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """Float frames (T, 3, H, W) in [0, 1] -> the FID Inception's input (T, 3, S, S) in [-1, 1]."""
    if protocol == "official":
        size = [OFFICIAL_FID_SIZE, OFFICIAL_FID_SIZE]
        images = TF.center_crop(TF.resize(images, size, interpolation=InterpolationMode.BICUBIC, antialias=True), size)
    else:
        images = F.interpolate(images, size=(STANDARD_FID_SIZE, STANDARD_FID_SIZE), mode="bilinear", align_corners=False)
    return 2 * images - 1


def fvd_input(images: torch.Tensor, protocol: Protocol) -> tuple[torch.Tensor, dict]:
    """Float frames (T, 3, H, W) in [0, 1] -> the I3D's input (3, T, h, w) and its call flags."""
    if protocol == "official":
        images = TF.resize(images, [FVD_SIZE, FVD_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return (2 * images - 1).transpose(0, 1), {"rescale": False, "resize": False}
    video = (images.clamp(0, 1) * 255).round().to(torch.uint8)  # StyleGAN-V feeds uint8 videos in [0, 255]
    return video.transpose(0, 1), {"rescale": True, "resize": True}
