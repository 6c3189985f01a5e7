"""The per-video steps of curation (no Ray here; the pipeline maps them over Ray Datasets).

Memory does not grow with a video's length: nothing holds a video's frames or its whole audio.

``scan_video``: a first pass over the file for the shots (every frame through the detector), then a second that
keeps only what the windows sample, yielding the windows chunk by chunk (:mod:`avsync_ray.curation.chunks`) with
their cheap scores and the frames and audio the model stages read.
``chunk_record``: a scored chunk as its record (:data:`~avsync_ray.curation.records.CHUNK_SCHEMA`), which the
pipeline stores with others in one part.
``materialize_video``: thresholds, merging, clip encoding (one more pass, converting only the frames inside a
clip, streamed into its encoder): writes the video's clip bundle and returns its video record (ledger entry,
windows, clips), which the pipeline stores after the bundle, so a stored record marks a fully recorded video.
``rematerialize_video``: the same from stored scores with new thresholds (no model runs).

A storage request that keeps failing after every retry (:mod:`avsync_ray.storage`) records the video as failed
with reason ``storage_error``; the next run curates it again.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterator

import numpy as np

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import work
from avsync_ray.curation.chunks import ChunkPlan, Sampling, cheap_scores, plan_chunks
from avsync_ray.curation.records import CHUNK_SCHEMA, VIDEO_SCHEMA, from_ipc, record_table, scanned_videos, to_ipc, video_record
from avsync_ray.curation.shots import ShotDetector
from avsync_ray.curation.windows import (
    SCORE_RULES,
    Window,
    clip_audio_span,
    decide,
    merge_windows,
    rules,
    windows_in_shots,
    windows_of_clip,
)
from avsync_ray.media import MediaError, MediaErrorReason, encode_wav, is_still_image, probe
from avsync_ray.media.audio import TARGET_SAMPLE_RATE
from avsync_ray.media.encoding import Mp4Encoder
from avsync_ray.media.reader import AudioBlock, WholeFileReader
from avsync_ray.nested import content_id, flatten
from avsync_ray.shards import sample_key, sample_metadata, samples_in_range, tar_bytes_and_ranges
from avsync_ray.storage import is_transient, local_copy, read_ranges, write_bytes_atomic

MODEL_SCORES = ("semantic_diff", "ia", "it", "psync_a2v", "psync_v2a")
WINDOW_COLUMNS = ("window_shot", "window_start", "window_end", *SCORE_RULES)


def _failure_reason(error: Exception, otherwise: str) -> str:
    """``storage_error`` for a storage request that failed every retry (the next run tries the video again)."""
    return "storage_error" if is_transient(error) else otherwise


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
    """What the first pass found about a video (its status, fps, decoded frames, where video and audio start and
    end), as every chunk row of the video carries it."""
    return {"status": status, "reason": reason, "detail": detail, "fps": 0.0, "decoded_frames": 0, "video_end": 0.0, "audio_start": 0.0, **found}


def _first_pass(source: dict, path: str, config: CurateConfig):
    """Probe, then one pass for the shots (every frame through the detector, none kept); returns the scan record,
    the windows, every frame's timestamp and the probe (or a record alone when nothing is to decode)."""
    info = probe(path)
    if info.video is None:
        raise MediaError(source["uri"], MediaErrorReason.NO_VIDEO_STREAM)
    if is_still_image(info):
        raise MediaError(source["uri"], MediaErrorReason.NOT_A_VIDEO, f"a {info.video.codec} image with a video file's name")
    if info.audio is None:
        raise MediaError(source["uri"], MediaErrorReason.NO_AUDIO_STREAM)
    durations = [d for d in (info.video.duration, info.audio.duration, info.duration) if d]
    if not durations:
        raise MediaError(source["uri"], MediaErrorReason.CORRUPT, "no duration")
    duration, length = min(durations), config.windows.length_s
    if config.max_duration_s and duration > config.max_duration_s:
        return _scan_record("failed", "too_long", f"{duration:.1f} s > max_duration_s={config.max_duration_s}"), [], None, info
    if duration < length:  # no window fits: nothing to decode
        return _scan_record(fps=float(info.video.fps), detail=f"{duration:.2f} s long, shorter than one {length:g}-s window"), [], None, info
    fps = float(info.video.fps or 25.0)
    detector = ShotDetector(fps, config.shots)
    reader = WholeFileReader(path, size=_decode_size(info, config))
    for item in reader:
        detector.push(item.rgb())
    summary = reader.summary
    shots = detector.shots(summary.frame_times, duration)
    windows = windows_in_shots(shots, length, config.windows.stride_s)
    longest = max((end - start for start, end in shots), default=0.0)
    detail = "" if windows else f"no shot is as long as one {length:g}-s window (the longest is {longest:.2f} s)"
    found = {"fps": fps, "decoded_frames": summary.num_decoded_frames, "video_end": summary.video_end, "audio_start": summary.audio_start}
    return _scan_record(detail=detail, **found), windows, summary.frame_times, info


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


