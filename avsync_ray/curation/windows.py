"""Pure curation logic: windows inside shots, what each score samples, the cheap scores, thresholds, merging.

Every time here is in seconds from the start of the source video. Nothing in this module does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avsync_ray.config.curate import CurateConfig, RangeRule
from avsync_ray.shards.schema import SCORE_NAMES

# What each score samples inside a window [s, s + 3) (paper §5.2).
PIXEL_FRAMES = 10  # frames at s + 0.3 * i, i < 10 (raw pixel and semantic differences)
IA_OFFSETS = (0.5, 1.5, 2.5)  # three frames; the 2-s audio centred on each, kept inside the window
PSYNC_SHIFT = 0.25  # P_sync: 2 s from the middle, shifted by +-0.25 s
CLIP_SECONDS = 2.0
CLIP_FRAMES, CLIP_FPS = 12, 6.0

# Filter order of the funnel (the shard contract's score names, in that order); a window's reason is the first
# rule it fails.
SCORE_RULES = SCORE_NAMES
REASONS = {
    "pixel_diff": ("too_static", "too_sharp"),
    "semantic_diff": ("semantic_too_similar", "semantic_too_different"),
    "audio_peak": ("too_quiet", "too_loud"),
    "ia": ("image_audio_misaligned", "image_audio_misaligned"),
    "it": ("image_text_misaligned", "image_text_misaligned"),
    "psync_a2v": ("low_sync_a2v", "low_sync_a2v"),
    "psync_v2a": ("low_sync_v2a", "low_sync_v2a"),
}


@dataclass(frozen=True)
class Window:
    """A span of one shot, in seconds: a scored window, or a clip merged from kept windows."""

    shot: int
    start: float
    end: float

    def covers(self, other: "Window") -> bool:
        """``other`` lies inside this span of the same shot (to the microsecond)."""
        return self.shot == other.shot and self.start <= other.start + 1e-9 and other.end <= self.end + 1e-9


def windows_in_shots(shots: list[tuple[float, float]], length: float = 3.0, stride: float = 0.5) -> list[Window]:
    """Windows of ``length`` s every ``stride`` s from each shot's start, wholly inside the shot."""
    windows = []
    for index, (shot_start, shot_end) in enumerate(shots):
        count = int(np.floor((shot_end - shot_start - length) / stride + 1e-9)) + 1
        windows += [Window(index, round(shot_start + k * stride, 6), round(shot_start + k * stride + length, 6)) for k in range(max(count, 0))]
    return windows


def pixel_times(start: float, length: float = 3.0) -> np.ndarray:
    return start + np.arange(PIXEL_FRAMES) * (length / PIXEL_FRAMES)


def ia_frame_times(start: float) -> np.ndarray:
    return start + np.asarray(IA_OFFSETS)


def ia_audio_starts(start: float, length: float = 3.0) -> np.ndarray:
    """Starts of the 2-s audio clips centred on the IA frames, clamped into the window."""
    return np.clip(ia_frame_times(start) - CLIP_SECONDS / 2, start, start + length - CLIP_SECONDS)


def psync_clip_starts(start: float, length: float = 3.0) -> np.ndarray:
    """The three P_sync clips: the middle 2 s of the window, and that shifted by -0.25 s and +0.25 s."""
    middle = start + (length - CLIP_SECONDS) / 2
    return middle + np.array([-PSYNC_SHIFT, 0.0, PSYNC_SHIFT])


def clip_audio_span(start: float, end: float, audio_start: float, sample_rate: int) -> tuple[int, int]:
    """The track samples ``[first, last)`` of a clip ``[start, end)`` s, given the time of the track's first sample
    (starting no earlier than it)."""
    first = int(round((start - audio_start) * sample_rate))
    return max(first, 0), first + int(round((end - start) * sample_rate))


def clip_frame_times(clip_start: float) -> np.ndarray:
    return clip_start + np.arange(CLIP_FRAMES) / CLIP_FPS


class TimeLookup:
    """Distinct times (rounded to the microsecond) and the index of each query among them: a model stage embeds
    each distinct frame or clip of its windows once (overlapping windows share most of them)."""

    def __init__(self, values: np.ndarray):
        rounded = np.round(np.asarray(values, dtype=np.float64), 6)
        self.unique, self.inverse = np.unique(rounded.ravel(), return_inverse=True)
        self.inverse = self.inverse.reshape(rounded.shape)


def pixel_grid(starts: np.ndarray, length: float) -> np.ndarray:
    """(windows, 10) times of the raw pixel and semantic differences."""
    return np.stack([pixel_times(s, length) for s in starts])


def ia_frame_grid(starts: np.ndarray) -> np.ndarray:
    """(windows, 3) times of the IA/IT frames."""
    return np.stack([ia_frame_times(s) for s in starts])


def ia_audio_grid(starts: np.ndarray, length: float) -> np.ndarray:
    return np.stack([ia_audio_starts(s, length) for s in starts])


def psync_grid(starts: np.ndarray, length: float) -> np.ndarray:
    """(windows, 3) starts of the P_sync clips."""
    return np.stack([psync_clip_starts(s, length) for s in starts])


