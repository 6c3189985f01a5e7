"""Build the models a training run starts from, from its config (no Ray): the same code builds them in the
workers, in ``avsync export`` and in the benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from avsync_ray.config.train import AVSyncDModelSettings, SyncModelSettings
from avsync_ray.devices import loads_model, torch_dtype
from avsync_ray.models.audio_encoder import ImageBindAudioEncoder
from avsync_ray.models.sync_classifier import SyncClassifier, load_sync_classifier
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel
from avsync_ray.pipelines import AVSyncDPipeline
from avsync_ray.pipelines.presets import tiny_pipeline


def build_sync_classifier(settings: SyncModelSettings, load_weights: bool = True) -> SyncClassifier:
    """The classifier at ``settings``' size; AVID-CMA or pretrained weights unless ``load_weights`` is False
    (export loads the trained weights over it)."""
    if settings.init == "pretrained" and load_weights:
        model = load_sync_classifier(settings.pretrained).requires_grad_(True)
        if (model.config.base_width, model.config.image_size) != (settings.base_width, settings.image_size):
            raise ValueError(
                f"{settings.pretrained} holds a classifier with base_width {model.config.base_width} and image_size "
                f"{model.config.image_size}; the config says {settings.base_width} and {settings.image_size}"
            )
        return model
    model = SyncClassifier(image_size=settings.image_size, base_width=settings.base_width)
    if settings.init == "avid_cma" and load_weights:
        model.load_avid_cma(settings.avid_cma)
    return model


def build_avsyncd_pipeline(settings: AVSyncDModelSettings, seed: int = 0) -> AVSyncDPipeline:
    """The pipeline whose UNet trains: ``tiny`` (random init, seeded), ``sd15`` (SD1.5 inflated into AVSyncD
    with ImageBind's audio branch, the official starting point) or ``pipeline`` (a saved AVSyncD pipeline, e.g.
    the official checkpoint converted with ``avsync convert-official``, or an export to fine-tune)."""
    if settings.init == "tiny":
        pipe = tiny_pipeline(seed)
    elif settings.init == "sd15":
        audio_encoder = ImageBindAudioEncoder.from_imagebind_checkpoint(settings.imagebind, pretrained_model_name=settings.imagebind_preset)
        unet2d = UNet2DConditionModel.from_pretrained(Path(settings.sd15) / "unet", local_files_only=True)
        unet = AVSyncDUNet3DModel.from_unet2d(unet2d, audio_cross_attention_dim=audio_encoder.imagebind_config.audio_embed_dim)
        pipe = AVSyncDPipeline.from_stable_diffusion(settings.sd15, unet=unet, audio_encoder=audio_encoder)
    else:
        pipe = AVSyncDPipeline.from_pretrained(settings.pipeline, local_files_only=True)
    for frozen in (pipe.vae, pipe.text_encoder, pipe.audio_encoder):
        if frozen is not None:
            _freeze(frozen, settings)
    if pipe.unet.dtype != torch.float32:  # trainable weights stay fp32 (DeepSpeed keeps bf16 copies for compute)
        pipe.unet.to(torch.float32)
    if settings.train_image_layers:
        pipe.unet.requires_grad_(True)
    else:
        pipe.unet.freeze_image_params()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@loads_model
def build_frozen_encoders(settings: AVSyncDModelSettings, seed: int = 0) -> tuple[AutoencoderKL, ImageBindAudioEncoder]:
    """Only the VAE and the audio encoder of the pipeline :func:`build_avsyncd_pipeline` builds (what ``avsync
    precompute`` runs), without loading or inflating a UNet."""
    if settings.init == "tiny":
        pipe = tiny_pipeline(seed)
        vae, audio_encoder = pipe.vae, pipe.audio_encoder
    elif settings.init == "sd15":
        vae = AutoencoderKL.from_pretrained(Path(settings.sd15) / "vae", local_files_only=True)
        audio_encoder = ImageBindAudioEncoder.from_imagebind_checkpoint(settings.imagebind, pretrained_model_name=settings.imagebind_preset)
    else:
        vae = AutoencoderKL.from_pretrained(Path(settings.pipeline) / "vae", local_files_only=True)
        audio_encoder = ImageBindAudioEncoder.from_pretrained(Path(settings.pipeline) / "audio_encoder", local_files_only=True)
    return _freeze(vae, settings), _freeze(audio_encoder, settings)


def _freeze(module: torch.nn.Module, settings: AVSyncDModelSettings) -> torch.nn.Module:
    dtype = torch_dtype(settings.frozen_dtype)
    module.requires_grad_(False).eval()
    return module.to(dtype) if module.dtype != dtype else module
