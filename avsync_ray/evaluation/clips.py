"""The evaluation clips of the test videos, as the official evaluation samples them (reference §5.5, §8.2), and
the rows the evaluation job passes between its stages (pure data preparation: no Ray, no model).

Each test video (a shard sample, or a raw file with its own audio track) gives ``clips_per_video`` clips at
``linspace(0, duration - 2, n)``: 12 frames at 6 fps by the official "next frame" rule, trimmed to the model's
aspect ratio, resized and centre-cropped to its size (float in [0, 1], as the official loader gives them), the
clip's exact 2-s audio, and the category as the prompt. The model animates each clip's first frame (as uint8,
as the official generation script converts it) with that clip's audio.
"""

from __future__ import annotations

import io

import numpy as np

from avsync_ray.config.sampling import InputLimits
from avsync_ray.evaluation.plan import GT, clip_key
from avsync_ray.examples import SAMPLE_ERRORS, ClipSource, avsyncd_clip, clip_source
from avsync_ray.media import TARGET_SAMPLE_RATE, MediaError, MediaErrorReason, load_audio, probe
from avsync_ray.media.frames import to_uint8_frames
from avsync_ray.metrics.protocol import clip_starts
from avsync_ray.shards import VIDEO_MEMBER, iter_samples

# The columns every row of the evaluation job has (arrays travel as .npy bytes, so every block has one schema).
ROW_FIELDS = ("key", "video", "clip", "start", "category", "variant", "seed", "frames", "image", "audio", "path", "error")


def to_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def row(**values) -> dict:
    """A job row with every column (empty where not given)."""
    empty = {"key": "", "video": "", "clip": -1, "start": 0.0, "category": "", "variant": "", "seed": 0,
             "frames": b"", "image": b"", "audio": b"", "path": "", "error": ""}  # fmt: skip
    unknown = set(values) - set(empty)
    if unknown:
        raise KeyError(f"unknown row fields {sorted(unknown)}")
    return {**empty, **values}


def _videos(item: dict, limits: InputLimits):
    """(video key, raw sample dict for avsyncd_clip, its ClipSource) of each test video of an input item; a raw video
    is held to ``limits`` (its frame size from the header, its length counted on the audio decoded)."""
    if item["shard"]:
        for number, sample in enumerate(iter_samples([item["shard"]])):
            if 0 <= item["take"] <= number:
                break
            yield sample["__key__"], sample, lambda sample=sample: clip_source(sample)
    else:

        def source() -> ClipSource:
            info = probe(item["uri"], max_pixels=limits.max_video_pixels)
            if info.video is not None and info.video.width * info.video.height > limits.max_video_pixels:
                raise MediaError(item["uri"], MediaErrorReason.TOO_LARGE, f"{info.video.width}x{info.video.height} frames; limits.max_video_pixels "
                                 f"is {limits.max_video_pixels:,}")  # fmt: skip
            audio = load_audio(item["uri"], max_seconds=limits.max_video_s)
            durations = [d for d in (info.video and info.video.duration, len(audio) / TARGET_SAMPLE_RATE) if d]
            return ClipSource({"label": item["label"]}, audio, min(durations))

        yield item["key"], {VIDEO_MEMBER: item["uri"]}, source


def eval_clip_rows(
    item: dict, num_frames: int, fps: float, size: tuple[int, int], clips_per_video: int, limits: InputLimits | None = None
) -> list[dict]:
    """The GT rows of an input item's test videos: one per clip, or one ``error`` row per video that cannot be
    decoded, is outside ``limits`` (default :class:`InputLimits`) or is shorter than a clip (the whole video is then
    left out, with its reason)."""
    rows = []
    clip_seconds = num_frames / fps
    for video, raw, source in _videos(item, limits or InputLimits()):
        try:
            src = source()
            starts = clip_starts(src.duration, clip_seconds, clips_per_video)
            clips = [avsyncd_clip(raw, src, float(start), num_frames=num_frames, fps=fps, size=size) for start in starts]
        except SAMPLE_ERRORS as exc:
            rows.append(row(video=video, key=video, variant=GT, error=f"{type(exc).__name__}: {exc}"[:500]))
            continue
        for index, (start, clip) in enumerate(zip(starts, clips)):
            frames = clip["video"].permute(1, 2, 3, 0).numpy().astype(np.float32)  # (T, H, W, 3) in [0, 1]
            rows.append(row(key=clip_key(video, index), video=video, clip=index, start=float(start), category=clip["prompt"],
                            variant=GT, frames=to_bytes(frames), audio=to_bytes(clip["audio"].numpy().astype(np.float32))))  # fmt: skip
    return rows


def first_frame_uint8(frames: np.ndarray) -> np.ndarray:
    """The image the model animates: the clip's first frame, as uint8 (the official script's PIL conversion)."""
    return to_uint8_frames(frames[:1])[0]
