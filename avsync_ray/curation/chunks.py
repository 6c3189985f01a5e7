"""Which frames and audio samples each chunk of a video's windows reads (pure logic: the scan decodes them).

A video's windows are scored in chunks: the windows whose start lies in the same ``CHUNK_SECONDS`` slice of the
source. A chunk carries only what its windows sample (the frames of the raw pixel difference, those of the
enabled model stages, and the audio its windows span), so what a task holds, and what a Ray Data row carries
to the model stages, is bounded by the slice length instead of growing with the video.

Frames are numbered as a whole-file pass meets them (:class:`~avsync_ray.media.reader.WholeFileReader`), audio
samples from the track's first sample at 16 kHz. Each window reads the frames nearest its sample times among
*all* frames of the file; a chunk keeps exactly those, so a stage looking up the nearest frame among a chunk's
frames finds the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from avsync_ray.curation.windows import audio_peak, model_frame_times, pixel_difference, pixel_grid
from avsync_ray.media.clips import nearest_frames

CHUNK_SECONDS = 10.0
# Audio samples a chunk keeps beyond what its windows read: more than any rounding of a time to a sample.
AUDIO_MARGIN = 8_000


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk: its windows (indices into the video's windows), the frames each window's pixel difference reads
    (windows, PIXEL_FRAMES), the frames the model stages read (sorted), and the audio samples ``[lo, hi)``
    (``hi`` may lie past the end of the track, which then ends the chunk's audio)."""

    number: int
    windows: np.ndarray
    pixel_frames: np.ndarray
    model_frames: np.ndarray
    audio: tuple[int, int]

    @cached_property
    def frames(self) -> np.ndarray:
        """Every frame the chunk reads, sorted."""
        return np.union1d(self.pixel_frames.ravel(), self.model_frames)


@dataclass(frozen=True)
class Sampling:
    """What fixes a video's samples: window length, which model stages read frames, the audio's timing."""

    length: float
    semantic: bool
    imagebind: bool
    sync: bool
    audio_start: float
    sample_rate: int

    def first_samples(self, starts: np.ndarray) -> np.ndarray:
        """The 16 kHz sample at each window start (clamped to the track's first)."""
        return np.round((np.asarray(starts) - self.audio_start) * self.sample_rate).astype(np.int64).clip(0)


def plan_chunks(starts: np.ndarray, frame_times: np.ndarray, sampling: Sampling) -> list[ChunkPlan]:
    """The chunks of a video's windows (by start time, in order), given every frame's timestamp."""
    starts = np.asarray(starts, dtype=np.float64)
    if not len(starts):
        return []
    slices = np.floor(starts / CHUNK_SECONDS + 1e-9).astype(np.int64)
    window_samples = int(round(sampling.length * sampling.sample_rate))
    plans = []
    for number in np.unique(slices):
        members = np.flatnonzero(slices == number)
        chosen = starts[members]
        pixel = nearest_frames(frame_times, pixel_grid(chosen, sampling.length).ravel()).reshape(len(members), -1)
        model_times = model_frame_times(chosen, sampling.length, sampling.semantic, sampling.imagebind, sampling.sync)
        model = np.unique(nearest_frames(frame_times, model_times)) if len(model_times) else np.zeros(0, dtype=np.int64)
        first = sampling.first_samples(chosen)
        audio = (max(0, int(first.min()) - AUDIO_MARGIN), int(first.max()) + window_samples + AUDIO_MARGIN)
        plans.append(ChunkPlan(int(number), members, pixel, model, audio))
    return plans


def cheap_scores(plan: ChunkPlan, starts: np.ndarray, frames: dict[int, np.ndarray], audio: np.ndarray, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """(pixel difference, audio peak) of the chunk's windows, from its frames (index -> RGB) and its audio (track
    samples ``plan.audio[0]`` on)."""
    pixel = np.array([pixel_difference(np.stack([frames[i] for i in row])) for row in plan.pixel_frames])
    window_samples = int(round(sampling.length * sampling.sample_rate))
    first = sampling.first_samples(np.asarray(starts)[plan.windows]) - plan.audio[0]
    return pixel, np.array([audio_peak(audio[f : f + window_samples]) for f in first])
