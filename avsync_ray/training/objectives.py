"""Training objectives as pure tensor functions (no I/O, no Ray, no host synchronisation).

AVSyncD (paper §3, reference §4.2): DDPM with the scaled-linear schedule, epsilon prediction; the clean first
frame latent replaces the noisy one (it is the image condition), the loss is the MSE on frames 1.. only, and
each sample's audio is swapped for the null audio with probability 0.2. Classifier (paper §1.2): the
contrastive loss over the time-shifted clips of one video. Randomness comes only from the generators passed
in, so every rank draws its own reproducible noise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from avsync_ray.metrics.sync_metrics import ContrastiveOutput, contrastive_loss

# The SD1.5 training schedule AVSyncD keeps (reference §4.2).
TRAIN_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False
)


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**TRAIN_SCHEDULER_CONFIG)


class DiffusionInputs(NamedTuple):
    noisy_latents: torch.Tensor  # (b, c, f, h, w), frame 0 clean
    timesteps: torch.Tensor  # (b,)
    target: torch.Tensor  # what the UNet must predict (the noise)


def diffusion_inputs(scheduler: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator) -> DiffusionInputs:
    """Noise video latents (b, c, f, h, w) at one uniform timestep per sample; frame 0 stays clean."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    noisy = torch.cat([latents[:, :, :1], noisy[:, :, 1:]], dim=2)
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"AVSyncD is trained with epsilon prediction, the scheduler predicts {scheduler.config.prediction_type!r}")
    return DiffusionInputs(noisy, timesteps, noise)


def frame_mse(prediction: torch.Tensor, target: torch.Tensor, include_first_frame: bool = False) -> torch.Tensor:
    """Mean squared error in fp32 over frames 1.. (frame 0 is given, so it carries no signal)."""
    first = 0 if include_first_frame else 1
    return F.mse_loss(prediction[:, :, first:].float(), target[:, :, first:].float())


def drop_condition(condition: torch.Tensor, null: torch.Tensor, drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each sample's ``condition`` (b, ...) by ``null`` (broadcastable) with probability ``drop_prob``."""
    if drop_prob <= 0:
        return condition
    keep = torch.rand(condition.shape[0], generator=generator, device=condition.device) >= drop_prob
    return torch.where(keep.view(-1, *([1] * (condition.ndim - 1))), condition, null.to(condition.dtype))


def avsyncd_loss(
    unet,
    latents: torch.Tensor,
    text_embeds: torch.Tensor,
    audio_embeds: torch.Tensor,
    audio_masks: torch.Tensor,
    null_audio_embeds: torch.Tensor,
    scheduler: DDPMScheduler,
    generator: torch.Generator,
    audio_drop_prob: float = 0.2,
    null_text_embeds: torch.Tensor | None = None,
    text_drop_prob: float = 0.0,
) -> torch.Tensor:
    """One AVSyncD training loss: latents (b, 4, f, h, w), text (b, 77, d), audio tokens (b, L, d_a) with their
    segment masks (b, f, L). The segment masks of the null audio are the same, so only the tokens are swapped."""
    audio_embeds = drop_condition(audio_embeds, null_audio_embeds, audio_drop_prob, generator)
    if text_drop_prob > 0:
        if null_text_embeds is None:
            raise ValueError("text_drop_prob > 0 needs null_text_embeds")
        text_embeds = drop_condition(text_embeds, null_text_embeds, text_drop_prob, generator)
    inputs = diffusion_inputs(scheduler, latents, generator)
    prediction = unet(
        inputs.noisy_latents.to(unet.dtype),
        inputs.timesteps,
        encoder_hidden_states=text_embeds.to(unet.dtype),
        audio_encoder_hidden_states=audio_embeds.to(unet.dtype),
        audio_attention_mask=audio_masks,
    ).sample
    return frame_mse(prediction, inputs.target)


def sync_loss(score_matrix, audio: torch.Tensor, video: torch.Tensor, tau: float = 0.1) -> ContrastiveOutput:
    """The classifier's contrastive loss for B videos of K clips: mels (B, K, 1, 128, 204), videos
    (B, K, 3, T, S, S); ``score_matrix(audio, video)`` gives the (B, K, K) scores (the classifier's method, or
    the training engine); each clip's negatives are the other clips of its own video."""
    return contrastive_loss(score_matrix(audio, video).float(), tau)


def vae_moments(vae, video: torch.Tensor) -> torch.Tensor:
    """Videos (b, 3, f, H, W) in [0, 1] -> the VAE posterior's mean and log-variance (b, 2c, f, H/8, W/8), in fp32:
    what ``avsync precompute`` stores, so the latents can still be sampled afresh at every step."""
    batch, _, frames, height, width = video.shape
    images = video.transpose(1, 2).reshape(batch * frames, 3, height, width) * 2 - 1
    moments = vae.encode(images.to(vae.dtype)).latent_dist.parameters
    return moments.reshape(batch, frames, *moments.shape[1:]).transpose(1, 2).float()


def sample_video_latents(moments: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw latents (b, c, f, h, w) from VAE moments (b, 2c, f, h, w), scaled as SD1.5 trains."""
    return DiagonalGaussianDistribution(moments.float()).sample(generator) * scaling_factor


def video_latents(vae, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Videos (b, 3, f, H, W) in [0, 1] -> sampled, scaled VAE latents (b, c, f, H/8, W/8)."""
    return sample_video_latents(vae_moments(vae, video), vae.config.scaling_factor, generator)
