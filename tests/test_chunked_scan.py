"""Curation in bounded chunks (no Ray: the per-video steps as a worker runs them) against one whole decode.

A video is scanned in chunks of 10 s of window starts; each chunk row carries only the frames and audio its
windows read. The contract: the scores, the frames handed to the model stages, and the clips' bytes are those a
single decode of the whole file gives, and no row holds more than one chunk's span of frames.
"""

from __future__ import annotations

import numpy as np
import pytest

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import work
from avsync_ray.curation.chunks import CHUNK_SECONDS
from avsync_ray.curation.shots import ShotDetector
from avsync_ray.curation.stages import curate_video, scan_video
from avsync_ray.curation.windows import (
    audio_peak,
    merge_windows,
    model_frame_times,
    pixel_difference,
    pixel_times,
    windows_in_shots,
)
from avsync_ray.media import decode, encode_mp4, encode_wav, probe
from avsync_ray.media.clips import nearest_frames
from avsync_ray.shards import read_samples
from avsync_ray.synth import synthesize_long_video

LENGTH, RATE = 3.0, 16_000


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """35 s of 5-s scenes (four shots with windows, one kept in two), so the windows span four chunks."""
    return synthesize_long_video(tmp_path_factory.mktemp("long") / "long.mp4", 35.0, seed=3, scene_s=5.0, kept_every=2, size=(96, 128))


def _config(source, output, model_stages: bool) -> CurateConfig:
    """Model stages marked on make the chunks carry their frames (the stages themselves are not run here)."""
    stages = {"semantic": {"enabled": model_stages, "checkpoint": "unused"}, "imagebind": {"enabled": model_stages, "checkpoint": "unused"},
              "sync": {"enabled": False}}  # fmt: skip
    return CurateConfig.model_validate({"input": str(source), "output": str(output), "filters": stages, "tracking": {"enabled": False}})


def _one_decode(source, config):
    decoded = decode(str(source), fps=None)
    detector = ShotDetector(float(probe(str(source)).video.fps), config.shots)
    for frame in decoded.frames:
        detector.push(frame)
    duration = min(d for d in (probe(str(source)).video.duration, probe(str(source)).audio.duration) if d)
    windows = windows_in_shots(detector.shots(decoded.source_frame_times, duration), LENGTH, config.windows.stride_s)
    return decoded, windows


def test_chunks_hold_what_one_decode_gives_and_no_more(source, tmp_path):
    config = _config(source, tmp_path / "out", model_stages=True)
    item = {"uri": str(source), "source_id": "long", "label": "ball"}
    rows = list(scan_video(item, config))
    decoded, windows = _one_decode(source, config)
    times = decoded.source_frame_times

    assert len(rows) >= 3 and [r["chunk"] for r in rows] == sorted({r["chunk"] for r in rows})
    assert np.concatenate([r["window_start"] for r in rows]).tolist() == [w.start for w in windows]
    for row in rows:
        starts = row["window_start"]
        expected_pixel = [pixel_difference(decoded.frames[nearest_frames(times, pixel_times(s, LENGTH))]) for s in starts]
        first = np.round((starts - decoded.audio_start) * RATE).astype(np.int64)
        expected_peak = [audio_peak(decoded.audio[f : f + int(LENGTH * RATE)]) for f in first]
        assert row["pixel_diff"].tolist() == expected_pixel and row["audio_peak"].tolist() == expected_peak
        # Each time a model stage looks up finds, among the chunk's frames, the frame one decode would give.
        wanted = model_frame_times(starts, LENGTH, semantic=True, imagebind=True, sync=False)
        got = row["frames"][nearest_frames(row["frame_times"], wanted)]
        assert np.array_equal(got, decoded.frames[nearest_frames(times, wanted)])
        offset = row["audio_offset"]
        assert np.array_equal(row["audio"], decoded.audio[offset : offset + len(row["audio"])])
        # Bounded: the frames of at most one chunk of starts plus a window, however long the video.
        assert len(row["frames"]) <= (CHUNK_SECONDS + LENGTH) * 24 + 1


def test_clips_are_the_bytes_one_decode_would_encode(source, tmp_path):
    config = _config(source, tmp_path / "out", model_stages=False)
    item = {"uri": str(source), "source_id": "long", "label": "ball"}
    record = curate_video(item, config)
    assert record["status"] == "done" and record["clips"] >= 2

    decoded, windows = _one_decode(source, config)
    keep = np.array(record["window_keep"])
    clips = merge_windows(windows, keep, config.shards.max_clip_s)
    samples = read_samples(work.bundle_uri(config.output, "long", 0))
    assert len(samples) == len(clips)
    for clip, sample in zip(clips, samples):
        times = decoded.source_frame_times
        frames = decoded.frames[(times >= clip.start - 1e-6) & (times < clip.end - 1e-6)]
        first = int(round((clip.start - decoded.audio_start) * RATE))
        sound = decoded.audio[max(first, 0) : first + int(round((clip.end - clip.start) * RATE))]
        assert sample["mp4"] == encode_mp4(frames, 24.0, sound, RATE, crf=config.shards.crf, preset=config.shards.x264_preset)
        assert sample["wav"] == encode_wav(sound, RATE)
