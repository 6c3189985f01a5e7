"""The per-video steps of curation (no Ray here; the pipeline maps them over Ray Datasets).

Memory does not grow with a video's length: nothing holds a video's frames or its whole audio.

``scan_video``: a first pass over the file for the shots (every frame through the detector), then a second that
keeps only what the windows sample, yielding the windows chunk by chunk (:mod:`avsync_ray.curation.chunks`) with
their cheap scores and the frames and audio the model stages read. It records the video's scan first.
``record_chunk``: a scored chunk's windows, stored.
``materialize_video``: thresholds, merging, clip encoding (one more pass, converting only the frames inside a
clip, streamed into its encoder), and the video's durable state: its clip bundle, score rows and ledger entry,
written in that order so the ledger entry marks a fully recorded video.
``rematerialize_video``: the same from stored scores with new thresholds (no model runs).
"""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation.chunks import ChunkPlan, Sampling, cheap_scores, plan_chunks
from avsync_ray.curation.shots import ShotDetector
from avsync_ray.curation.windows import SCORE_RULES, Window, clip_audio_span, decide, merge_windows, rules, windows_in_shots
from avsync_ray.media import MediaError, MediaErrorReason, encode_wav, probe
from avsync_ray.media.audio import TARGET_SAMPLE_RATE
from avsync_ray.media.encoding import Mp4Encoder
from avsync_ray.media.reader import AudioBlock, WholeFileReader
from avsync_ray.nested import content_id, flatten
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
    extension = {"ledger": "json", "scans": "json", "scores": "parquet", "clips": "tar"}[kind]
    return join_uri(output, WORK, kind, f"{source_id}.{extension}")


MODEL_FIELDS = ("enabled", "checkpoint", "classifier", "model", "preset")


def _scoring(config: CurateConfig) -> dict:
    data = config.model_dump(mode="json")
    models = {name: {k: v for k, v in data["filters"][name].items() if k in MODEL_FIELDS} for name in ("semantic", "imagebind", "sync")}
    return {"shots": data["shots"], "windows": data["windows"], "short_side": data["shards"]["short_side"], "models": models}


def scoring_settings(config: CurateConfig) -> dict:
    """What determines the scores (dotted field -> value): shots, windows, the decode size, the model stages."""
    scoring = _scoring(config)
    return flatten({"shots": scoring["shots"], "windows": scoring["windows"], "shards": {"short_side": scoring["short_side"]}, "filters": scoring["models"]})


def encoding_settings(config: CurateConfig) -> dict:
    """What else changes a shard's bytes besides the thresholds: clip encoding, splitting and shard layout."""
    return flatten({"shards": config.shards.model_dump(mode="json")})


def threshold_settings(config: CurateConfig) -> dict:
    """Every rule's bounds (what ``--rethreshold`` may change)."""
    return flatten({"filters": {name: rule.model_dump(mode="json") for name, rule in rules(config).items()}})


def scoring_id(config: CurateConfig) -> str:
    """A hash of the scoring settings, kept in each video's ledger entry."""
    return content_id(_scoring(config))


def curation_id(config: CurateConfig) -> str:
    """Scoring settings plus thresholds and clip encoding: stamped into every shard sample."""
    data = config.model_dump(mode="json")
    return content_id([scoring_id(config), data["filters"], data["shards"]])


def setting_differences(saved: CurateConfig, config: CurateConfig, rethreshold: bool) -> list[str]:
    """The settings of ``config`` that a resume of an output curated with ``saved`` cannot change: scoring and
    encoding always, thresholds unless re-thresholding (``field: output has X, this run Y``)."""
    getters = (scoring_settings, encoding_settings) if rethreshold else (scoring_settings, encoding_settings, threshold_settings)
    before, after = {}, {}
    for get in getters:
        before.update(get(saved))
        after.update(get(config))
    return [f"{key}: the output has {before.get(key)!r}, this run {value!r}" for key, value in sorted(after.items()) if before.get(key) != value]


# ------------------------------------------------------------------------------------------------ scan


def _decode_size(info, config: CurateConfig) -> int | None:
    """Frames are scaled down to the shard's short side, never up."""
    return config.shards.short_side if min(info.video.width, info.video.height) > config.shards.short_side else None


def _sampling(config: CurateConfig, audio_start: float) -> Sampling:
    stages = config.filters
    return Sampling(config.windows.length_s, stages.semantic.enabled, stages.imagebind.enabled, stages.sync.enabled, audio_start, TARGET_SAMPLE_RATE)


