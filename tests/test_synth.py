"""The synthetic corpus: layout, determinism, and ground truth checked against the decoded mp4 files.

The window metrics are the curation's cheap filters (paper §5.2), computed here from their definitions: raw
pixel difference of 10 frames 0.3 s apart (keep if in [0.01, 0.15]) and the audio peak (keep if >= 0.03), on
every 3-s window every 0.5 s inside a shot.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from avsync_ray.media import decode
from avsync_ray.synth import CATEGORIES, EXPECTED, bouncing_ball, generate_clip, synthesize_corpus

SEED = 3
NUM_VIDEOS = 2 * len(CATEGORIES)  # two of each category
WINDOW, STRIDE = 3.0, 0.5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, synthesize_corpus(root, NUM_VIDEOS, seed=SEED)


@pytest.fixture(scope="module")
def decoded(corpus):
    """Every video decoded once: all source frames with their timestamps, and the 16 kHz mono audio."""
    root, records = corpus
    return {r["video_id"]: decode(str(root / r["uri"]), fps=None) for r in records}


def _records(corpus, category: str) -> list[dict]:
    return [r for r in corpus[1] if r["category"] == category]


def _shots(record: dict) -> list[tuple[float, float]]:
    bounds = [0.0, *record["shot_cuts"], record["duration"]]
    return list(zip(bounds[:-1], bounds[1:]))


def _window_starts(record: dict) -> list[float]:
    starts = []
    for shot_start, shot_end in _shots(record):
        count = int(np.floor((shot_end - shot_start - WINDOW) / STRIDE + 1e-9)) + 1
        starts += [shot_start + k * STRIDE for k in range(max(count, 0))]
    return starts


def _window_metrics(av, start: float) -> tuple[float, float]:
    """(raw pixel difference, audio peak) of the window [start, start + 3)."""
    times = start + 0.3 * np.arange(10)
    nearest = np.abs(av.frame_times[None, :] - times[:, None]).argmin(axis=1)
    frames = av.frames[nearest].astype(np.float32) / 255.0
    pixel = float(np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3)).mean())
    first = int(round((start - av.audio_start) * av.sample_rate))
    peak = float(np.abs(av.audio[first : first + int(WINDOW * av.sample_rate)]).max())
    return pixel, peak


def _onsets(audio: np.ndarray, sample_rate: int, audio_start: float) -> np.ndarray:
    """Times (s) where the signal first rises above 0.1 after at least 0.1 s below it."""
    loud = np.flatnonzero(np.abs(audio) > 0.1)
    if len(loud) == 0:
        return np.zeros(0)
    starts = loud[np.insert(np.diff(loud) > sample_rate // 10, 0, True)]
    return audio_start + starts / sample_rate


def _frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean |difference| (0-255) between each frame and the previous one; entry k is frame k+1 vs k."""
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def test_layout_manifest_and_ids(corpus):
    root, records = corpus
    assert [r["category"] for r in records] == list(CATEGORIES) * 2  # the default cycles through every kind
    assert json.loads((root / "ground_truth.json").read_text()) == records
    for record in records:
        video_id, category = record["video_id"], record["category"]
        assert "." not in video_id and video_id.startswith(f"{category}_s{SEED}_")
        assert record["uri"] == f"{category}/{video_id}.mp4" and (root / record["uri"]).is_file()
        assert json.loads((root / category / f"{video_id}.json").read_text()) == record
        assert record["label"] == category and record["expected"] == EXPECTED[category]
        assert (record["fps"], record["size"], record["sample_rate"], record["duration"]) == (24.0, [96, 128], 16000, 6.0)
    with open(root / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["video_id"] for row in rows] == [r["video_id"] for r in records]
    for row, record in zip(rows, records):
        assert row["uri"] == str((root / record["uri"]).resolve()) and row["label"] == record["category"]


def test_same_seed_same_bytes_other_seed_other_videos(corpus, tmp_path):
    root, records = corpus
    again = synthesize_corpus(tmp_path / "again", len(CATEGORIES), seed=SEED)
    assert again == records[: len(CATEGORIES)]
    for record in again:
        for suffix in (".mp4", ".json"):
            relative = record["uri"][: -len(".mp4")] + suffix
            assert (tmp_path / "again" / relative).read_bytes() == (root / relative).read_bytes(), relative
    other = synthesize_corpus(tmp_path / "other", 2, seed=SEED + 1)
    for record, mine in zip(other, records):
        assert (tmp_path / "other" / record["uri"]).read_bytes() != (root / mine["uri"]).read_bytes()
    # A clip depends only on (category, seed, index), not on the other categories asked for.
    alone = generate_clip("shifted", SEED, 1)
    np.testing.assert_allclose(alone.audio_events, records[1]["audio_events"], atol=1e-6)
    np.testing.assert_allclose(alone.visual_events, records[1]["visual_events"], atol=1e-6)


@pytest.mark.parametrize("category", CATEGORIES)
def test_window_metrics_match_the_expected_verdicts(corpus, decoded, category):
    for record in _records(corpus, category):
        av = decoded[record["video_id"]]
        starts = _window_starts(record)
        assert starts, f"{record['video_id']} has no 3-s window inside a shot"
        metrics = np.array([_window_metrics(av, start) for start in starts])
        pixel, peak = metrics[:, 0], metrics[:, 1]
        expected = record["expected"]
        if expected["pixel_rule"] == "pass":
            # inside [0.01, 0.15] with margin; the top end is the floor's 1/6-s flash caught by the 0.3-s sampling
            assert pixel.min() >= 0.02 and pixel.max() <= 0.14, pixel
        elif expected["pixel_rule"] == "too_static":
            # static: identical frames, but x264 (without its macroblock tree) refines the still picture over the
            # first second or so, by a level here and there
            assert pixel.max() < (1e-3 if category == "static" else 0.005), pixel
            assert category != "static" or np.median(pixel) < 1e-4, pixel
            assert category == "static" or pixel.min() > 1e-4, pixel  # ambient: still, but not frozen
        else:
            assert expected["pixel_rule"] == "too_sharp" and pixel.min() > 0.2, pixel
        if expected["audio_rule"] == "pass":
            assert peak.min() > 0.1, peak
        else:
            assert expected["audio_rule"] == "too_quiet" and peak.max() < 0.01, peak


