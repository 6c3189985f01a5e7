"""Multi-clip sampling from one decode: offsets exact to the sample and to the frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avsync_ray.media import decode, encode_mp4
from avsync_ray.media.clips import (
    EVAL_CLIPS,
    PSYNC_CLIPS,
    TRAIN_CLIPS,
    ClipSamplingError,
    MultiClipSpec,
    clip_starts,
    decode_clips,
    nearest_frames,
    sample_clips,
)
from avsync_ray.synth import bouncing_ball


def test_the_three_uses_of_the_paper():
    assert (TRAIN_CLIPS.num_clips, TRAIN_CLIPS.shift, TRAIN_CLIPS.placement) == (21, 0.2, "random")
    assert (EVAL_CLIPS.num_clips, EVAL_CLIPS.shift, EVAL_CLIPS.placement) == (31, 0.04, "center")
    assert (PSYNC_CLIPS.num_clips, PSYNC_CLIPS.shift, PSYNC_CLIPS.placement) == (3, 0.25, "center")
    assert EVAL_CLIPS.center_index == 15 and EVAL_CLIPS.span == pytest.approx(3.2)
    assert TRAIN_CLIPS.span == pytest.approx(6.0)


def test_clip_starts_placement_and_errors():
    starts = clip_starts(1.0, 5.0, PSYNC_CLIPS)
    np.testing.assert_allclose(starts, [1.75, 2.0, 2.25])  # centred: 0.75 s of slack on each side
    rng = np.random.default_rng(0)
    for _ in range(20):
        starts = clip_starts(0.0, 7.0, TRAIN_CLIPS, rng)
        assert 0.0 <= starts[0] <= 1.0 and starts[-1] + 2.0 <= 7.0 + 1e-9
        np.testing.assert_allclose(np.diff(starts), 0.2)
    with pytest.raises(ClipSamplingError, match="need 3.200 s"):
        clip_starts(0.0, 3.0, EVAL_CLIPS)
    with pytest.raises(ValueError, match="rng"):
        clip_starts(0.0, 7.0, TRAIN_CLIPS)


def test_nearest_frames_prefers_the_earlier_frame_on_ties():
    times = np.array([0.0, 0.1, 0.2, 0.3])
    assert nearest_frames(times, np.array([-1.0, 0.04, 0.05, 0.16, 0.3, 9.0])).tolist() == [0, 0, 0, 2, 3, 3]


@pytest.fixture(scope="module")
def synthetic_videos(tmp_path_factory):
    """Synchronised and audio-shifted bouncing balls (24 fps), hits at known times."""
    folder = tmp_path_factory.mktemp("synth")
    paths = {}
    for name, shift in (("sync", 0.0), ("shifted", 0.5)):
        clip = bouncing_ball(duration=4.0, fps=24, size=(48, 48), hit_times=(1.0, 2.0, 3.0), audio_shift=shift, seed=3)
        paths[name] = folder / f"{name}.mp4"
        encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(paths[name]), crf=10)
    return paths


def _onsets(audio: np.ndarray, sample_rate: int = 16_000) -> list[float]:
    """Times (s) where the signal first rises well above its noise floor after a quiet gap."""
    loud = np.flatnonzero(np.abs(audio) > 0.1)
    starts = loud[np.insert(np.diff(loud) > sample_rate // 10, 0, True)]
    return [s / sample_rate for s in starts]


def _flashes(frames: np.ndarray) -> list[int]:
    floor = frames[:, -4:, :, :].mean(axis=(1, 2, 3))
    return np.flatnonzero(floor > 170).tolist()


@pytest.mark.parametrize(("name", "audio_lag"), [("sync", 0.0), ("shifted", 0.5)])
def test_events_land_where_the_ground_truth_says(synthetic_videos, name, audio_lag):
    spec = MultiClipSpec(num_clips=4, shift=0.25, placement="center", num_frames=24, fps=12.0)
    clips = decode_clips(str(synthetic_videos[name]), spec)
    np.testing.assert_allclose(clips.starts, [0.625, 0.875, 1.125, 1.375])
    for k, start in enumerate(clips.starts):
        expected_sounds = [h + audio_lag - start for h in (1.0, 2.0, 3.0) if 0 <= h + audio_lag - start < 2.0]
        # AAC's pre-echo can move an onset a few ms early; the sampling itself is exact (see the GRID test).
        assert _onsets(clips.audio[k]) == pytest.approx(expected_sounds, abs=0.015)
        # A hit at time h flashes the source frame at h; clip frame j shows the source frame nearest start + j/12.
        expected_flashes = [j for j in range(24) if any(abs(clips.frame_times[k, j] - h) < 1e-6 for h in (1.0, 2.0, 3.0))]
        assert _flashes(clips.frames[k]) == expected_flashes
    source_index = clips.frame_times * 24  # every chosen frame is a source frame of the 24 fps video
    np.testing.assert_allclose(source_index, np.round(source_index), atol=1e-6)


def test_grid_clip_audio_shift_moves_the_matching_index(media_dir):
    """Shifting the audio by k*shift makes clip j's audio equal clip (j-k)'s: the match moves by exactly k."""
    uri = str(media_dir / "av_speech_grid" / "id2_vcd_swwp2s.mpg")
    spec = MultiClipSpec(num_clips=7, shift=0.04, placement="center")
    decoded = decode(uri, fps=None)
    starts = clip_starts(0.0, 2.95, spec)
    original = sample_clips(decoded, starts, spec)
    assert original.frames.shape == (7, 12, 288, 360, 3) and original.audio.shape == (7, 32_000)
    for k in (1, 2, 3):
        delay = int(round(k * spec.shift * 16_000))  # 640 samples per step
        shifted_audio = np.concatenate([np.zeros(delay, dtype=np.float32), decoded.audio[:-delay]])
        shifted = sample_clips(dataclasses.replace(decoded, audio=shifted_audio), starts, spec)
        for j in range(k, 7):
            assert np.array_equal(shifted.audio[j], original.audio[j - k])
            correlations = [np.dot(shifted.audio[j], original.audio[i]) for i in range(7)]
            assert int(np.argmax(correlations)) == j - k
        assert np.array_equal(shifted.frames, original.frames)
    # 0.04 s is one frame of this 25 fps video: consecutive clips start one source frame apart.
    np.testing.assert_allclose(np.diff(original.frame_times[:, 0]), 0.04, atol=1e-6)


def test_sample_clips_refuses_what_does_not_fit(media_dir):
    uri = str(media_dir / "av_speech_grid" / "bbaf2n.mpg")
    decoded = decode(uri, fps=None, start=0.5, end=2.5)
    with pytest.raises(ClipSamplingError, match="audio covers"):
        sample_clips(decoded, np.array([0.2]), PSYNC_CLIPS)
    with pytest.raises(ClipSamplingError, match="need 3.200 s"):
        decode_clips(uri, EVAL_CLIPS)
    with pytest.raises(ValueError, match="every source frame"):
        sample_clips(decode(uri, fps=6), np.array([0.0]), PSYNC_CLIPS)