def _scan_record(status: str = "ok", reason: str = "", detail: str = "", **found) -> dict:
    """A video's scan: its status and what the first pass found (fps, decoded frames, where video and audio start
    and end, the window count, its chunk numbers)."""
    return {"status": status, "reason": reason, "detail": detail, "fps": 0.0, "decoded_frames": 0, "video_end": 0.0,
            "audio_start": 0.0, "windows": 0, "chunks": [], **found}  # fmt: skip


def _first_pass(source: dict, path: str, config: CurateConfig):
    """Probe, then one pass for the shots (every frame through the detector, none kept); returns the scan record,
    the windows, every frame's timestamp and the probe (or a record alone when nothing is to decode)."""
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
        return _scan_record("failed", "too_long", f"{duration:.1f} s > max_duration_s={config.max_duration_s}"), [], None, info
    if duration < config.windows.length_s:
        return _scan_record(fps=float(info.video.fps)), [], None, info  # no window fits: nothing to decode
    fps = float(info.video.fps or 25.0)
    detector = ShotDetector(fps, config.shots)
    reader = WholeFileReader(path, size=_decode_size(info, config))
    for item in reader:
        detector.push(item.rgb())
    summary = reader.summary
    windows = windows_in_shots(detector.shots(summary.frame_times, duration), config.windows.length_s, config.windows.stride_s)
    found = {"fps": fps, "decoded_frames": summary.num_decoded_frames, "video_end": summary.video_end, "audio_start": summary.audio_start}
    return _scan_record(windows=len(windows), **found), windows, summary.frame_times, info


class AudioBuffer:
    """The 16 kHz track samples of a pass from some sample on, as the reader's blocks arrive."""

    def __init__(self):
        self.start, self.end = 0, 0
        self.blocks: list[np.ndarray] = []

    def add(self, block: AudioBlock) -> None:
        self.blocks.append(block.samples)
        self.end = block.offset + len(block.samples)

    def take(self, lo: int, hi: int) -> np.ndarray:
        """Samples ``[lo, hi)`` (fewer where the track ends first)."""
        joined = np.concatenate(self.blocks) if self.blocks else np.zeros(0, dtype=np.float32)
        self.blocks = [joined]
        return joined[lo - self.start : hi - self.start].copy()  # a row or a clip must not pin the buffer

    def drop_before(self, sample: int) -> None:
        cut = max(0, min(sample, self.end) - self.start)
        if cut:
            joined = np.concatenate(self.blocks)
            self.blocks, self.start = [joined[cut:].copy()], self.start + cut  # a copy: the dropped samples are freed


def _row(source: dict, number: int, chunks: int, windows: list[Window], pixel: np.ndarray, peak: np.ndarray, frames: list[np.ndarray],
         frame_times: np.ndarray, audio: np.ndarray, audio_start: float, audio_offset: int) -> dict:  # fmt: skip
    """A Ray Data row of the scoring graph: chunk ``number`` of the video's ``chunks``, its windows with their cheap
    scores, and what the model stages read (the frames, their times, the audio from track sample ``audio_offset``)."""
    return {
        **source,
        "status": "ok",
        "reason": "",
        "detail": "",
        "chunk": number,
        "chunks": chunks,
        "window_shot": np.array([w.shot for w in windows], dtype=np.int64),
        "window_start": np.array([w.start for w in windows], dtype=np.float64),
        "window_end": np.array([w.end for w in windows], dtype=np.float64),
        "pixel_diff": np.asarray(pixel, dtype=np.float64),
        "audio_peak": np.asarray(peak, dtype=np.float64),
        **{name: np.full(len(windows), np.nan) for name in MODEL_SCORES},
        "frames": np.stack(frames) if frames else np.zeros((0, 2, 2, 3), dtype=np.uint8),
        "frame_times": np.asarray(frame_times, dtype=np.float64),
        "audio": np.asarray(audio, dtype=np.float32),
        "audio_start": float(audio_start),
        "audio_offset": int(audio_offset),
        "decoded_frames": 0,  # the frames this pass has decoded when it yields the row
    }


