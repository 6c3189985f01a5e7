"""Synthetic audio-video with known ground truth (demo, tests, benchmarks). Pure numpy; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SynthClip:
    """Frames (T, H, W, 3) uint8 at ``fps`` and mono float32 audio at ``sample_rate``.

    ``visual_events`` are the times (s) of visible impacts; ``audio_events`` the times of their sounds
    (equal when the clip is synchronised)."""

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    label: str
    visual_events: list[float] = field(default_factory=list)
    audio_events: list[float] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


def click(sample_rate: int, frequency: float, rng: np.random.Generator, length_s: float = 0.12) -> np.ndarray:
    """A struck sound: a decaying tone plus a short noise transient."""
    t = np.arange(int(length_s * sample_rate)) / sample_rate
    envelope = np.exp(-t * 40.0)
    tone = np.sin(2 * np.pi * frequency * t) * envelope
    noise = rng.standard_normal(t.shape) * np.exp(-t * 120.0)
    return (0.6 * tone + 0.3 * noise).astype(np.float32)


def bouncing_ball(
    duration: float = 3.0,
    fps: float = 24.0,
    size: tuple[int, int] = (64, 64),
    sample_rate: int = 16_000,
    hit_times: tuple[float, ...] = (0.5, 1.3, 2.1),
    audio_shift: float = 0.0,
    seed: int = 0,
    label: str = "ball bouncing",
) -> SynthClip:
    """A ball that falls and bounces off the floor at ``hit_times``; each bounce flashes the floor and makes a
    click at ``hit time + audio_shift`` (0 = synchronised)."""
    rng = np.random.default_rng(seed)
    height, width = size
    num_frames = int(round(duration * fps))
    times = np.arange(num_frames) / fps
    background = np.array(rng.integers(20, 80, size=3), dtype=np.uint8)
    colour = np.array(rng.integers(150, 256, size=3), dtype=np.uint8)
    floor_y, radius = int(height * 0.85), max(2, height // 10)
    x_centre = width // 2
    hits = np.asarray(hit_times, dtype=float)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for index, t in enumerate(times):
        # Height above the floor: a parabola between consecutive hits (and before the first one).
        previous = hits[hits <= t].max(initial=-np.inf)
        following = hits[hits > t].min(initial=np.inf)
        if np.isinf(previous):
            previous = following - 0.8
        if np.isinf(following):
            following = previous + 0.8
        phase = (t - previous) / (following - previous)
        altitude = 4 * phase * (1 - phase)  # 0 at hits, 1 midway
        y = floor_y - radius - altitude * (floor_y - 2 * radius)
        frame = np.broadcast_to(background, (height, width, 3)).copy()
        flash = np.any(np.abs(hits - t) < 0.5 / fps)
        frame[floor_y:] = 230 if flash else 110
        frame[(yy - y) ** 2 + (xx - x_centre) ** 2 <= radius**2] = colour
        frames[index] = frame
    audio = (rng.standard_normal(int(round(duration * sample_rate))) * 0.005).astype(np.float32)
    sound = click(sample_rate, float(rng.uniform(300, 900)), rng)
    audio_events = [float(h + audio_shift) for h in hits if 0 <= h + audio_shift < duration]
    for event in audio_events:
        start = int(round(event * sample_rate))
        end = min(len(audio), start + len(sound))
        audio[start:end] += sound[: end - start]
    return SynthClip(frames, np.clip(audio, -1, 1), fps, sample_rate, label, [float(h) for h in hits], audio_events)
