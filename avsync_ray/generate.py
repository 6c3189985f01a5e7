"""``avsync generate``: one animation from files, written as an mp4 with the audio muxed in (the inputs are
prepared by :mod:`avsync_ray.conditioning`, sampled by :mod:`avsync_ray.pipelines.sampling`).

Importing this module is light: torch, diffusers and PyAV load only once the arguments have been checked, so a
mistyped path is reported at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from avsync_ray.config.base import save_config
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.errors import InputError
from avsync_ray.storage import filesystem

if TYPE_CHECKING:
    import numpy as np

    from avsync_ray.conditioning import Conditioning

logger = logging.getLogger(__name__)


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


def check_inputs_exist(**sources: str | None) -> None:
    """Each given input file (``image``, ``audio``, ``video``: a path or URI) exists, named as
    :mod:`avsync_ray.conditioning` names its inputs; the files are read (and checked further) later."""
    for field, source in sources.items():
        if source:
            fs, path = filesystem(source)
            if not fs.exists(path):
                raise FileNotFoundError(f"{field} {source}: not found")


def generate(pipe, conditioning: Conditioning, prompt: str, config: GenerateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Run the pipeline once (configured by :func:`configure_pipeline`); returns uint8 frames (T, H, W, 3) and
    the 16 kHz conditioning clip."""
    from avsync_ray.pipelines.sampling import generate_batch

    frames, audio = generate_batch(pipe, [conditioning.image], [conditioning.audio], [prompt], [config.seed], config)
    return frames[0], audio[0]


def write_animation(frames: np.ndarray, clip: np.ndarray, fps: float, out: str) -> float:
    """Write ``frames`` at ``fps`` with ``clip`` (16 kHz) muxed in as AAC to ``out``; audio shorter than the video
    is padded with silence (with a warning). Returns the seconds of padding."""
    from avsync_ray.conditioning import pad_to
    from avsync_ray.media import encode_mp4
    from avsync_ray.media.audio import DEFAULT_MEL

    sound, padded = pad_to(clip, len(frames) / fps)
    if padded:
        logger.warning("the audio lasts %.2f s, shorter than the %.2f-s video: padded with %.2f s of silence", len(clip) / DEFAULT_MEL.sample_rate, len(frames) / fps, padded)
    encode_mp4(frames, fps, sound, DEFAULT_MEL.sample_rate, out)
    return padded


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
    check_inputs_exist(image=image, audio=audio, video=video)
    from avsync_ray.conditioning import load_conditioning
    from avsync_ray.devices import resolve_device
    from avsync_ray.media.audio import DEFAULT_MEL
    from avsync_ray.pipelines.loading import check_pipeline_folder, load_pipeline
    from avsync_ray.pipelines.sampling import configure_pipeline, with_model_size

    resolve_device(config.device)  # no GPU, when one is asked for, is an error before any work
    model_dir = check_pipeline_folder(model)
    config = with_model_size(config, model_dir)
    conditioning = load_conditioning(config, image=image, audio=audio, video=video, limits=config.limits)
    pipe = configure_pipeline(load_pipeline(model_dir, config.device, config.dtype), config)
    frames, clip = generate(pipe, conditioning, prompt, config)
    padded = write_animation(frames, clip, config.fps, out)
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
