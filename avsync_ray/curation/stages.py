"""The per-video steps of curation (no Ray here; the pipeline maps them over a Ray Dataset).

``prepare_video``: decode the file once (every frame, scaled down, and the audio); shots, windows and the
cheap scores all come from that decode.
``finalize_video``: thresholds, merging, clip encoding, and the video's durable state: its clip bundle, score
rows and ledger entry, written in that order so the ledger entry marks a fully recorded video.
``rematerialize_video``: the same from stored scores with new thresholds (no model runs).
"""

from __future__ import annotations

import hashlib
import io
import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avsync_ray import faults
from avsync_ray.config import CurateConfig
from avsync_ray.curation.shots import detect_shots
from avsync_ray.curation.windows import (
    SCORE_RULES,
    Window,
    audio_peak,
    decide,
    merge_windows,
    pixel_difference,
    pixel_times,
    rules,
    windows_in_shots,
)
from avsync_ray.media import MediaError, MediaErrorReason, decode, encode_mp4, encode_wav, probe
from avsync_ray.media.audio import TARGET_SAMPLE_RATE
from avsync_ray.media.clips import nearest_frames
from avsync_ray.shards import SCORE_TABLE_SCHEMA, read_samples, sample_key, sample_metadata, tar_bytes
from avsync_ray.storage import exists, join_uri, local_copy, read_json, remove, write_bytes_atomic, write_json_atomic

WORK = "_work"
# One row per source video (``ledger.parquet``; each video's entry is ``_work/ledger/<id>.json``).
LEDGER_SCHEMA = pa.schema(
    [("source_id", pa.string()), ("uri", pa.string()), ("label", pa.string()), ("status", pa.string()), ("reason", pa.string()),
     ("detail", pa.string()), ("scoring_id", pa.string()), ("windows", pa.int64()), ("kept", pa.int64()), ("clips", pa.int64()),
     ("decoded_frames", pa.int64())]
)  # fmt: skip
MODEL_SCORES = ("semantic_diff", "ia", "it", "psync_a2v", "psync_v2a")


def work_uri(output: str, kind: str, source_id: str) -> str:
    extension = {"ledger": "json", "scores": "parquet", "clips": "tar"}[kind]
    return join_uri(output, WORK, kind, f"{source_id}.{extension}")


MODEL_FIELDS = ("enabled", "checkpoint", "classifier", "model", "preset")


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _scoring(config: CurateConfig) -> dict:
    data = config.model_dump(mode="json")
    models = {name: {k: v for k, v in data["filters"][name].items() if k in MODEL_FIELDS} for name in ("semantic", "imagebind", "sync")}
    return {"shots": data["shots"], "windows": data["windows"], "short_side": data["shards"]["short_side"], "models": models}


def scoring_settings(config: CurateConfig) -> dict:
    """What determines the scores (dotted field -> value): shots, windows, the decode size, the model stages."""
    scoring = _scoring(config)
    return _flat({"shots": scoring["shots"], "windows": scoring["windows"], "shards": {"short_side": scoring["short_side"]}, "filters": scoring["models"]})


def encoding_settings(config: CurateConfig) -> dict:
    """What else changes a shard's bytes besides the thresholds: clip encoding, splitting and shard layout."""
    return _flat({"shards": config.shards.model_dump(mode="json")})


def threshold_settings(config: CurateConfig) -> dict:
    """Every rule's bounds (what ``--rethreshold`` may change)."""
    return _flat({"filters": {name: rule.model_dump(mode="json") for name, rule in rules(config).items()}})


def scoring_id(config: CurateConfig) -> str:
    """A hash of the scoring settings, kept in each video's ledger entry."""
    return hashlib.sha256(json.dumps(_scoring(config), sort_keys=True).encode()).hexdigest()[:16]


def curation_id(config: CurateConfig) -> str:
    """Scoring settings plus thresholds and clip encoding: stamped into every shard sample."""
    data = config.model_dump(mode="json")
    return hashlib.sha256(json.dumps([scoring_id(config), data["filters"], data["shards"]], sort_keys=True).encode()).hexdigest()[:16]


def setting_differences(saved: CurateConfig, config: CurateConfig, rethreshold: bool) -> list[str]:
    """The settings of ``config`` that a resume of an output curated with ``saved`` cannot change: scoring and
    encoding always, thresholds unless re-thresholding (``field: output has X, this run Y``)."""
    getters = (scoring_settings, encoding_settings) if rethreshold else (scoring_settings, encoding_settings, threshold_settings)
    before, after = {}, {}
    for get in getters:
        before.update(get(saved))
        after.update(get(config))
    return [f"{key}: the output has {before.get(key)!r}, this run {value!r}" for key, value in sorted(after.items()) if before.get(key) != value]


