"""Pure curation logic: windows in shots, sampling, scores, thresholds and reasons, merging."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation.windows import (
    Window,
    audio_peak,
    decide,
    funnel,
    ia_audio_starts,
    ia_frame_times,
    merge_windows,
    pixel_difference,
    pixel_times,
    psync_clip_starts,
    semantic_difference,
    windows_in_shots,
    windows_of_clip,
)

NO_MODELS = {"filters": {"semantic": {"enabled": False}, "imagebind": {"enabled": False}, "sync": {"enabled": False}}}


def config(**filters) -> CurateConfig:
    data = {"input": "in", "output": "out", **NO_MODELS}
    for name, value in filters.items():
        data["filters"][name] = value
    return CurateConfig.model_validate(data)


def test_windows_stay_inside_their_shot():
    shots = [(0.0, 5.0), (5.0, 7.9), (7.9, 9.0), (9.0, 12.0)]
    windows = windows_in_shots(shots, length=3.0, stride=0.5)
    assert [(w.shot, w.start, w.end) for w in windows] == [
        (0, 0.0, 3.0), (0, 0.5, 3.5), (0, 1.0, 4.0), (0, 1.5, 4.5), (0, 2.0, 5.0), (3, 9.0, 12.0),
    ]  # fmt: skip  (the 2.9-s and 1.1-s shots hold no 3-s window)
    assert len(windows_in_shots([(0.0, 10.0)])) == 15  # a VGGSound clip: (10 - 3) / 0.5 + 1


def test_what_each_score_samples_lies_inside_the_window():
    start = 4.0
    assert np.allclose(pixel_times(start), 4.0 + 0.3 * np.arange(10))
    assert np.allclose(ia_frame_times(start), [4.5, 5.5, 6.5])
    assert np.allclose(ia_audio_starts(start), [4.0, 4.5, 5.0])  # 2-s audio centred on each frame, kept inside
    assert np.allclose(psync_clip_starts(start), [4.25, 4.5, 4.75])  # middle 2 s, shifted by -+0.25 s
    assert psync_clip_starts(start)[-1] + 2.0 <= start + 3.0


def test_cheap_scores_on_constructed_inputs():
    frames = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    frames[1] = 255
    assert pixel_difference(frames) == pytest.approx(1.0)  # black -> white -> black
    assert pixel_difference(np.full((10, 4, 4, 3), 7, dtype=np.uint8)) == 0.0
    gray = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    gray[1] += 51
    assert pixel_difference(gray) == pytest.approx(0.2)
    assert semantic_difference(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])) == pytest.approx(np.sqrt(2))
    assert audio_peak(np.array([0.01, -0.5, 0.2], dtype=np.float32)) == pytest.approx(0.5)


def test_decide_reports_the_first_failed_rule_in_funnel_order():
    cfg = config()
    scores = {
        "pixel_diff": np.array([0.05, 0.005, 0.5, 0.05, 0.005]),
        "audio_peak": np.array([0.5, 0.5, 0.5, 0.01, 0.01]),
        **{name: np.full(5, np.nan) for name in ("semantic_diff", "ia", "it", "psync_a2v", "psync_v2a")},
    }
    keep, reasons = decide(scores, cfg)
    assert keep.tolist() == [True, False, False, False, False]
    assert reasons == ["", "too_static", "too_sharp", "too_quiet", "too_static"]
    counts = funnel(Counter(reasons))
    assert counts["removed_by_pixel_diff"] == 3 and counts["removed_by_audio_peak"] == 1 and counts["kept"] == 1


def test_model_rules_apply_only_when_their_stage_is_enabled():
    scores = {name: np.array([0.5]) for name in ("pixel_diff", "audio_peak")}
    scores["pixel_diff"] = np.array([0.05])
    scores.update(semantic_diff=np.array([0.3]), ia=np.array([0.1]), it=np.array([0.5]), psync_a2v=np.array([0.5]), psync_v2a=np.array([np.nan]))
    assert decide(scores, config())[1] == [""]
    enabled = CurateConfig.model_validate({
        "input": "in", "output": "out",
        "filters": {"semantic": {"checkpoint": "x"}, "imagebind": {"checkpoint": "x"}, "sync": {"classifier": "x"}},
    })  # fmt: skip
    assert decide(scores, enabled)[1] == ["image_audio_misaligned"]
    scores["ia"] = np.array([0.2])
    assert decide(scores, enabled)[1] == ["low_sync_v2a"]  # a score the stage failed to compute fails its rule


def test_merge_overlapping_and_touching_windows_per_shot():
    windows = [Window(0, 0.0, 3.0), Window(0, 0.5, 3.5), Window(0, 1.0, 4.0), Window(0, 4.0, 7.0), Window(0, 4.5, 7.5), Window(1, 7.5, 10.5)]
    keep = np.array([True, True, False, True, False, True])
    assert merge_windows(windows, keep) == [Window(0, 0.0, 3.5), Window(0, 4.0, 7.0), Window(1, 7.5, 10.5)]
    assert merge_windows(windows, np.array([True, True, True, True, True, False])) == [Window(0, 0.0, 7.5)]
    assert merge_windows(windows, np.array([True] * 5 + [False]), max_seconds=4.0) == [Window(0, 0.0, 4.0), Window(0, 4.0, 7.5)]
    clip = Window(0, 0.0, 3.5)
    assert clip.covers(Window(0, 0.5, 3.5)) and not clip.covers(Window(1, 0.5, 3.5)) and not clip.covers(Window(0, 1.0, 4.0))


def test_a_clip_is_made_of_its_kept_windows_only():
    """Kept windows 0-3 s and 1-4 s overlap and merge into 0-4 s, which covers the rejected 0.5-3.5 s window: the
    clip's metadata lists the two it was made of (shards/README.md), not the one a rule rejected."""
    windows = [Window(0, 0.0, 3.0), Window(0, 0.5, 3.5), Window(0, 1.0, 4.0), Window(1, 4.0, 7.0)]
    keep = np.array([True, False, True, False])
    clips = merge_windows(windows, keep)
    assert clips == [Window(0, 0.0, 4.0)] and clips[0].covers(windows[1])
    assert windows_of_clip(clips[0], windows, keep) == [0, 2]