def psync_frame_times(clip_starts: np.ndarray) -> np.ndarray:
    """The frame times of each clip in turn (``len(clip_starts) * CLIP_FRAMES``)."""
    return np.concatenate([clip_frame_times(s) for s in clip_starts])


def model_frame_times(starts: np.ndarray, length: float, semantic: bool, imagebind: bool, sync: bool) -> np.ndarray:
    """Every time whose nearest frame an enabled model stage reads for these windows, as the stage looks it up
    (:mod:`avsync_ray.curation.scorers`): what curation must hand the stages, and no more."""
    if not len(starts):
        return np.zeros(0)
    times = []
    if semantic:
        times.append(TimeLookup(pixel_grid(starts, length)).unique)
    if imagebind:
        times.append(TimeLookup(ia_frame_grid(starts)).unique)
    if sync:
        times.append(psync_frame_times(TimeLookup(psync_grid(starts, length)).unique))
    return np.concatenate(times) if times else np.zeros(0)


def pixel_difference(frames: np.ndarray) -> float:
    """Mean over consecutive sampled frames of their mean absolute RGB difference, in [0, 1]."""
    values = np.abs(np.diff(frames.astype(np.float32) / 255.0, axis=0)).mean(axis=(1, 2, 3))
    return float(values.mean())


def semantic_difference(embeddings: np.ndarray) -> float:
    """Max L2 distance between consecutive (unit-normalised) frame embeddings."""
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True).clip(1e-12)
    return float(np.linalg.norm(np.diff(unit, axis=0), axis=-1).max())


def audio_peak(audio: np.ndarray) -> float:
    return float(np.abs(audio).max()) if len(audio) else 0.0


def _rule_fails(value: float, rule: RangeRule) -> str | None:
    """'low', 'high' or None (passes). A missing score (NaN) under an enabled rule fails low."""
    if not rule.enabled:
        return None
    if np.isnan(value) or (rule.min is not None and value < rule.min):
        return "low"
    if rule.max is not None and value > rule.max:
        return "high"
    return None


def rules(config: CurateConfig) -> dict[str, RangeRule]:
    """The rule of each score, switched off where its model stage is disabled."""
    stages = config.filters
    off = RangeRule(enabled=False)
    return {
        "pixel_diff": stages.pixel_diff,
        "semantic_diff": stages.semantic.rule if stages.semantic.enabled else off,
        "audio_peak": stages.audio_peak,
        "ia": stages.imagebind.ia if stages.imagebind.enabled else off,
        "it": stages.imagebind.it if stages.imagebind.enabled else off,
        "psync_a2v": stages.sync.a2v if stages.sync.enabled else off,
        "psync_v2a": stages.sync.v2a if stages.sync.enabled else off,
    }


def decide(scores: dict[str, np.ndarray], config: CurateConfig) -> tuple[np.ndarray, list[str]]:
    """Keep flags and, per window, the reason of the first failed rule in funnel order ('' when kept)."""
    active = rules(config)
    count = len(next(iter(scores.values()))) if scores else 0
    reasons = [""] * count
    for name in SCORE_RULES:
        for index in range(count):
            if reasons[index]:
                continue
            failed = _rule_fails(float(scores[name][index]), active[name])
            if failed:
                reasons[index] = REASONS[name][0 if failed == "low" else 1]
    keep = np.array([not reason for reason in reasons], dtype=bool)
    return keep, reasons


def funnel(reason_counts: dict[str, int]) -> dict[str, int]:
    """How many windows each rule removed, in order, from the count of windows per reason ('' for kept; a window
    counts against its first failed rule)."""
    counts = {"windows": sum(reason_counts.values())}
    for name in SCORE_RULES:
        counts[f"removed_by_{name}"] = sum(reason_counts.get(reason, 0) for reason in set(REASONS[name]))
    counts["kept"] = reason_counts.get("", 0)
    return counts


def windows_of_clip(clip: Window, windows: list[Window], keep: np.ndarray) -> list[int]:
    """The kept windows a clip was merged from (indices into ``windows``): a rejected window that its span happens to
    cover (between two kept ones that overlap) is not one of them."""
    return [index for index, window in enumerate(windows) if keep[index] and clip.covers(window)]


def merge_windows(windows: list[Window], keep: np.ndarray, max_seconds: float | None = None) -> list[Window]:
    """Surviving windows of the same shot that overlap or touch become one clip. Clips longer than
    ``max_seconds`` are cut into consecutive pieces of at most that length."""
    clips: list[Window] = []
    for window, kept in sorted(zip(windows, keep), key=lambda item: (item[0].shot, item[0].start)):
        if not kept:
            continue
        if clips and clips[-1].shot == window.shot and window.start <= clips[-1].end + 1e-9:
            clips[-1] = Window(window.shot, clips[-1].start, max(clips[-1].end, window.end))
        else:
            clips.append(window)
    if max_seconds is None:
        return clips
    pieces = []
    for clip in clips:
        start = clip.start
        while clip.end - start > max_seconds + 1e-9:
            pieces.append(Window(clip.shot, start, round(start + max_seconds, 6)))
            start = round(start + max_seconds, 6)
        pieces.append(Window(clip.shot, start, clip.end))
    return pieces