# ------------------------------------------------------------------------------------------------ prepare


def _empty_row(source: dict) -> dict:
    return {
        **source,
        "status": "ok",
        "reason": "",
        "detail": "",
        "fps": 0.0,
        "decoded_frames": 0,
        "frames": np.zeros((0, 2, 2, 3), dtype=np.uint8),
        "frame_times": np.zeros(0),
        "audio": np.zeros(0, dtype=np.float32),
        "audio_start": 0.0,
        "shots": np.zeros((0, 2)),
        "window_shot": np.zeros(0, dtype=np.int64),
        "window_start": np.zeros(0),
        "window_end": np.zeros(0),
        "pixel_diff": np.zeros(0),
        "audio_peak": np.zeros(0),
        **{name: np.zeros(0) for name in MODEL_SCORES},
    }


def _inject_faults(plan: dict | None, config: CurateConfig, source_id: str) -> None:
    """The crash-recovery tests' hook (:mod:`avsync_ray.faults`): end this worker the first time it prepares
    the planned video, so Ray's retry is exercised; or slow every video down, so a node can leave or join
    mid-run."""
    if plan:
        faults.pause(plan.get("slow_video_s", 0.0))
    if plan and plan.get("kill_worker_on_source") == source_id and faults.fire_once(join_uri(config.output, WORK, f"killed-{source_id}"), "worker killed"):
        faults.kill_this_process()


def _decode_size(info, config: CurateConfig) -> int | None:
    """Frames are scaled down to the shard's short side, never up."""
    return config.shards.short_side if min(info.video.width, info.video.height) > config.shards.short_side else None


def prepare_video(source: dict, config: CurateConfig, faults_plan: dict | None = None) -> dict:
    """Shots, windows, one decode and the cheap scores of one source video; failures become a reason."""
    row = _empty_row(source)
    try:
        _inject_faults(faults_plan, config, source["source_id"])
        with local_copy(source["uri"]) as path:
            info = probe(path)
            if info.video is None:
                raise MediaError(source["uri"], MediaErrorReason.NO_VIDEO_STREAM)
            if info.audio is None:
                raise MediaError(source["uri"], MediaErrorReason.NO_AUDIO_STREAM)
            durations = [d for d in (info.video.duration, info.audio.duration, info.duration) if d]
            if not durations:
                raise MediaError(source["uri"], MediaErrorReason.CORRUPT, "no duration")
            duration = min(durations)
            if config.max_duration_s and duration > config.max_duration_s:
                row.update(status="failed", reason="too_long", detail=f"{duration:.1f} s > max_duration_s={config.max_duration_s}")
                return row
            if duration < config.windows.length_s:
                row.update(fps=float(info.video.fps))
                return row  # no window fits: nothing to decode
            decoded = decode(path, fps=None, size=_decode_size(info, config))
    except MediaError as error:
        row.update(status="failed", reason=error.reason.value, detail=error.detail)
        return row
    except Exception as error:  # noqa: BLE001 - e.g. a shot detector crash: recorded, the run goes on
        row.update(status="failed", reason="prepare_error", detail=repr(error)[:500])
        return row
    fps = float(info.video.fps or 25.0)
    shots = detect_shots(decoded.frames, decoded.source_frame_times, fps, duration, config.shots)
    windows = windows_in_shots(shots, config.windows.length_s, config.windows.stride_s)
    row.update(fps=fps, shots=np.asarray(shots, dtype=np.float64).reshape(-1, 2), decoded_frames=decoded.num_decoded_frames)
    if not windows:
        return row
    starts = np.array([w.start for w in windows])
    frame_index = nearest_frames(decoded.source_frame_times, np.stack([pixel_times(s, config.windows.length_s) for s in starts]).ravel())
    samples_per_window = int(round(config.windows.length_s * TARGET_SAMPLE_RATE))
    first = np.round((starts - decoded.audio_start) * TARGET_SAMPLE_RATE).astype(np.int64).clip(0)
    row.update(
        frames=decoded.frames,
        frame_times=decoded.source_frame_times,
        audio=decoded.audio,
        audio_start=decoded.audio_start,
        window_shot=np.array([w.shot for w in windows], dtype=np.int64),
        window_start=starts,
        window_end=np.array([w.end for w in windows]),
        pixel_diff=np.array([pixel_difference(decoded.frames[idx]) for idx in frame_index.reshape(len(windows), -1)]),
        audio_peak=np.array([audio_peak(decoded.audio[f : f + samples_per_window]) for f in first]),
        **{name: np.full(len(windows), np.nan) for name in MODEL_SCORES},
    )
    return row


# ------------------------------------------------------------------------------------------------ finalize


