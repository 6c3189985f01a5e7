"""K time-shifted audio and video clips from one decode (the sync classifier's inputs; paper §1.2-1.3, §2.1).

Clip k starts at ``first_start + k * shift``. Its audio is exactly ``clip_duration * sample_rate`` samples
from that time; its frames are the source frames nearest to ``start + j / fps`` (j < num_frames). Pure
code over a :class:`~avsync_ray.media.decoding.DecodedAV`; :func:`decode_clips` adds the single decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from avsync_ray.media.container import probe
from avsync_ray.media.decoding import DecodedAV, decode

Placement = Literal["random", "center"]


class ClipSamplingError(ValueError):
    """The requested clips do not fit in the media (never silently shortened)."""


@dataclass(frozen=True)
class MultiClipSpec:
    """K clips of ``num_frames / fps`` seconds, consecutive starts ``shift`` seconds apart."""

    num_clips: int
    shift: float
    placement: Placement
    num_frames: int = 12
    fps: float = 6.0
    sample_rate: int = 16_000

    @property
    def clip_duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def span(self) -> float:
        """Seconds from the first clip's start to the last clip's end."""
        return (self.num_clips - 1) * self.shift + self.clip_duration

    @property
    def center_index(self) -> int:
        return self.num_clips // 2


# The three uses in the paper.
TRAIN_CLIPS = MultiClipSpec(num_clips=21, shift=0.2, placement="random")  # contrastive training
EVAL_CLIPS = MultiClipSpec(num_clips=31, shift=0.04, placement="center")  # sync accuracy, +-5 tolerance
PSYNC_CLIPS = MultiClipSpec(num_clips=3, shift=0.25, placement="center")  # P_sync in curation


@dataclass
class MultiClip:
    """``audio`` (K, samples) float32 (None when cut from a decode without audio: the caller takes the clips from
    another file's audio with :func:`audio_clips`); ``frames`` (K, num_frames, H, W, 3) uint8; ``starts`` (K,)
    seconds; ``frame_times`` (K, num_frames) the source timestamps of the chosen frames."""

    audio: np.ndarray | None
    frames: np.ndarray
    starts: np.ndarray
    frame_times: np.ndarray
    spec: MultiClipSpec


def clip_starts(window_start: float, window_end: float, spec: MultiClipSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Start times of the K clips inside ``[window_start, window_end]``: the whole group centred
    (``center``) or placed uniformly at random (``random``, needs ``rng``)."""
    slack = (window_end - window_start) - spec.span
    if slack < -1e-9:
        raise ClipSamplingError(
            f"{spec.num_clips} clips of {spec.clip_duration:g} s shifted by {spec.shift:g} s need {spec.span:.3f} s; "
            f"the window [{window_start:.3f}, {window_end:.3f}] has {window_end - window_start:.3f} s"
        )
    slack = max(slack, 0.0)
    if spec.placement == "center":
        offset = slack / 2
    elif rng is None:
        raise ValueError("random placement needs an rng")
    else:
        offset = rng.uniform(0.0, slack)
    return window_start + offset + np.arange(spec.num_clips) * spec.shift


def nearest_frames(source_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the source frame nearest each target time (ties go to the earlier frame)."""
    right = np.clip(np.searchsorted(source_times, targets, side="left"), 1, len(source_times) - 1)
    left = right - 1
    take_right = np.abs(source_times[right] - targets) < np.abs(targets - source_times[left])
    return np.where(take_right, right, left)


def audio_clips(audio: np.ndarray, audio_start: float, starts: np.ndarray, spec: MultiClipSpec) -> np.ndarray:
    """(K, clip samples): ``clip_duration * sample_rate`` samples from each start, exact to the sample."""
    clip_samples = int(round(spec.clip_duration * spec.sample_rate))
    first = np.round((np.asarray(starts, dtype=np.float64) - audio_start) * spec.sample_rate).astype(np.int64)
    if first.min() < 0 or first.max() + clip_samples > len(audio):
        raise ClipSamplingError(
            f"audio covers [{audio_start:.3f}, {audio_start + len(audio) / spec.sample_rate:.3f}] s; "
            f"clips need [{min(starts):.3f}, {max(starts) + spec.clip_duration:.3f}] s"
        )
    return np.stack([audio[s : s + clip_samples] for s in first])


def sample_clips(decoded: DecodedAV, starts: np.ndarray, spec: MultiClipSpec) -> MultiClip:
    """Cut K clips out of one decode (every source frame, and the audio at ``spec.sample_rate`` if it was decoded)."""
    if decoded.fps is not None:
        raise ValueError("sample_clips needs every source frame: decode with fps=None")
    if decoded.frames is None:
        raise ValueError("sample_clips needs the video frames of the decode")
    if decoded.audio is not None and decoded.sample_rate != spec.sample_rate:
        raise ValueError(f"decode is at {decoded.sample_rate} Hz, the spec wants {spec.sample_rate} Hz")
    starts = np.asarray(starts, dtype=np.float64)
    audio = audio_clips(decoded.audio, decoded.audio_start, starts, spec) if decoded.audio is not None else None
    targets = starts[:, None] + np.arange(spec.num_frames)[None, :] / spec.fps
    source = decoded.source_frame_times
    frame_duration = 1.0 / decoded.info.video.fps if decoded.info.video and decoded.info.video.fps else 0.0
    if targets.min() < source[0] - frame_duration or targets.max() > source[-1] + frame_duration:
        raise ClipSamplingError(
            f"video frames cover [{source[0]:.3f}, {source[-1]:.3f}] s; clips need frames at "
            f"[{targets.min():.3f}, {targets.max():.3f}] s"
        )
    indices = nearest_frames(source, targets.ravel()).reshape(targets.shape)
    return MultiClip(audio=audio, frames=decoded.frames[indices], starts=starts, frame_times=source[indices], spec=spec)


def decode_clips(
    uri: str | bytes,
    spec: MultiClipSpec,
    window: tuple[float, float] | None = None,
    rng: np.random.Generator | None = None,
    size: int | tuple[int, int] | None = None,
    audio: bool = True,
    max_seconds: float | None = None,
    max_pixels: int | None = None,
) -> MultiClip:
    """Decode the span the K clips need, once, and cut them. ``window`` defaults to the time both streams
    cover (the video's alone with ``audio=False``, whose clips then have no audio); the decode reaches one frame
    beyond each end so the nearest frame is always available. ``max_seconds`` and ``max_pixels`` bound the decode
    (:class:`~avsync_ray.media.decoding.DecodeLimits`)."""
    info = probe(uri, max_pixels)
    durations = [d for d in (info.video and info.video.duration, audio and info.audio and info.audio.duration) if d]
    media_end = min(durations) if durations else (info.duration or 0.0)
    window = window or (0.0, media_end)
    starts = clip_starts(*window, spec, rng)
    margin = 1.0 / info.video.fps if info.video and info.video.fps else 0.1
    decoded = decode(
        uri,
        fps=None,
        size=size,
        start=max(0.0, float(starts[0]) - margin),
        end=min(float(starts[-1]) + spec.clip_duration + margin, media_end),
        audio=audio,
        sample_rate=spec.sample_rate,
        max_seconds=max_seconds,
        max_pixels=max_pixels,
    )
    return sample_clips(decoded, starts, spec)
