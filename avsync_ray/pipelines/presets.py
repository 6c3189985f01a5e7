"""Pipeline presets: the ``tiny`` pipeline (random init, deterministic, CPU-fast; tests and the demo) and the
``full`` one (the official AVSyncD architecture, built from real weights given by path)."""

from __future__ import annotations

from pathlib import Path

from avsync_ray.models.audio_encoder import ImageBindAudioEncoder
from avsync_ray.models.presets import tiny_components
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel
from avsync_ray.pipelines.pipeline_avsyncd import AVSyncDPipeline


def tiny_pipeline(seed: int = 0):
    return AVSyncDPipeline(**tiny_components(seed))


def save_tiny_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a runnable AVSyncD pipeline folder with the ``tiny`` preset (no download)."""
    out_dir = Path(out_dir)
    tiny_pipeline(seed).save_pretrained(out_dir)
    return out_dir


def official_pipeline(
    sd15_dir: str | Path, unet_dir: str | Path, imagebind_checkpoint: str | Path, imagebind_preset: str = "imagebind-huge", dtype=None
):
    """The ``full`` preset: SD1.5 VAE/text encoder/tokenizer/PNDM from a diffusers folder, an official AVSyncD UNet
    folder (loaded as it is) and ImageBind-huge's audio branch from ``imagebind_huge.pth``."""
    unet = AVSyncDUNet3DModel.from_pretrained(unet_dir, dtype=dtype)
    audio_encoder = ImageBindAudioEncoder.from_imagebind_checkpoint(imagebind_checkpoint, pretrained_model_name=imagebind_preset)
    audio_encoder = audio_encoder.to(unet.dtype)
    return AVSyncDPipeline.from_stable_diffusion(sd15_dir, unet=unet, audio_encoder=audio_encoder, dtype=dtype)
