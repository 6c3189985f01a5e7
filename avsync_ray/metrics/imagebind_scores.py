"""ImageBind image-audio (IA) and image-text (IT) cosine similarities, as the official metric code computes them."""

from __future__ import annotations

import torch

from avsync_ray.models.imagebind import ImageBind, preprocess_images


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