def _chunk_row(source: dict, plan: ChunkPlan, chunks: int, windows: list[Window], frames: dict[int, np.ndarray], audio: np.ndarray,
               frame_times: np.ndarray, sampling: Sampling) -> dict:  # fmt: skip
    starts = np.array([w.start for w in windows])
    pixel, peak = cheap_scores(plan, starts, frames, audio, sampling)
    reads_audio = sampling.imagebind or sampling.sync  # the stages read audio only for IA and P_sync
    return _row(source, plan.number, chunks, [windows[i] for i in plan.windows], pixel, peak, [frames[i] for i in plan.model_frames],
                frame_times[plan.model_frames], audio if reads_audio else np.zeros(0, dtype=np.float32), sampling.audio_start, plan.audio[0])  # fmt: skip


def _no_chunk_row(source: dict) -> dict:
    """The one row of a video without windows (or whose scan failed): it only tells the driver the video is scanned."""
    return _row(source, -1, 0, [], np.zeros(0), np.zeros(0), [], np.zeros(0), np.zeros(0, dtype=np.float32), 0.0, 0)


def _second_pass(source: dict, path: str, config: CurateConfig, record: dict, windows: list[Window], frame_times: np.ndarray,
                 plans: list[ChunkPlan], info) -> Iterator[dict]:  # fmt: skip
    """One more pass that keeps only the frames and audio the chunks read, and yields each chunk once it has them
    (frames and samples no pending chunk reads are let go)."""
    sampling = _sampling(config, record["audio_start"])
    pending = deque(plans)
    frames: dict[int, np.ndarray] = {}
    audio = AudioBuffer()
    wanted, last_frame = set(np.concatenate([plan.frames for plan in plans]).tolist()), -1

    def next_row() -> dict:
        nonlocal frames
        plan = pending.popleft()
        row = _chunk_row(source, plan, len(plans), windows, frames, audio.take(*plan.audio), frame_times, sampling)
        # Chunks follow their first window's start, which is also their earliest read: the next chunk reads
        # nothing before its first frame and sample.
        first = pending[0].frames[0] if pending else last_frame + 1
        frames = {index: frame for index, frame in frames.items() if index >= first}
        audio.drop_before(min((p.audio[0] for p in pending), default=audio.end))
        return row

    for item in WholeFileReader(path, size=_decode_size(info, config), video_end=record["video_end"]):
        if isinstance(item, AudioBlock):
            audio.add(item)
        else:
            last_frame = item.index
            if item.index in wanted:
                frames[item.index] = item.rgb()
        while pending and last_frame >= pending[0].frames[-1] and audio.end >= pending[0].audio[1]:
            yield {**next_row(), "decoded_frames": last_frame + 1}
        if not pending:
            return  # nothing after the last chunk is read (the first pass checked the whole file)
    while pending:  # the end of the file: the last chunks' audio may end before what they would read
        yield {**next_row(), "decoded_frames": last_frame + 1}


def scan_video(source: dict, config: CurateConfig) -> Iterator[dict]:
    """Scan one source video: its shots, windows and cheap scores, as rows of bounded size (one per chunk of
    windows) for the model stages. Writes the video's scan record (``_work/scans/<id>.json``: status, timing,
    chunk numbers) before the first chunk; a failure is recorded there with its reason, never raised."""
    try:
        with local_copy(source["uri"]) as path:
            record, windows, frame_times, info = _first_pass(source, path, config)
            plans = plan_chunks(np.array([w.start for w in windows]), frame_times, _sampling(config, record["audio_start"])) if windows else []
            record["chunks"] = [plan.number for plan in plans]
            write_json_atomic(work_uri(config.output, "scans", source["source_id"]), record)
            if plans:
                yield from _second_pass(source, path, config, record, windows, frame_times, plans, info)
                return
    except MediaError as error:
        write_json_atomic(work_uri(config.output, "scans", source["source_id"]), _scan_record("failed", error.reason.value, error.detail))
    except Exception as error:  # noqa: BLE001 - e.g. a shot detector crash: recorded, the run goes on
        write_json_atomic(work_uri(config.output, "scans", source["source_id"]), _scan_record("failed", "prepare_error", repr(error)[:500]))
    yield _no_chunk_row(source)


def chunk_name(source_id: str, number: int) -> str:
    """A scored chunk's file, relative to ``_work/chunks``."""
    return f"{source_id}/{number:06d}.parquet"


def chunk_uri(output: str, source_id: str, number: int) -> str:
    return join_uri(output, WORK, "chunks", chunk_name(source_id, number))