def _windows_table(row: dict, windows: list[Window], keep: np.ndarray, reasons: list[str], clips: list[Window], config: CurateConfig) -> pa.Table:
    """One row per window (:data:`~avsync_ray.shards.SCORE_TABLE_SCHEMA`): every score, keep flag, reason, and
    the clip it went into."""
    skipped = ",".join(name for name, rule in rules(config).items() if not rule.enabled)
    clip_of = []
    for window in windows:
        inside = [sample_key(row["source_id"], clip.start, clip.end) for clip in clips if clip.covers(window)]
        clip_of.append(inside[0] if inside else "")
    count = len(windows)
    return pa.table(
        {
            "source_id": [row["source_id"]] * count,
            "uri": [row["uri"]] * count,
            "label": [row["label"]] * count,
            "shot": np.array([w.shot for w in windows], dtype=np.int64),
            "start": np.array([w.start for w in windows], dtype=np.float64),
            "end": np.array([w.end for w in windows], dtype=np.float64),
            **{name: np.asarray(row[name], dtype=np.float64) for name in SCORE_RULES},
            "keep": np.asarray(keep, dtype=bool),
            "reason": reasons,
            "skipped_rules": [skipped] * count,
            "clip": clip_of if keep.any() else [""] * count,
        },
        schema=SCORE_TABLE_SCHEMA,
    )


def _sample_json(source: dict, clip: Window, windows: pa.Table, fps: float, frames: int, size: tuple[int, int], config: CurateConfig) -> bytes:
    inside = [r for r in windows.to_pylist() if clip.covers(Window(r["shot"], r["start"], r["end"]))]
    scores = {name: [r[name] for r in inside] for name in SCORE_RULES}
    return sample_metadata(
        key=sample_key(source["source_id"], clip.start, clip.end),
        source_uri=source["uri"],
        source_id=source["source_id"],
        label=source["label"],
        span=(clip.start, clip.end, clip.shot),
        fps=fps,
        num_frames=frames,
        size=size,
        sample_rate=TARGET_SAMPLE_RATE,
        windows=[{"start": r["start"], "end": r["end"], **{n: _finite(r[n]) for n in SCORE_RULES}} for r in inside],
        scores={n: None if np.isnan(v).any() else {"min": min(v), "mean": float(np.mean(v))} for n, v in scores.items()},
        thresholds={name: rule.model_dump() for name, rule in rules(config).items()},
        curation_id=curation_id(config),
    )


def _finite(value: float) -> float | None:
    """JSON has no NaN: a score a disabled stage did not compute is null."""
    return None if np.isnan(value) else float(value)


def _encode_clip(frames: np.ndarray, frame_times: np.ndarray, audio: np.ndarray, audio_start: float, fps: float, clip: Window, config: CurateConfig):
    chosen = frames[(frame_times >= clip.start - 1e-6) & (frame_times < clip.end - 1e-6)]
    first = int(round((clip.start - audio_start) * TARGET_SAMPLE_RATE))
    sound = audio[max(first, 0) : first + int(round((clip.end - clip.start) * TARGET_SAMPLE_RATE))]
    mp4 = encode_mp4(chosen, fps, sound, TARGET_SAMPLE_RATE, crf=config.shards.crf, preset=config.shards.x264_preset)
    return chosen, mp4, encode_wav(sound, TARGET_SAMPLE_RATE)


def record_video(source: dict, config: CurateConfig, status: str, reason: str, detail: str, counts: dict) -> dict:
    entry = {"source_id": source["source_id"], "uri": source["uri"], "label": source["label"], "status": status,
             "reason": reason, "detail": detail, "scoring_id": scoring_id(config), **counts}  # fmt: skip
    write_json_atomic(work_uri(config.output, "ledger", source["source_id"]), entry)
    return entry


