"""Conditioning inputs: an image, an audio file and a video (paths, URIs or the files' bytes) -> the first frame and
the audio clip the pipeline is conditioned on, following the official demo. ``avsync generate``, the serving app,
the MLflow model and the benchmarks prepare their inputs here."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.errors import InputError
from avsync_ray.media import decode, load_audio, load_image, probe
from avsync_ray.media.audio import DEFAULT_MEL
from avsync_ray.media.container import Source
from avsync_ray.media.errors import source_name
from avsync_ray.media.frames import center_crop_resize, to_uint8_frames

logger = logging.getLogger(__name__)

SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS (ffmpeg silencedetect's default floor): audio below it has nothing to hear


@dataclass
class Conditioning:
    image: np.ndarray  # (H, W, 3) uint8 at the output size
    audio: np.ndarray  # 16 kHz mono float32, the clip the model hears
    source: dict


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
        start = max(0.0, (av_duration - clip_seconds) / 2)  # a video shorter than the clip gives all it has
        clip = decode(
            video, fps=config.fps, start=start, end=start + min(clip_seconds, av_duration), video=not image, audio=not audio, frame_selection="next"
        )
        source["clip_start_s"] = start
    first_frame = load_image(image) if image else clip.frames[0]
    waveform = np.asarray(load_audio(audio) if audio else clip.audio, dtype=np.float32)
    check_audio(waveform, source_name(audio or video))
    frame = to_uint8_frames(center_crop_resize(first_frame, (config.height, config.width)))[0]
    return Conditioning(image=frame, audio=waveform, source=source)


def check_audio(waveform: np.ndarray, name: str, clip_seconds: float | None = None) -> None:
    """Refuse audio too short for the mel front end (an :class:`InputError` naming it); warn when it is silent, or
    shorter than the ``clip_seconds`` a model hears (the rest is heard as silence)."""
    shortest = int(DEFAULT_MEL.sample_rate * DEFAULT_MEL.frame_length_ms / 1000)
    seconds = len(waveform) / DEFAULT_MEL.sample_rate
    if len(waveform) < shortest:
        raise InputError(f"{name}: the audio lasts {seconds:.3f} s; at least {shortest / DEFAULT_MEL.sample_rate} s is needed")
    if clip_seconds is not None and seconds < clip_seconds:
        logger.warning("%s: the audio lasts %.2f s, shorter than the %.2f-s clip: the rest is heard as silence", name, seconds, clip_seconds)
    peak = float(np.abs(waveform).max())
    if peak < SILENCE_PEAK:
        logger.warning("%s: the audio is silent (peak %.1e, below -60 dBFS): there is nothing to synchronise with", name, peak)


def pad_to(audio: np.ndarray, seconds: float, sample_rate: int = DEFAULT_MEL.sample_rate) -> tuple[np.ndarray, float]:
    """``audio`` padded with silence to ``seconds`` (the video's length), and the seconds of padding added."""
    missing = max(0, int(round(seconds * sample_rate)) - len(audio))
    return np.pad(audio, (0, missing)), missing / sample_rate