def record_chunk(row: dict, config: CurateConfig) -> dict:
    """Store a scored chunk's windows (their scores, or the stage failure that stopped them); returns what the
    driver counts (the video, the chunk, how many chunks the video has)."""
    progress = {"source_id": row["source_id"], "chunk": int(row["chunk"]), "chunks": int(row["chunks"])}
    if progress["chunk"] < 0:
        return progress
    table = pa.table(
        {"shot": np.asarray(row["window_shot"], dtype=np.int64), "start": np.asarray(row["window_start"], dtype=np.float64),
         "end": np.asarray(row["window_end"], dtype=np.float64), **{name: np.asarray(row[name], dtype=np.float64) for name in SCORE_RULES}},
    ).replace_schema_metadata({"status": row["status"], "reason": row["reason"], "detail": row["detail"], "decoded_frames": str(row["decoded_frames"])})  # fmt: skip
    write_parquet(chunk_uri(config.output, row["source_id"], progress["chunk"]), table)
    return progress


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


def _clip_samples(path: str, clips: list[Window], config: CurateConfig, info, fps: float, video_end: float, audio_start: float) -> tuple[list[tuple], int]:
    """(mp4, wav, frame count, frame size) of each clip (in order, not overlapping), from one pass over the file up
    to the last clip that converts only the frames inside a clip and streams them into its encoder; and the number
    of frames that pass decoded. At most two encoders are open (a clip waiting for its audio, the next one's
    frames) and the audio is kept from the next clip's first sample on, so memory does not grow with the video."""
    sample_rate = TARGET_SAMPLE_RATE
    spans = [clip_audio_span(clip.start, clip.end, audio_start, sample_rate) for clip in clips]
    encoders: dict[int, Mp4Encoder] = {}
    counts, sizes, done = [0] * len(clips), [None] * len(clips), []
    audio, current, last_time, decoded = AudioBuffer(), 0, -np.inf, 0  # current: the clip the next frame may fall in

    def finish_ready(at_end: bool) -> None:
        """Finish, in order, the clips whose frames and audio have all been read."""
        while len(done) < len(clips) and (at_end or (last_time >= clips[len(done)].end - 1e-6 and audio.end >= spans[len(done)][1])):
            k = len(done)
            sound = audio.take(*spans[k])
            encoder = encoders.pop(k)
            done.append((encoder.finish(sound), encode_wav(sound, sample_rate), counts[k], sizes[k]))
            encoder.__exit__(None, None, None)

    try:
        for item in WholeFileReader(path, size=_decode_size(info, config), video_end=video_end):
            if isinstance(item, AudioBlock):
                audio.add(item)
                if len(done) < len(clips):
                    audio.drop_before(spans[len(done)][0])
            else:
                last_time, decoded = item.time, item.index + 1
                while current < len(clips) and item.time >= clips[current].end - 1e-6:
                    current += 1
                if current < len(clips) and item.time >= clips[current].start - 1e-6:
                    if current not in encoders:
                        encoders[current] = Mp4Encoder(fps, with_audio=True, crf=config.shards.crf, preset=config.shards.x264_preset).__enter__()
                    image = item.rgb()
                    encoders[current].add(image[None])
                    counts[current], sizes[current] = counts[current] + 1, image.shape[:2]
            finish_ready(at_end=False)
            if len(done) == len(clips):
                break  # nothing after the last clip is read
        finish_ready(at_end=True)
    finally:
        for encoder in encoders.values():
            encoder.__exit__(None, None, None)
    return done, decoded


def _materialize(source: dict, columns: dict, config: CurateConfig, old: dict[str, dict], scan: dict) -> dict:
    """Thresholds, merging, the clips (those in ``old`` keep their media, the others are encoded from one more
    pass over the source) and the video's state, ledger entry last."""
    scores = {name: np.asarray(columns[name], dtype=np.float64) for name in SCORE_RULES}
    windows, keep, reasons, clips = _select_clips(scores, columns["shot"], columns["start"], columns["end"], config)
    table = _windows_table({**source, **scores}, windows, keep, reasons, clips, config)
    keys = [sample_key(source["source_id"], clip.start, clip.end) for clip in clips]
    media = {key: _stored_media(old[key]) for key in keys if key in old}
    new = [clip for clip, key in zip(clips, keys) if key not in media]
    if new:
        with local_copy(source["uri"]) as path:
            info = probe(path)
            timing = scan if scan.get("video_end") else _timing(path, info, config)
            encoded, decoded = _clip_samples(path, new, config, info, timing["fps"], timing["video_end"], timing["audio_start"])
        scan = {**scan, "decoded_frames": scan.get("decoded_frames", 0) + decoded}
        media.update({sample_key(source["source_id"], clip.start, clip.end): (timing["fps"], *done) for clip, done in zip(new, encoded)})
    samples = []
    for clip, key in zip(clips, keys):
        fps, mp4, wav, frames, size = media[key]
        samples.append({"__key__": key, "json": _sample_json(source, clip, table, fps, frames, tuple(size), config), "mp4": mp4, "wav": wav})
    _write_state(source, config, samples, table)
    return _record_outcome(source, config, windows, keep, samples, scan.get("decoded_frames", 0))


