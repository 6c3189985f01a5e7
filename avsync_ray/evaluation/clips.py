"""The evaluation clips of the test videos, as the official evaluation samples them (reference §5.5, §8.2), and
the rows the evaluation job passes between its stages (pure data preparation: no Ray, no model).

Each test video (a shard sample, or a raw file with its own audio track) gives ``clips_per_video`` clips at
``linspace(0, duration - 2, n)``: 12 frames at 6 fps by the official "next frame" rule, trimmed to the model's
aspect ratio, resized and centre-cropped to its size (float in [0, 1], as the official loader gives them), the
clip's exact 2-s audio, and the category as the prompt. The real clips of a video travel as one row (the official
FID runs one forward over all of them); the model animates each clip's first frame (as uint8, as the official
generation script converts it) with that clip's audio, one row per clip and setting.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from avsync_ray.config.sampling import InputLimits
from avsync_ray.evaluation.plan import GT, clip_key
from avsync_ray.examples import SAMPLE_ERRORS, ClipSource, avsyncd_clip, clip_source
from avsync_ray.media import TARGET_SAMPLE_RATE, MediaError, MediaErrorReason, load_audio, probe
from avsync_ray.media.frames import to_uint8_frames
from avsync_ray.metrics.protocol import clip_seed, clip_starts
from avsync_ray.shards import VIDEO_MEMBER, iter_samples

# The columns every row of the evaluation job has (arrays travel as .npy bytes, so every block has one schema).
# A real row is a whole test video (``clip`` -1, ``frames`` (C, T, H, W, 3), ``audio`` (C, S), ``starts`` (C,));
# a generated row is one clip of one setting (``generate``: its mp4 is still to be made).
ROW_FIELDS = ("key", "video", "clip", "start", "starts", "category", "variant", "seed", "frames", "image", "audio", "path",
              "generate", "error")  # fmt: skip


def to_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def row(**values) -> dict:
    """A job row with every column (empty where not given)."""
    empty = {"key": "", "video": "", "clip": -1, "start": 0.0, "starts": b"", "category": "", "variant": "", "seed": 0,
             "frames": b"", "image": b"", "audio": b"", "path": "", "generate": False, "error": ""}  # fmt: skip
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


def eval_video_rows(
    item: dict,
    num_frames: int,
    fps: float,
    size: tuple[int, int],
    clips_per_video: int,
    limits: InputLimits | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> Iterator[dict]:
    """One real row per test video of an input item (its clips, see :data:`ROW_FIELDS`), or one ``error`` row
    per video that cannot be decoded, is outside ``limits`` (default :class:`InputLimits`) or is shorter than a clip
    (the whole video is then left out, with its reason), each as soon as its video is decoded. Videos for which
    ``wanted(video key)`` is false are not decoded and give no row."""
    clip_seconds = num_frames / fps
    for video, raw, source in _videos(item, limits or InputLimits()):
        if wanted is not None and not wanted(video):
            continue
        try:
            src = source()
            starts = clip_starts(src.duration, clip_seconds, clips_per_video)
            clips = [avsyncd_clip(raw, src, float(start), num_frames=num_frames, fps=fps, size=size) for start in starts]
        except SAMPLE_ERRORS as exc:
            yield row(video=video, key=video, variant=GT, error=f"{type(exc).__name__}: {exc}"[:500])
            continue
        frames = np.stack([clip["video"].permute(1, 2, 3, 0).numpy().astype(np.float32) for clip in clips])  # (C, T, H, W, 3) in [0, 1]
        audio = np.stack([clip["audio"].numpy().astype(np.float32) for clip in clips])
        yield row(key=video, video=video, category=clips[0]["prompt"], variant=GT, starts=to_bytes(np.asarray(starts, dtype=np.float64)),
                  frames=to_bytes(frames), audio=to_bytes(audio))  # fmt: skip


def video_clips(video_row: dict) -> list[dict]:
    """The clips of a real row: ``key``, ``clip``, ``start``, ``frames`` (T, H, W, 3) and ``audio`` of each."""
    frames, audio, starts = from_bytes(video_row["frames"]), from_bytes(video_row["audio"]), from_bytes(video_row["starts"])
    return [{"key": clip_key(video_row["video"], index), "clip": index, "start": float(start), "frames": frames[index], "audio": audio[index]}
            for index, start in enumerate(starts)]  # fmt: skip


def first_frame_uint8(frames: np.ndarray) -> np.ndarray:
    """The image the model animates: the clip's first frame, as uint8 (the official script's PIL conversion)."""
    return to_uint8_frames(frames[:1])[0]



def generation_row(clip: dict, video_row: dict, setting: str, seed: int, generate: bool) -> dict:
    """The job row of one clip (from :func:`video_clips` of ``video_row``) in one setting: its conditioning image and
    audio when it is to be generated, no frames."""
    conditioning = {"image": to_bytes(first_frame_uint8(clip["frames"])), "audio": to_bytes(clip["audio"])} if generate else {}
    return row(key=clip["key"], video=video_row["video"], clip=clip["clip"], start=clip["start"], category=video_row["category"],
               variant=setting, seed=seed, generate=generate, **conditioning)  # fmt: skip


@dataclass(frozen=True)
class StoredClips:
    """What storage held when the job started (clip keys): real features, and per setting the generated mp4s and
    the generated clips with both their mp4 and their features."""

    real: frozenset[str]
    made: dict[str, frozenset[str]]
    scored: dict[str, frozenset[str]]


def clip_jobs(item: dict, config: dict, seeds: dict[str, int], stored: StoredClips) -> Iterator[dict]:
    """``expand`` of the eval job: an input item -> the real row of each test video whose real features are not all
    stored, and a row per clip and setting whose mp4 or features are missing (``seeds``: setting -> its base seed;
    ``config``: the run's config as JSON), video by video as each is decoded. A video with nothing missing is not
    even decoded."""
    sampling, per_video = config["sampling"], config["clips_per_video"]

    def wanted(video: str) -> bool:
        keys = [clip_key(video, index) for index in range(per_video)]
        return any(k not in stored.real or any(k not in stored.scored[name] for name in seeds) for k in keys)

    size, limits = (sampling["height"], sampling["width"]), InputLimits.model_validate(config["limits"])
    for video_row in eval_video_rows(item, sampling["num_frames"], sampling["fps"], size, per_video, limits, wanted):
        if video_row["error"]:
            yield video_row
            continue
        clips = video_clips(video_row)
        if any(clip["key"] not in stored.real for clip in clips):
            yield video_row
        for name, base in seeds.items():
            for clip in clips:
                if clip["key"] not in stored.scored[name]:
                    seed = base if config["clip_seeds"] == "shared" else clip_seed(base, video_row["video"], clip["clip"])
                    yield generation_row(clip, video_row, name, seed, generate=clip["key"] not in stored.made[name])
