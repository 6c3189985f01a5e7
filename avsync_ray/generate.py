"""One-off generation: load inputs as the official demo does, run the pipeline, write an mp4 with the audio."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avsync_ray.config import GenerateConfig, save_config
from avsync_ray.media import decode, encode_mp4, load_audio, load_image, probe
from avsync_ray.media.audio import DEFAULT_MEL
from avsync_ray.media.errors import source_name
from avsync_ray.media.frames import center_crop_resize, to_uint8_frames
from avsync_ray.media.io import Source
from avsync_ray.pipelines.loading import load_pipeline
from avsync_ray.pipelines.schedulers import make_scheduler, scheduler_name


@dataclass
class Conditioning:
    image: np.ndarray  # (H, W, 3) uint8 at the output size
    audio: np.ndarray  # 16 kHz mono float32, the clip the model hears
    source: dict


def load_conditioning(
    config: GenerateConfig, image: Source | None = None, audio: Source | None = None, video: Source | None = None
) -> Conditioning:
    """The first frame and audio clip, following the official demo: ``image`` and ``audio`` files win;
    otherwise both come from the centred ``num_frames / fps``-second clip of ``video``. Each input is a URI or
    the file's bytes."""
    if image and audio and video:
        raise ValueError("give at most two of image, audio and video")
    if not ((image or video) and (audio or video)):
        raise ValueError("need an image (or a video) and an audio track (or a video)")
    size = (config.height, config.width)
    clip_seconds = config.num_frames / config.fps
    source: dict = {name: value and source_name(value) for name, value in (("image", image), ("audio", audio), ("video", video))}
    clip = None
    if video and not (image and audio):
        info = probe(video)
        durations = [d for d in (info.video and info.video.duration, info.audio and info.audio.duration) if d]
        av_duration = min(durations) if durations else info.duration
        start = max(0.0, (av_duration - clip_seconds) / 2)
        clip = decode(
            video, fps=config.fps, start=start, end=start + clip_seconds, video=not image, audio=not audio, frame_selection="next"
        )
        source["clip_start_s"] = start
    first_frame = load_image(image) if image else clip.frames[0]
    waveform = load_audio(audio) if audio else clip.audio
    frame = to_uint8_frames(center_crop_resize(first_frame, size))[0]
    return Conditioning(image=frame, audio=np.asarray(waveform, dtype=np.float32), source=source)


def configure_pipeline(pipe, config: GenerateConfig):
    """Apply a config's pipeline-wide settings (the sampler) to a loaded pipeline; returns it."""
    if scheduler_name(pipe.scheduler) != config.scheduler:
        pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    return pipe


def generate_batch(
    pipe,
    conditionings: Sequence[Conditioning],
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: GenerateConfig,
    callback_on_step_end: Callable | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Several animations with the same sampling settings in one pipeline call (configured by
    :func:`configure_pipeline`), each drawing its noise from its own seed, so each equals what it gives alone
    (up to float round-off). ``callback_on_step_end`` runs between denoising steps (``pipe(...)``'s argument).
    Returns uint8 frames (T, H, W, 3) and the 16 kHz conditioning clip of each."""
    if not len(conditionings) == len(prompts) == len(seeds):
        raise ValueError(f"got {len(conditionings)} conditionings, {len(prompts)} prompts and {len(seeds)} seeds")
    out = pipe(
        image=[c.image for c in conditionings],
        audio=[c.audio for c in conditionings],
        audio_sample_rate=DEFAULT_MEL.sample_rate,
        prompt=list(prompts),
        num_frames=config.num_frames,
        height=config.height,
        width=config.width,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        audio_guidance_scale=config.audio_guidance_scale,
        generator=[torch.Generator(device=pipe.device).manual_seed(seed) for seed in seeds],
        output_type="np",
        callback_on_step_end=callback_on_step_end,
        official_inplace_step=config.official_inplace_step,
    )
    return [(to_uint8_frames(frames), audio) for frames, audio in zip(out.frames, out.audio)]


def generate(pipe, conditioning: Conditioning, prompt: str, config: GenerateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Run the pipeline once (configured by :func:`configure_pipeline`) with ``config.seed``; returns uint8 frames
    (T, H, W, 3) and the 16 kHz conditioning clip."""
    return generate_batch(pipe, [conditioning], [prompt], [config.seed], config)[0]


def run_generate(
    model: str | Path,
    out: str | Path,
    prompt: str,
    config: GenerateConfig,
    image: str | None = None,
    audio: str | None = None,
    video: str | None = None,
) -> dict:
    """Load, generate, write ``out`` (mp4: frames at ``config.fps`` + the conditioning audio as AAC) and the
    resolved config beside it (``<out>.config.yaml``). Returns a summary."""
    pipe = configure_pipeline(load_pipeline(model, config.device, config.dtype), config)
    conditioning = load_conditioning(config, image=image, audio=audio, video=video)
    frames, clip = generate(pipe, conditioning, prompt, config)
    encode_mp4(frames, config.fps, clip, DEFAULT_MEL.sample_rate, str(out))
    snapshot = save_config(config, f"{out}.config.yaml")
    return {
        "output": str(out),
        "config": snapshot,
        "frames": int(frames.shape[0]),
        "fps": config.fps,
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "audio_seconds": round(len(clip) / DEFAULT_MEL.sample_rate, 3),
        "prompt": prompt,
        "inputs": conditioning.source,
    }