def _stored_media(sample: dict) -> tuple:
    """(fps, mp4, wav, frame count, size) of a clip already in the video's bundle."""
    meta = json.loads(sample["json"])
    return meta["fps"], sample["mp4"], sample["wav"], meta["num_frames"], tuple(meta["size"])


def _timing(path: str, info, config: CurateConfig) -> dict:
    """fps, video end and audio start of an output curated before scan records existed (one pass, no pixels)."""
    reader = WholeFileReader(path, size=_decode_size(info, config))
    for _ in reader:
        pass
    return {"fps": float(info.video.fps or 25.0), "video_end": reader.summary.video_end, "audio_start": reader.summary.audio_start}


def materialize_video(source: dict, config: CurateConfig) -> dict:
    """Apply thresholds to a scanned video's windows, merge, encode its clips and record it (ledger last)."""
    source = {k: source[k] for k in ("uri", "source_id", "label")}
    scan = read_json(work_uri(config.output, "scans", source["source_id"]))
    failed = {"windows": 0, "kept": 0, "clips": 0, "decoded_frames": scan["decoded_frames"]}
    if scan["status"] != "ok":
        return record_video(source, config, "failed", scan["reason"], scan["detail"], failed)
    tables = []
    for number in scan["chunks"]:
        with fsspec.open(chunk_uri(config.output, source["source_id"], number), "rb") as handle:
            tables.append(pq.read_table(handle))
    metas = [{k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()} for table in tables]
    for meta in metas:
        if meta.get("status", "ok") != "ok":
            return record_video(source, config, "failed", meta["reason"], meta["detail"], failed)
    # Frames decoded: the shots' pass, the chunks' pass (up to the last chunk), then the clips' pass.
    scan = {**scan, "decoded_frames": scan["decoded_frames"] + max((int(m.get("decoded_frames", 0)) for m in metas), default=0)}
    columns = pa.concat_tables(tables).to_pydict() if tables else {name: [] for name in ("shot", "start", "end", *SCORE_RULES)}
    try:
        entry = _materialize(source, columns, config, {}, scan)
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        return record_video(source, config, "failed", "finalize_error", repr(error)[:500], {**failed, "windows": len(columns["start"])})
    remove(join_uri(config.output, WORK, "chunks", source["source_id"]), recursive=True)  # the scores are in the video's table now
    return entry


# ------------------------------------------------------------------------------------------------ rethreshold


def rematerialize_video(entry: dict, config: CurateConfig) -> dict:
    """Re-apply ``config``'s thresholds to a video's stored scores. Clips that existed before keep their encoded
    media (only their JSON changes); new clip spans are decoded and encoded again. A failure is recorded (reason
    ``rethreshold_error``), and a later ``--rethreshold`` tries the video again."""
    source = {k: entry[k] for k in ("uri", "source_id", "label")}
    try:
        with fsspec.open(work_uri(config.output, "scores", source["source_id"]), "rb") as handle:
            columns = pq.read_table(handle).to_pydict()
        clips_uri = work_uri(config.output, "clips", source["source_id"])
        old = {s["__key__"]: s for s in read_samples(clips_uri)} if exists(clips_uri) else {}
        scan_uri = work_uri(config.output, "scans", source["source_id"])
        scan = read_json(scan_uri) if exists(scan_uri) else {"decoded_frames": entry.get("decoded_frames", 0)}
        return _materialize(source, columns, config, old, {**scan, "decoded_frames": entry.get("decoded_frames", 0)})
    except Exception as error:  # noqa: BLE001 - recorded in the ledger, the run goes on
        counts = {"windows": entry["windows"], "kept": 0, "clips": 0, "decoded_frames": entry.get("decoded_frames", 0)}
        return record_video(source, config, "failed", "rethreshold_error", repr(error)[:500], counts)


def read_ledger(output: str, source_id: str) -> dict | None:
    uri = work_uri(output, "ledger", source_id)
    return read_json(uri) if exists(uri) else None