def _row(source: dict, record: dict, number: int, chunks: int, windows: list[Window], pixel: np.ndarray, peak: np.ndarray,
         frames: list[np.ndarray], frame_times: np.ndarray, audio: np.ndarray, audio_offset: int) -> dict:  # fmt: skip
    """A Ray Data row of the scoring graph: the video's scan ``record``, chunk ``number`` of its ``chunks``, the
    chunk's windows with their cheap scores, and what the model stages read (the frames, their times, the audio
    from track sample ``audio_offset``)."""
    return {
        **source,
        **record,
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
        "audio_offset": int(audio_offset),
    }


def _chunk_row(source: dict, record: dict, plan: ChunkPlan, chunks: int, windows: list[Window], frames: dict[int, np.ndarray],
               audio: np.ndarray, frame_times: np.ndarray, sampling: Sampling) -> dict:  # fmt: skip
    starts = np.array([w.start for w in windows])
    pixel, peak = cheap_scores(plan, starts, frames, audio, sampling)
    reads_audio = sampling.imagebind or sampling.sync  # the stages read audio only for IA and P_sync
    return _row(source, record, plan.number, chunks, [windows[i] for i in plan.windows], pixel, peak, [frames[i] for i in plan.model_frames],
                frame_times[plan.model_frames], audio if reads_audio else np.zeros(0, dtype=np.float32), plan.audio[0])  # fmt: skip


def _no_chunk_row(source: dict, record: dict) -> dict:
    """The one row of a video without windows, or whose scan failed (``record`` says which)."""
    return _row(source, record, -1, 0, [], np.zeros(0), np.zeros(0), [], np.zeros(0), np.zeros(0, dtype=np.float32), 0)


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
        row = _chunk_row(source, record, plan, len(plans), windows, frames, audio.take(*plan.audio), frame_times, sampling)
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
            yield {**next_row(), "decoded_frames": record["decoded_frames"] + last_frame + 1}  # both passes so far
        if not pending:
            return  # nothing after the last chunk is read (the first pass checked the whole file)
    while pending:  # the end of the file: the last chunks' audio may end before what they would read
        yield {**next_row(), "decoded_frames": record["decoded_frames"] + last_frame + 1}


def scan_video(source: dict, config: CurateConfig) -> Iterator[dict]:
    """Scan one source video: its shots, windows and cheap scores, as rows of bounded size (one per chunk of
    windows) for the model stages. A video without windows, or whose scan fails, yields one row with its status
    and reason (never raises)."""
    source = {k: source[k] for k in ("uri", "source_id", "label")}
    try:
        with local_copy(source["uri"]) as path:
            record, windows, frame_times, info = _first_pass(source, path, config)
            plans = plan_chunks(np.array([w.start for w in windows]), frame_times, _sampling(config, record["audio_start"])) if windows else []
            if plans:
                yield from _second_pass(source, path, config, record, windows, frame_times, plans, info)
                return
    except MediaError as error:
        record = _scan_record("failed", error.reason.value, error.detail)
    except Exception as error:  # noqa: BLE001 - e.g. a shot detector crash: recorded, the run goes on
        record = _scan_record("failed", _failure_reason(error, "prepare_error"), repr(error)[:500])
    yield _no_chunk_row(source, record)


def chunk_record(row: dict) -> dict:
    """A scored chunk row as its record (its windows' scores, or the stage failure that stopped them), without the
    frames and audio the model stages read: ``{"source_id", "chunk", "chunks", "record"}`` (Arrow IPC bytes)."""
    fields = {name: row[name] for name in CHUNK_SCHEMA.names if not name.startswith("window_") and name not in SCORE_RULES}
    lists = {"window_shot": row["window_shot"], "window_start": row["window_start"], "window_end": row["window_end"], **{n: row[n] for n in SCORE_RULES}}
    return {"source_id": row["source_id"], "chunk": int(row["chunk"]), "chunks": int(row["chunks"]), "record": to_ipc(record_table([{**fields, **lists}], CHUNK_SCHEMA))}