def write_parquet(uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(uri, buffer.getvalue())


def _write_state(source: dict, config: CurateConfig, samples: list[dict], table: pa.Table) -> None:
    clips_uri = work_uri(config.output, "clips", source["source_id"])
    if samples:
        write_bytes_atomic(clips_uri, tar_bytes(samples))
    else:
        remove(clips_uri)
    write_parquet(work_uri(config.output, "scores", source["source_id"]), table)


def _select_clips(scores: dict[str, np.ndarray], shots, starts, ends, config: CurateConfig) -> tuple[list[Window], np.ndarray, list[str], list[Window]]:
    """Thresholds then merging: (windows, keep flags, reasons, the clips the kept windows make)."""
    keep, reasons = decide(scores, config)
    windows = [Window(int(s), float(a), float(b)) for s, a, b in zip(shots, starts, ends)]
    return windows, keep, reasons, merge_windows(windows, keep, config.shards.max_clip_s)


def _record_outcome(source: dict, config: CurateConfig, windows: list[Window], keep: np.ndarray, samples: list[dict], decoded_frames: int) -> dict:
    status, reason = ("done", "") if samples else ("zero_survivors", "all_windows_rejected" if windows else "no_window")
    counts = {"windows": len(windows), "kept": int(keep.sum()), "clips": len(samples), "decoded_frames": decoded_frames}
    return record_video(source, config, status, reason, "", counts)


def finalize_video(row: dict, config: CurateConfig) -> dict:
    """Apply thresholds, merge, encode clips from the frames in hand, and record the video (ledger last)."""
    source = {k: row[k] for k in ("uri", "source_id", "label")}
    decoded_frames = int(row["decoded_frames"])
    if row["status"] != "ok":
        return record_video(source, config, "failed", row["reason"], row["detail"], {"windows": 0, "kept": 0, "clips": 0, "decoded_frames": decoded_frames})
    try:
        scores = {name: np.asarray(row[name], dtype=np.float64) for name in SCORE_RULES}
        windows, keep, reasons, clips = _select_clips(scores, row["window_shot"], row["window_start"], row["window_end"], config)
        table = _windows_table(row, windows, keep, reasons, clips, config)
        samples = []
        for clip in clips:
            frames, mp4, wav = _encode_clip(row["frames"], row["frame_times"], row["audio"], row["audio_start"], row["fps"], clip, config)
            meta = _sample_json(source, clip, table, row["fps"], len(frames), frames.shape[1:3], config)
            samples.append({"__key__": sample_key(source["source_id"], clip.start, clip.end), "json": meta, "mp4": mp4, "wav": wav})
        _write_state(source, config, samples, table)
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        return record_video(source, config, "failed", "finalize_error", repr(error)[:500], {"windows": len(row["window_start"]), "kept": 0, "clips": 0, "decoded_frames": decoded_frames})
    return _record_outcome(source, config, windows, keep, samples, decoded_frames)


# ------------------------------------------------------------------------------------------------ rethreshold


def rematerialize_video(entry: dict, config: CurateConfig) -> dict:
    """Re-apply ``config``'s thresholds to a video's stored scores. Clips that existed before keep their encoded
    media (only their JSON changes); new clip spans are decoded and encoded again. A failure is recorded (reason
    ``rethreshold_error``), and a later ``--rethreshold`` tries the video again."""
    source = {k: entry[k] for k in ("uri", "source_id", "label")}
    try:
        return _rematerialize(source, entry, config)
    except Exception as error:  # noqa: BLE001 - recorded in the ledger, the run goes on
        counts = {"windows": entry["windows"], "kept": 0, "clips": 0, "decoded_frames": entry.get("decoded_frames", 0)}
        return record_video(source, config, "failed", "rethreshold_error", repr(error)[:500], counts)


def _rematerialize(source: dict, entry: dict, config: CurateConfig) -> dict:
    with fsspec.open(work_uri(config.output, "scores", source["source_id"]), "rb") as handle:
        columns = pq.read_table(handle).to_pydict()
    scores = {name: np.asarray(columns[name], dtype=np.float64) for name in SCORE_RULES}
    windows, keep, reasons, clips = _select_clips(scores, columns["shot"], columns["start"], columns["end"], config)
    new_table = _windows_table({**source, **scores}, windows, keep, reasons, clips, config)
    clips_uri = work_uri(config.output, "clips", source["source_id"])
    old = {s["__key__"]: s for s in read_samples(clips_uri)} if exists(clips_uri) else {}
    decoded = None
    samples = []
    for clip in clips:
        key = sample_key(source["source_id"], clip.start, clip.end)
        if key in old:
            meta = json.loads(old[key]["json"])
            mp4, wav, fps, frames, size = old[key]["mp4"], old[key]["wav"], meta["fps"], meta["num_frames"], tuple(meta["size"])
        else:
            if decoded is None:
                with local_copy(source["uri"]) as path:
                    info = probe(path)
                    decoded = decode(path, fps=None, size=_decode_size(info, config))
                    fps = float(info.video.fps)
            chosen, mp4, wav = _encode_clip(decoded.frames, decoded.source_frame_times, decoded.audio, decoded.audio_start, fps, clip, config)
            frames, size = len(chosen), chosen.shape[1:3]
        samples.append({"__key__": key, "json": _sample_json(source, clip, new_table, fps, frames, size, config), "mp4": mp4, "wav": wav})
    _write_state(source, config, samples, new_table)
    return _record_outcome(source, config, windows, keep, samples, entry.get("decoded_frames", 0))


def read_ledger(output: str, source_id: str) -> dict | None:
    uri = work_uri(output, "ledger", source_id)
    return read_json(uri) if exists(uri) else None
