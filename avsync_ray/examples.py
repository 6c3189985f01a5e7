"""Model examples from shard samples: what training, precompute and the classifier's evaluation feed the
models, made the same way for all of them (pure data preparation: no Ray, no model weights).

A shard sample is the dict :func:`avsync_ray.shards.iter_samples` yields (``json``, ``mp4``, ``wav`` members).
Each function raises one of :data:`SAMPLE_ERRORS` for a sample it cannot make, so callers can skip it.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from avsync_ray.media import MediaError, decode, load_audio, waveform_to_mel
from avsync_ray.media.audio import TARGET_SAMPLE_RATE
from avsync_ray.media.clips import ClipSamplingError, MultiClipSpec, clip_starts, sample_clips
from avsync_ray.media.frames import center_crop_resize
from avsync_ray.models.sync_classifier import preprocess_sync_video
from avsync_ray.shards import AUDIO_MEMBER, AUDIO_TOKENS_MEMBER, VAE_MOMENTS_MEMBER, VIDEO_MEMBER, read_metadata

# What a bad sample raises: unreadable media, a clip that does not fit, a missing member, unparsable metadata.
SAMPLE_ERRORS = (MediaError, ClipSamplingError, KeyError, ValueError)


class ClipSource(NamedTuple):
    meta: dict  # the sample's JSON member
    audio: np.ndarray  # its canonical 16 kHz mono audio
    duration: float  # seconds both streams cover


def clip_source(raw: dict) -> ClipSource:
    """The metadata and audio of a shard sample, read once for all the clips taken from it."""
    meta = read_metadata(raw)
    audio = load_audio(raw[AUDIO_MEMBER], TARGET_SAMPLE_RATE)
    return ClipSource(meta, audio, min(meta["num_frames"] / meta["fps"], len(audio) / TARGET_SAMPLE_RATE))


def avsyncd_clip(
    raw: dict, source: ClipSource, start: float, *, num_frames: int = 12, fps: float = 6.0, size: tuple[int, int] = (256, 256), flip: bool = False
) -> dict:
    """The AVSyncD example of a shard sample (``source`` its :func:`clip_source`) that starts at ``start`` s
    (reference §6.1): frames on the ``fps`` grid by the official "next frame" rule, trimmed to the aspect ratio,
    resized and centre-cropped to ``size``, mirrored when ``flip``; the clip's exact audio as the ImageBind mel.
    Returns ``video`` (3, T, H, W) in [0, 1], ``audio`` (16 kHz samples), ``mel`` (1, 128, 204) and ``prompt``
    (the label)."""
    clip_seconds = num_frames / fps
    if start < 0 or start + clip_seconds > source.duration + 1e-6:
        raise ClipSamplingError(f"a {clip_seconds:.3f}-s clip at {start:.3f} s does not fit in the {source.duration:.3f} s the sample lasts")
    frames = decode(raw[VIDEO_MEMBER], fps=fps, start=start, end=start + clip_seconds, audio=False, frame_selection="next").frames
    if len(frames) < num_frames:  # the official loader pads with the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])
    video = center_crop_resize(frames[:num_frames], size, flip=flip)
    first = int(round(start * TARGET_SAMPLE_RATE))
    waveform = torch.from_numpy(source.audio[first : first + int(round(clip_seconds * TARGET_SAMPLE_RATE))].copy())
    return {"video": video.transpose(0, 1).contiguous(), "audio": waveform, "mel": waveform_to_mel(waveform), "prompt": source.meta["label"]}


def avsyncd_sample(
    raw: dict, rng: np.random.Generator, *, num_frames: int = 12, fps: float = 6.0, size: tuple[int, int] = (256, 256), randflip: bool = True
) -> dict:
    """One AVSyncD training example: :func:`avsyncd_clip` at a uniform random start, with one coin-toss flip
    for the whole clip."""
    source = clip_source(raw)
    clip_seconds = num_frames / fps
    if source.duration + 1e-6 < clip_seconds:
        raise ClipSamplingError(f"clip lasts {source.duration:.3f} s, training needs {clip_seconds:.3f} s")
    start = float(rng.uniform(0.0, max(source.duration - clip_seconds, 0.0)))
    flip = randflip and bool(rng.random() < 0.5)
    return avsyncd_clip(raw, source, start, num_frames=num_frames, fps=fps, size=size, flip=flip)


def sync_sample(raw: dict, rng: np.random.Generator, *, spec: MultiClipSpec, image_size: int = 224, randflip: bool = True) -> dict:
    """One classifier example (reference §6.2): ``spec.num_clips`` clips ``spec.shift`` s apart at a random
    place in the shard clip, from one decode of the video and the canonical audio; frames nearest each grid
    time, resized and centre-cropped, each clip flipped on its own coin toss. Returns ``video``
    (K, 3, T, S, S) normalised and ``mel`` (K, 1, 128, 204)."""
    _, audio, duration = clip_source(raw)
    starts = clip_starts(0.0, duration, spec, rng if spec.placement == "random" else None)
    margin = 1.0 / spec.fps
    decoded = decode(raw[VIDEO_MEMBER], fps=None, start=max(0.0, starts[0] - margin), end=min(starts[-1] + spec.clip_duration + margin, duration), audio=False)
    clips = sample_clips(replace(decoded, audio=audio, audio_start=0.0, sample_rate=TARGET_SAMPLE_RATE), starts, spec)
    video = preprocess_sync_video(clips.frames, image_size, "crop")
    if randflip:
        flips = torch.from_numpy(rng.random(len(video)) < 0.5)
        video[flips] = video[flips].flip(-1)
    return {"video": video, "mel": waveform_to_mel(torch.from_numpy(clips.audio))}


def precomputed_sample(raw: dict, rng: np.random.Generator, *, randflip: bool = True) -> dict:
    """One AVSyncD example from the features ``avsync precompute`` stored: a random one of the sample's windows
    and, with ``randflip``, a random one of its flip variants (the first is unflipped). Returns
    ``vae_moments`` (8, T, h, w), ``audio_tokens`` (tokens, d) and ``prompt``."""
    moments = np.load(io.BytesIO(raw[VAE_MOMENTS_MEMBER]))
    tokens = np.load(io.BytesIO(raw[AUDIO_TOKENS_MEMBER]))
    if moments.ndim != 6 or tokens.ndim != 3 or len(moments) != len(tokens):
        raise ValueError(f"precomputed features of shapes {moments.shape} and {tokens.shape} do not belong together")
    window = int(rng.integers(len(moments)))
    variant = int(rng.integers(moments.shape[1])) if randflip else 0
    return {
        "vae_moments": torch.from_numpy(moments[window, variant].astype(np.float32)),
        "audio_tokens": torch.from_numpy(tokens[window].astype(np.float32)),
        "prompt": read_metadata(raw)["label"],
    }
