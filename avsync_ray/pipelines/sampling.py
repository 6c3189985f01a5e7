"""Sampling with a loaded pipeline from a :class:`~avsync_ray.config.sampling.SamplingConfig`: the output size a
config leaves to the model, the sampler and compilation it asks for, and one batched call where every sample
draws its noise from its own seed. Every generating command (generate, eval, serve, the MLflow model) samples here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.media.audio import DEFAULT_MEL
from avsync_ray.media.frames import to_uint8_frames
from avsync_ray.pipelines.loading import model_frame_size
from avsync_ray.pipelines.schedulers import make_scheduler, scheduler_name

SamplingConfigT = TypeVar("SamplingConfigT", bound=SamplingConfig)


def with_model_size(config: SamplingConfigT, model_dir: str | Path) -> SamplingConfigT:
    """``config`` with the output size it leaves open set to the model's own (see ``model_frame_size``)."""
    height, width = model_frame_size(model_dir)
    return config.model_copy(update={"height": config.height or height, "width": config.width or width})


def configure_pipeline(pipe, config: SamplingConfig):
    """Apply a config's pipeline-wide settings (the sampler, compilation) to a loaded pipeline; returns it.
    Compiling is lazy: the first call at each input shape pays for it."""
    if scheduler_name(pipe.scheduler) != config.scheduler:
        pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    if config.compile:
        pipe.enable_torch_compile(config.compile_mode)
    else:
        pipe.disable_torch_compile()
    return pipe


def generate_batch(
    pipe,
    images: list[np.ndarray],
    audios: list[np.ndarray],
    prompts: list[str],
    seeds: list[int],
    config: SamplingConfig,
    null_audio: bool = False,
    callback_on_step_end: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One pipeline call for a batch, each sample with its own generator seeded by ``seeds`` (so a sample does
    not depend on the others of its batch); returns uint8 frames (B, T, H, W, 3) and the 16 kHz clips (B, samples).
    ``null_audio`` conditions on the null audio instead (the model without its audio); ``callback_on_step_end``
    runs between denoising steps (``pipe(...)``'s argument: progress, cancellation)."""
    generators = [torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds]
    out = pipe(
        image=list(images),
        audio=list(audios),
        audio_sample_rate=DEFAULT_MEL.sample_rate,
        prompt=list(prompts),
        num_frames=config.num_frames,
        height=config.height,
        width=config.width,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        audio_guidance_scale=config.audio_guidance_scale,
        generator=generators,
        output_type="np",
        official_inplace_step=config.official_inplace_step,
        null_audio=null_audio,
        callback_on_step_end=callback_on_step_end,
    )
    return np.stack([to_uint8_frames(frames) for frames in out.frames]), out.audio
