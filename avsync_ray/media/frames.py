"""Frame preprocessing shared by generation and training (pure tensor code)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, functional as TF


def to_float_frames(frames) -> torch.Tensor:
    """RGB uint8 (H, W, 3) or (T, H, W, 3) -> float (T, 3, H, W) in [0, 1]."""
    frames = np.asarray(frames)
    frames = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (T, H, W, 3), got {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2).float() / 255.0


def center_crop_resize(frames, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """Trim to the target aspect ratio (centred), resize bilinearly with antialiasing, centre-crop to ``size``.

    The official AVSyncD image/video transform (``load_and_transform_images_stable_diffusion``). Input as
    :func:`to_float_frames` accepts, or float (T, 3, H, W) in [0, 1]; returns float (T, 3, h, w) in [0, 1].
    """
    images = frames if isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3 else to_float_frames(frames)
    target_h, target_w = size
    h, w = images.shape[-2:]
    if target_h / target_w >= h / w:
        trimmed = int(h / (target_h / target_w))
        images = images[..., (w - trimmed) // 2 : (w - trimmed) // 2 + trimmed]
    else:
        trimmed = int(w * (target_h / target_w))
        images = images[..., (h - trimmed) // 2 : (h - trimmed) // 2 + trimmed, :]
    images = TF.resize(images, [target_h, target_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    images = TF.center_crop(images, [target_h, target_w])
    return TF.hflip(images) if flip else images


def to_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float frames in [0, 1], (T, H, W, 3) or (T, 3, H, W) -> uint8 (T, H, W, 3)."""
    frames = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        frames = frames.permute(0, 2, 3, 1)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