# ------------------------------------------------------------------------------------------------ finalize


def _clip_of(source_id: str, windows: list[Window], keep: np.ndarray, clips: list[Window]) -> list[str]:
    """The clip each kept window was merged into ('' for a rejected window, or a kept one that a ``max_clip_s``
    cut left in no single piece)."""
    out = []
    for window, kept in zip(windows, keep):
        inside = [sample_key(source_id, clip.start, clip.end) for clip in clips if kept and clip.covers(window)]
        out.append(inside[0] if inside else "")
    return out


def _sample_json(source: dict, clip: Window, made_of: list[int], windows: list[Window], scores: dict[str, np.ndarray], fps: float,
                 frames: int, size: tuple[int, int], config: CurateConfig) -> bytes:  # fmt: skip
    """The clip's metadata: ``windows`` lists the kept windows it was merged from (``made_of``, indices into the
    video's windows), and ``scores`` summarises those."""
    chosen = {name: scores[name][made_of] for name in SCORE_RULES}
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
        windows=[{"start": windows[i].start, "end": windows[i].end, **{n: _finite(scores[n][i]) for n in SCORE_RULES}} for i in made_of],
        scores={n: None if np.isnan(v).any() else {"min": float(v.min()), "mean": float(np.mean(v))} for n, v in chosen.items()},
        thresholds={name: rule.model_dump() for name, rule in rules(config).items()},
        curation_id=curation_id(config),
    )


def _finite(value: float) -> float | None:
    """JSON has no NaN: a score a disabled stage did not compute is null."""
    return None if np.isnan(value) else float(value)


def _video_record(video: dict, config: CurateConfig, generation: int, status: str, reason: str = "", detail: str = "", **fields) -> dict:
    """The video's record (:data:`~avsync_ray.curation.records.VIDEO_SCHEMA`) as ``{"source_id", "record"}`` for
    the part writer; ``fields`` sets its counts, windows and clips (none by default)."""
    record = video_record(**{
        **{name: video[name] for name in ("source_id", "uri", "label", "fps", "video_end", "audio_start")},
        "status": status, "reason": reason, "detail": detail, "scoring_id": scoring_id(config), "generation": generation,
        "decoded_frames": int(video["decoded_frames"]), "skipped_rules": ",".join(name for name, rule in rules(config).items() if not rule.enabled),
        **fields,
    })  # fmt: skip
    return {"source_id": video["source_id"], "record": to_ipc(record_table([record], VIDEO_SCHEMA))}


def _select_clips(scores: dict[str, np.ndarray], shots, starts, ends, config: CurateConfig) -> tuple[list[Window], np.ndarray, list[str], list[Window]]:
    """Thresholds then merging: (windows, keep flags, reasons, the clips the kept windows make)."""
    keep, reasons = decide(scores, config)
    windows = [Window(int(s), float(a), float(b)) for s, a, b in zip(shots, starts, ends)]
    return windows, keep, reasons, merge_windows(windows, keep, config.shards.max_clip_s)


def _zero_survivors_detail(windows: list[Window], reasons: list[str], scan_detail: str) -> tuple[str, str]:
    """(reason, detail) of a video without clips: no window at all (why, from the scan), or every window
    rejected (how many for each reason)."""
    if not windows:
        return "no_window", scan_detail
    return "all_windows_rejected", ", ".join(f"{reason}: {count}" for reason, count in sorted(Counter(reasons).items()))


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