def test_audio_events_are_where_the_ground_truth_says(corpus, decoded):
    for record in corpus[1]:
        av = decoded[record["video_id"]]
        if record["category"] == "ambient":  # continuous noise, no events
            assert record["audio_events"] == [] and record["visual_events"] == []
            continue
        onsets = _onsets(av.audio, av.sample_rate, av.audio_start)
        assert len(onsets) == len(record["audio_events"]), (record["video_id"], onsets, record["audio_events"])
        np.testing.assert_allclose(onsets, record["audio_events"], atol=0.02)
        if record["expected"]["synchronized"]:
            assert record["audio_events"] == record["visual_events"] and record["audio_offset"] == 0.0
        elif record["category"] in ("silent", "static"):  # events in one modality only
            assert not (record["audio_events"] and record["visual_events"])


def test_shifted_audio_is_offset_by_more_than_half_a_second(corpus):
    for record in _records(corpus, "shifted"):
        offset = record["audio_offset"]
        assert 0.6 <= abs(offset) <= 0.9
        shifted = [round(v + offset, 6) for v in record["visual_events"] if 0 <= v + offset <= record["duration"] - 0.15]
        assert record["audio_events"] == shifted and len(shifted) >= 4


@pytest.mark.parametrize("category", ["sync", "shifted", "silent", "cuts"])
def test_floor_flashes_are_the_visual_events(corpus, decoded, category):
    """The floor (bottom 18% of the picture) brightens exactly on the frame of each hit and stays lit for 1/6 s:
    one frame period of the tiny classifier's 6 fps, so every 6-fps sampling of a clip sees each hit."""
    for record in _records(corpus, category):
        av = decoded[record["video_id"]]
        floor = av.frames[:, int(96 * 0.82) + 1 :].astype(np.float32).mean(axis=(1, 2, 3))
        flashes = np.flatnonzero(np.diff(floor) > 15) + 1
        expected = np.round(np.asarray(record["visual_events"]) * record["fps"]).astype(int)
        np.testing.assert_allclose(av.frame_times[flashes], expected / record["fps"], atol=1e-6)
        assert len(expected) >= 4
        lit = floor[flashes[:, None] + np.arange(4)]  # the hit's frame and the next three (4 x 1/24 s)
        assert (lit > floor.min() + 30).all() and (floor[flashes + 4] < floor.min() + 30).all()


def test_shot_cuts_change_the_whole_picture(corpus, decoded):
    for record in _records(corpus, "cuts"):
        av = decoded[record["video_id"]]
        cuts = record["shot_cuts"]
        assert 1 <= len(cuts) <= 2
        lengths = np.diff([0.0, *cuts, record["duration"]])
        assert lengths.min() >= 1.0 and lengths.max() >= 3.0
        assert all(min(abs(e - c) for c in cuts) >= 0.2 for e in record["visual_events"])
        differences = _frame_differences(av.frames)
        at_cut = np.abs(av.frame_times[1:, None] - np.asarray(cuts)[None, :]).min(axis=1) < 1e-3
        assert at_cut.sum() == len(cuts)
        # The floor flashes (on and off) are the largest changes inside a shot; a cut is over twice as large.
        assert differences[at_cut].min() > 2 * differences[~at_cut].max()
        assert differences[at_cut].min() > 10 * np.median(differences[~at_cut])


def test_content_detector_finds_exactly_the_ground_truth_cuts(corpus):
    """PySceneDetect (what curation splits shots with) cuts `cuts` at the ground-truth times and nothing else: the
    flashes and the fast checkerboard of `sharp` stay one shot, so their windows reach the pixel rule."""
    scenedetect = pytest.importorskip("scenedetect")
    root, records = corpus
    for record in records:
        scenes = scenedetect.detect(str(root / record["uri"]), scenedetect.ContentDetector())
        found = [start.seconds for start, _ in scenes[1:]]
        np.testing.assert_allclose(found, record["shot_cuts"], atol=1e-3, err_msg=record["video_id"])


def test_generate_clip_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown category"):
        generate_clip("loud")
    with pytest.raises(ValueError, match="even"):
        generate_clip("sync", size=(95, 128))
    with pytest.raises(ValueError, match="at least 3 s"):
        generate_clip("sync", duration=2.0)
    with pytest.raises(ValueError, match="categories"):
        synthesize_corpus("unused", 1, categories=["sync", "nope"])
    clip = generate_clip("cuts", seed=1, index=2, duration=8.0, fps=30.0, size=(64, 80), sample_rate=22050)
    assert clip.frames.shape == (240, 64, 80, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (8 * 22050,) and clip.audio.dtype == np.float32
    assert all(round(c * 30) == c * 30 for c in clip.shot_cuts)  # cuts on the frame grid


def test_bouncing_ball_is_unchanged():
    clip = bouncing_ball(duration=3.0, fps=24, size=(64, 64), seed=0)
    assert clip.frames.shape == (72, 64, 64, 3) and clip.label == "ball bouncing"
    assert clip.visual_events == clip.audio_events == [0.5, 1.3, 2.1]
    assert clip.audio_offset == 0.0 and clip.shot_cuts == []
