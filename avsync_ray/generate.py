"""One-off generation: load inputs as the official demo does, run the pipeline, write an mp4 with the audio."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from avsync_ray.config import GenerateConfig, SamplingConfig, save_config
from avsync_ray.devices import resolve_device
from avsync_ray.errors import InputError
from avsync_ray.media import decode, encode_mp4, load_audio, load_image, probe
from avsync_ray.media.audio import DEFAULT_MEL
from avsync_ray.media.errors import source_name
from avsync_ray.media.frames import center_crop_resize, to_uint8_frames
from avsync_ray.media.io import Source
from avsync_ray.pipelines.loading import check_pipeline_folder, load_pipeline, model_frame_size
from avsync_ray.pipelines.schedulers import make_scheduler, scheduler_name
from avsync_ray.storage import filesystem

logger = logging.getLogger(__name__)

SamplingConfigT = TypeVar("SamplingConfigT", bound=SamplingConfig)


@dataclass
class Conditioning:
    image: np.ndarray  # (H, W, 3) uint8 at the output size
    audio: np.ndarray  # 16 kHz mono float32, the clip the model hears
    source: dict


def with_model_size(config: SamplingConfigT, model_dir: str | Path) -> SamplingConfigT:
    """``config`` with the output size it leaves open set to the model's own (see ``model_frame_size``)."""
    height, width = model_frame_size(model_dir)
    return config.model_copy(update={"height": config.height or height, "width": config.width or width})


def load_conditioning(
    config: GenerateConfig, image: Source | None = None, audio: Source | None = None, video: Source | None = None
) -> Conditioning:
    """The first frame and audio clip, following the official demo: ``image`` and ``audio`` files win;
    otherwise both come from the centred ``num_frames / fps``-second clip of ``video``. Every input is
    decoded (and so checked) here; audio too short for the mel front end is refused. Each input is a URI or the
    file's bytes."""
    if image and audio and video:
        raise InputError("give at most two of --image, --audio and --video")
    if not ((image or video) and (audio or video)):
        raise InputError("need an image (--image, or a --video) and a sound (--audio, or a --video with an audio track)")
    if config.height is None or config.width is None:
        raise InputError("the output size is not set: use with_model_size(config, model) or set height and width")
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
    waveform = np.asarray(load_audio(audio) if audio else clip.audio, dtype=np.float32)
    shortest = int(DEFAULT_MEL.sample_rate * DEFAULT_MEL.frame_length_ms / 1000)
    if len(waveform) < shortest:
        raise InputError(f"{source_name(audio or video)}: the audio lasts {len(waveform) / DEFAULT_MEL.sample_rate:.3f} s; at least {shortest / DEFAULT_MEL.sample_rate} s is needed")
    frame = to_uint8_frames(center_crop_resize(first_frame, (config.height, config.width)))[0]
    return Conditioning(image=frame, audio=waveform, source=source)


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


def generate(pipe, conditioning: Conditioning, prompt: str, config: GenerateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Run the pipeline once (configured by :func:`configure_pipeline`); returns uint8 frames (T, H, W, 3) and
    the 16 kHz conditioning clip."""
    frames, audio = generate_batch(pipe, [conditioning.image], [conditioning.audio], [prompt], [config.seed], config)
    return frames[0], audio[0]


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


def check_output(out: str | Path, suffix: str = ".mp4") -> str:
    """``out`` if a file can be written there: the right suffix, not a folder (its folder is created)."""
    out = str(out)
    if not out.lower().endswith(suffix):
        raise InputError(f"--out {out}: the output is an H.264/AAC {suffix} file, so its name must end in {suffix}")
    fs, path = filesystem(out)
    if fs.isdir(path):
        raise InputError(f"--out {out} is a folder; give a file name ending in {suffix}")
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    return out


def pad_to(audio: np.ndarray, seconds: float, sample_rate: int = DEFAULT_MEL.sample_rate) -> tuple[np.ndarray, float]:
    """``audio`` padded with silence to ``seconds`` (the video's length), and the seconds of padding added."""
    missing = max(0, int(round(seconds * sample_rate)) - len(audio))
    return np.pad(audio, (0, missing)), missing / sample_rate


def run_generate(
    model: str | Path,
    out: str | Path,
    prompt: str,
    config: GenerateConfig,
    image: str | None = None,
    audio: str | None = None,
    video: str | None = None,
) -> dict:
    """Check the arguments and decode the inputs, then load the model, generate, and write ``out`` (mp4: frames
    at ``config.fps`` + the conditioning audio as AAC) with the resolved config beside it
    (``<out>.config.yaml``). Returns a summary. Audio shorter than the clip is heard as the official code
    hears it (the mel is padded) and muxed padded with silence; the summary says how much."""
    out = check_output(out)
    resolve_device(config.device)  # no GPU, when one is asked for, is an error before any work
    model_dir = check_pipeline_folder(model)
    config = with_model_size(config, model_dir)
    conditioning = load_conditioning(config, image=image, audio=audio, video=video)
    pipe = configure_pipeline(load_pipeline(model_dir, config.device, config.dtype), config)
    frames, clip = generate(pipe, conditioning, prompt, config)
    sound, padded = pad_to(clip, len(frames) / config.fps)
    if padded:
        logger.warning("the audio lasts %.2f s, shorter than the %.2f-s video: padded with %.2f s of silence", len(clip) / DEFAULT_MEL.sample_rate, len(frames) / config.fps, padded)
    encode_mp4(frames, config.fps, sound, DEFAULT_MEL.sample_rate, out)
    snapshot = save_config(config, f"{out}.config.yaml")
    return {
        "output": out,
        "config": snapshot,
        "frames": int(frames.shape[0]),
        "fps": config.fps,
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "audio_seconds": round(len(clip) / DEFAULT_MEL.sample_rate, 3),
        "audio_padded_s": round(padded, 3),
        "prompt": prompt,
        "inputs": conditioning.source,
    }