def _materialize(video: dict, config: CurateConfig, generation: int, old: dict[str, tuple]) -> dict:
    """Thresholds, merging, the clips (those in ``old`` keep their media, the others are encoded from one more
    pass over the source), the clip bundle written, and the video's record."""
    source = {k: video[k] for k in ("uri", "source_id", "label")}
    scores = {name: np.asarray(video[name], dtype=np.float64) for name in SCORE_RULES}
    windows, keep, reasons, clips = _select_clips(scores, video["window_shot"], video["window_start"], video["window_end"], config)
    keys = [sample_key(source["source_id"], clip.start, clip.end) for clip in clips]
    media = {key: old[key] for key in keys if key in old}
    new = [clip for clip, key in zip(clips, keys) if key not in media]
    decoded = int(video["decoded_frames"])
    if new:
        with local_copy(source["uri"]) as path:
            encoded, clip_decoded = _clip_samples(path, new, config, probe(path), video["fps"], video["video_end"], video["audio_start"])
        decoded += clip_decoded
        media.update({sample_key(source["source_id"], clip.start, clip.end): (video["fps"], *done) for clip, done in zip(new, encoded)})
    samples = []
    for clip, key in zip(clips, keys):
        fps, mp4, wav, frames, size = media[key]
        made_of = windows_of_clip(clip, windows, keep)
        samples.append({"__key__": key, "json": _sample_json(source, clip, made_of, windows, scores, fps, frames, tuple(size), config), "mp4": mp4, "wav": wav})
    ranges = []
    if samples:
        data, ranges = tar_bytes_and_ranges(samples)
        write_bytes_atomic(work.bundle_uri(config.output, source["source_id"], generation), data)
    status, reason, detail = ("done", "", "") if samples else ("zero_survivors", *_zero_survivors_detail(windows, reasons, video["detail"]))
    return _video_record(
        video, config, generation, status, reason, detail, windows=len(windows), kept=int(keep.sum()), clips=len(samples), decoded_frames=decoded,
        **{name: video[name] for name in WINDOW_COLUMNS}, window_keep=keep.tolist(), window_reason=reasons,
        window_clip=_clip_of(source["source_id"], windows, keep, clips), clip_key=keys, clip_shot=[c.shot for c in clips],
        clip_start=[c.start for c in clips], clip_end=[c.end for c in clips], clip_offset=[o for o, _ in ranges], clip_length=[n for _, n in ranges],
    )  # fmt: skip


def _stored_media(sample: dict) -> tuple:
    """(fps, mp4, wav, frame count, size) of a clip already encoded (read back from a bundle or a shard)."""
    meta = json.loads(sample["json"])
    return meta["fps"], sample["mp4"], sample["wav"], meta["num_frames"], tuple(meta["size"])


def materialize_video(video: dict, config: CurateConfig, generation: int) -> dict:
    """Apply thresholds to a scanned video's windows (a row of
    :func:`~avsync_ray.curation.records.scanned_videos`), merge, encode its clips into its bundle and return its
    record; a failure is recorded, never raised."""
    if video["status"] != "ok":
        return _video_record(video, config, generation, "failed", video["reason"], video["detail"])
    try:
        return _materialize(video, config, generation, {})
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        return _video_record(video, config, generation, "failed", _failure_reason(error, "finalize_error"), repr(error)[:500], windows=len(video["window_start"]))


# ------------------------------------------------------------------------------------------------ rethreshold


def rematerialize_video(video: dict, config: CurateConfig, generation: int) -> dict:
    """Re-apply ``config``'s thresholds to a recorded video's scores (a video record whose ``clip_uri``,
    ``clip_offset`` and ``clip_length`` say where its current clips' members are: its bundle, or a committed
    shard). Clips that existed before keep their encoded media (only their JSON changes); new clip spans are
    decoded and encoded again. A failure is recorded with the video's windows unchanged (reason
    ``rethreshold_error``, or ``storage_error``), and a later ``--rethreshold`` tries the video again."""
    try:
        ends = [o + n for o, n in zip(video["clip_offset"], video["clip_length"])]
        old = {}
        for data in read_ranges(list(video["clip_uri"]), list(video["clip_offset"]), ends):
            old.update({sample["__key__"]: _stored_media(sample) for sample in samples_in_range(data)})
        return _materialize(video, config, generation, old)
    except Exception as error:  # noqa: BLE001 - recorded, the run goes on
        unchanged = {name: video[name] for name in (*WINDOW_COLUMNS, "window_keep", "window_reason", "window_clip")}
        return _video_record(video, config, generation, "failed", _failure_reason(error, "rethreshold_error"), repr(error)[:500],
                             windows=int(video["windows"]), **unchanged)  # fmt: skip


def curate_video(source: dict, config: CurateConfig, generation: int = 0) -> dict:
    """One video through every step in this process, as the tasks run them (scan, chunk records, clips), without
    Ray and without model stages: its video record as a dict, its bundle (if it has clips) written. For tests,
    benchmarks and looking at one video."""
    chunks = from_ipc([chunk_record(row)["record"] for row in scan_video(source, config)], CHUNK_SCHEMA)
    video = scanned_videos(chunks).to_pylist()[0]
    return from_ipc([materialize_video(video, config, generation)["record"]], VIDEO_SCHEMA).to_pylist()[0]
