"""ImageBind image-audio (IA) and image-text (IT) cosine similarities, as the official metric code computes them."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from avsync_ray.media.frames import to_float_frames
from avsync_ray.models.imagebind import IMAGE_MEAN, IMAGE_STD, ImageBind


def preprocess_images(frames, size: int = 224) -> torch.Tensor:
    """RGB frames (T, H, W, 3) uint8 -> (T, 3, size, size): resize to a square (bicubic, antialiased), centre
    crop, CLIP mean/std (the official ``clip_preprocess_videos``)."""
    images = to_float_frames(frames) if not (isinstance(frames, torch.Tensor) and frames.is_floating_point()) else frames
    images = TF.resize(images, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.center_crop(images, [size, size]), IMAGE_MEAN, IMAGE_STD)


@torch.no_grad()
def image_audio_similarity(imagebind: ImageBind, frames, mel: torch.Tensor) -> torch.Tensor:
    """(T,) cosine between each frame's ImageBind embedding and the audio's (``mel`` (1, 128, 204))."""
    device = next(imagebind.parameters()).device
    images = imagebind.embed_images(preprocess_images(frames).to(device))
    audio = imagebind.embed_audio(mel.reshape(1, *mel.shape[-3:]).to(device))
    return (images @ audio.T)[:, 0].cpu()


@torch.no_grad()
def image_text_similarity(imagebind: ImageBind, frames, text: str) -> torch.Tensor:
    """(T,) cosine between each frame's ImageBind embedding and the text's."""
    device = next(imagebind.parameters()).device
    images = imagebind.embed_images(preprocess_images(frames).to(device))
    return (images @ imagebind.embed_text([text]).T)[:, 0].cpu()
