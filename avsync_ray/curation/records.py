"""Curation's durable state as Arrow tables (pure: no I/O; :mod:`avsync_ray.curation.work` stores them).

Two records, written by the Ray tasks in Parquet parts of many rows (never one object per video):

- a **chunk record** per scored chunk of a video's windows (:data:`CHUNK_SCHEMA`): the scan's timing, the chunk's
  windows and their scores. A video without windows, or whose scan failed, has one record with ``chunk`` -1 and
  ``chunks`` 0. A video is *scanned* once a record of each of its chunks is stored.
- a **video record** per curated video (:data:`VIDEO_SCHEMA`): its ledger entry, every window with its scores,
  keep flag and reason, and its clips with their byte ranges in the video's clip bundle. A video is *recorded*
  (done, zero survivors, or failed with a reason) once its video record is stored; a later record of the same
  video (a higher ``generation``: a re-threshold, a retry of a storage error) replaces it.

From the video records come the ledger, the score table and the clip table the shards are planned from.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avsync_ray.shards.schema import SCORE_NAMES, SCORE_TABLE_SCHEMA

SOURCE_FIELDS = [("source_id", pa.string()), ("uri", pa.string()), ("label", pa.string())]
OUTCOME_FIELDS = [("status", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
TIMING_FIELDS = [("fps", pa.float64()), ("video_end", pa.float64()), ("audio_start", pa.float64())]
SCORE_LISTS = [(name, pa.list_(pa.float64())) for name in SCORE_NAMES]
WINDOW_LISTS = [("window_shot", pa.list_(pa.int64())), ("window_start", pa.list_(pa.float64())), ("window_end", pa.list_(pa.float64())), *SCORE_LISTS]

CHUNK_SCHEMA = pa.schema(
    [*SOURCE_FIELDS, *OUTCOME_FIELDS, *TIMING_FIELDS, ("decoded_frames", pa.int64()), ("chunk", pa.int64()), ("chunks", pa.int64()), *WINDOW_LISTS]
)
# One row per source video (``ledger.parquet``).
LEDGER_SCHEMA = pa.schema(
    [*SOURCE_FIELDS, *OUTCOME_FIELDS, ("scoring_id", pa.string()), ("windows", pa.int64()), ("kept", pa.int64()), ("clips", pa.int64()),
     ("decoded_frames", pa.int64())]
)  # fmt: skip
CLIP_LISTS = [
    ("clip_key", pa.list_(pa.string())), ("clip_shot", pa.list_(pa.int64())), ("clip_start", pa.list_(pa.float64())),
    ("clip_end", pa.list_(pa.float64())), ("clip_offset", pa.list_(pa.int64())), ("clip_length", pa.list_(pa.int64())),
]  # fmt: skip
VIDEO_SCHEMA = pa.schema(
    [*LEDGER_SCHEMA, ("generation", pa.int64()), *TIMING_FIELDS, ("skipped_rules", pa.string()), *WINDOW_LISTS,
     ("window_keep", pa.list_(pa.bool_())), ("window_reason", pa.list_(pa.string())), ("window_clip", pa.list_(pa.string())), *CLIP_LISTS]
)  # fmt: skip
# One row per clip of the recorded videos: where its members are (a byte range of a tar), what the stats count.
CLIP_TABLE_SCHEMA = pa.schema(
    [("key", pa.string()), ("source_id", pa.string()), ("label", pa.string()), ("generation", pa.int64()), ("start", pa.float64()),
     ("end", pa.float64()), ("offset", pa.int64()), ("length", pa.int64())]
)  # fmt: skip
# Where each clip of the committed shards is (``_work/shards/<plan id>.parquet``).
SHARD_CLIPS_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("length", pa.int64())])

# The order of the rows of ledger.parquet and of scores.parquet (``window``: see :func:`score_rows`).
LEDGER_ORDER = [("source_id", "ascending")]
SCORE_ORDER = [("source_id", "ascending"), ("start", "ascending"), ("window", "ascending")]

# Reasons a recorded video is curated again by the next run (the failure may not happen again).
RETRIED_REASONS = ("storage_error",)


def video_record(**fields) -> dict:
    """A video record (a dict of every :data:`VIDEO_SCHEMA` field): no windows, no clips, zero counts, unless
    ``fields`` says otherwise."""
    defaults = {field.name: [] if pa.types.is_list(field.type) else "" if pa.types.is_string(field.type) else 0 for field in VIDEO_SCHEMA}
    return {**defaults, **fields}


def record_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with every field of ``schema``; sequences for the list fields) as a table of ``schema``."""
    return pa.Table.from_pylist([{name: _plain(row[name]) for name in schema.names} for row in rows], schema=schema)


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC bytes: how a task hands typed records to the part writer through Ray Data."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: list[bytes], schema: pa.Schema) -> pa.Table:
    tables = [pa.ipc.open_stream(pa.py_buffer(item)).read_all() for item in data]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


def _changes(column: pa.ChunkedArray) -> np.ndarray:
    """Where each row differs from the previous one (the first row always), with Arrow compute: no Python object
    per row."""
    array = column.combine_chunks()
    if len(array) < 2:
        return np.ones(len(array), dtype=bool)
    return np.r_[True, pc.not_equal(array.slice(1), array.slice(0, len(array) - 1)).to_numpy(zero_copy_only=False)]


def _first_of_groups(column: pa.ChunkedArray) -> np.ndarray:
    """Indices where a run of equal values starts (``column`` sorted)."""
    return np.flatnonzero(_changes(column))


def latest_rows(videos: pa.Table) -> np.ndarray:
    """The row of each video's latest record: the one of the highest generation (ties: the first read), in
    source-id order. Reads ``source_id`` and ``generation`` only, so the records can be chosen before they are
    read whole."""
    order = pa.table({"source_id": videos["source_id"], "generation": videos["generation"], "_row": pa.array(np.arange(videos.num_rows))})
    order = order.sort_by([("source_id", "ascending"), ("generation", "descending"), ("_row", "ascending")])
    return order["_row"].to_numpy()[_first_of_groups(order["source_id"])]


def latest_videos(videos: pa.Table) -> pa.Table:
    """One record per video (:func:`latest_rows`), sorted by source id."""
    return videos.take(pa.array(latest_rows(videos))) if videos.num_rows else videos


def final_ids(videos: pa.Table) -> pa.Array:
    """The source ids of videos a run skips: recorded with an outcome that is not retried."""
    latest = latest_videos(videos)
    retried = pc.and_(pc.equal(latest["status"], "failed"), pc.is_in(latest["reason"], value_set=pa.array(RETRIED_REASONS)))
    return latest.filter(pc.invert(retried))["source_id"].combine_chunks()


def _regroup(column: pa.ChunkedArray, starts: np.ndarray, total: int) -> pa.ListArray:
    """Concatenate the lists of consecutive rows: rows ``[starts[i], starts[i + 1])`` become row ``i``."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()[np.r_[starts, total]]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), array.values, type=column.type)


def _current_chunks(chunks: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The chunk records that count, sorted by video and chunk: one per chunk (a chunk stored twice, by a rescan,
    counts once, a storage failure only where nothing else was stored), and a video's failed-scan record only where
    it has no chunk; with the first row of each video and whether all of the video's chunks are there."""
    stale = pc.equal(chunks["reason"], "storage_error")
    table = chunks.append_column("_stale", stale).sort_by([("source_id", "ascending"), ("chunk", "ascending"), ("_stale", "ascending")])
    numbers, new_video = table["chunk"].to_numpy(), _changes(table["source_id"])
    unique = new_video | _changes(table["chunk"])
    starts = np.flatnonzero(new_video)
    has_chunks = np.repeat(np.maximum.reduceat(numbers, starts) >= 0, np.diff(np.r_[starts, len(numbers)]))
    table = table.take(pa.array(np.flatnonzero(unique & ~(has_chunks & (numbers < 0))))).drop_columns(["_stale"])
    starts = _first_of_groups(table["source_id"])
    counts = np.diff(np.r_[starts, table.num_rows])
    expected = table["chunks"].to_numpy()[starts]
    return table, starts, (expected == 0) | (counts == expected)


def scanned_ids(chunks: pa.Table) -> pa.Array:
    """The source ids of the videos whose scan is stored (every chunk, or the scan's own outcome), from chunk
    records with at least ``source_id``, ``chunk``, ``chunks`` and ``reason``; a scan stopped by a storage error
    is not a scan."""
    if not chunks.num_rows:
        return pa.array([], pa.string())
    table, starts, complete = _current_chunks(chunks)
    usable = complete & pc.not_equal(table["reason"].take(pa.array(starts)), "storage_error").to_numpy(zero_copy_only=False)
    return table["source_id"].take(pa.array(starts[usable])).combine_chunks()


def scanned_videos(chunks: pa.Table) -> pa.Table:
    """Per video whose scan is stored: one row of the video's scan (the chunks' windows concatenated in chunk
    order, the frames its passes decoded, and the first failure of a chunk as the video's status)."""
    if not chunks.num_rows:
        return chunks.drop_columns(["chunk", "chunks"])
    table, starts, complete = _current_chunks(chunks)
    failed = np.flatnonzero(pc.not_equal(table["status"], "ok").to_numpy(zero_copy_only=False))
    # The row holding each video's status: its first failed chunk, else its first chunk.
    status_row = starts.copy()
    for index in reversed(failed.tolist()):
        status_row[np.searchsorted(starts, index, side="right") - 1] = index
    rows = table.take(pa.array(status_row))
    columns = {name: rows[name] for name in CHUNK_SCHEMA.names if name not in dict(WINDOW_LISTS) and name not in ("chunk", "chunks")}
    columns["decoded_frames"] = pa.array(np.maximum.reduceat(table["decoded_frames"].to_numpy(), starts), pa.int64())
    columns.update({name: _regroup(table[name], starts, table.num_rows) for name, _ in WINDOW_LISTS})
    return pa.table(columns).filter(pa.array(complete))


def _flatten(videos: pa.Table, lists: list[str], repeated: list[str], names: dict[str, str]) -> pa.Table:
    """One row per element of the (equally long) list columns ``lists``, with the video's ``repeated`` columns."""
    if not videos.num_rows:
        return pa.table({names.get(n, n): pa.array([], videos.schema.field(n).type.value_type if n in lists else videos.schema.field(n).type)
                         for n in [*repeated, *lists]})  # fmt: skip
    parents = pc.list_parent_indices(videos[lists[0]])
    columns = {names.get(n, n): pc.take(videos[n], parents) for n in repeated}
    columns.update({names.get(n, n): pc.list_flatten(videos[n]) for n in lists})
    return pa.table(columns)


def ledger_rows(videos: pa.Table) -> pa.Table:
    """The ledger entries of video records, as they come."""
    return videos.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA)


def ledger_table(videos: pa.Table) -> pa.Table:
    """``ledger.parquet``: one row per recorded video, sorted by source id (:data:`LEDGER_ORDER`)."""
    return ledger_rows(latest_videos(videos))


def score_rows(videos: pa.Table) -> pa.Table:
    """The windows of video records as rows of the score table, video by video in window order, with ``window``:
    a row's place in its video (what orders windows with equal starts, see :data:`SCORE_ORDER`)."""
    names = {"window_shot": "shot", "window_start": "start", "window_end": "end", "window_keep": "keep", "window_reason": "reason", "window_clip": "clip"}
    lists = ["window_shot", "window_start", "window_end", *SCORE_NAMES, "window_keep", "window_reason", "window_clip"]
    table = _flatten(videos, lists, ["source_id", "uri", "label", "skipped_rules"], names).select(SCORE_TABLE_SCHEMA.names).cast(SCORE_TABLE_SCHEMA)
    offsets = videos["window_start"].combine_chunks().offsets.to_numpy() if videos.num_rows else np.zeros(1, dtype=np.int32)
    window = np.arange(table.num_rows) - np.repeat(offsets[:-1] - offsets[0], np.diff(offsets))
    return table.append_column("window", pa.array(window, pa.int64()))


def score_table(videos: pa.Table) -> pa.Table:
    """``scores.parquet``: every window of every recorded video (:data:`SCORE_TABLE_SCHEMA`), by source and start."""
    return score_rows(latest_videos(videos)).sort_by(SCORE_ORDER).drop_columns(["window"])


def clip_table(videos: pa.Table) -> pa.Table:
    """Every clip of the recorded videos (:data:`CLIP_TABLE_SCHEMA`), by key."""
    names = {"clip_key": "key", "clip_start": "start", "clip_end": "end", "clip_offset": "offset", "clip_length": "length"}
    lists = ["clip_key", "clip_start", "clip_end", "clip_offset", "clip_length"]
    table = _flatten(latest_videos(videos), lists, ["source_id", "label", "generation"], names)
    return table.select(CLIP_TABLE_SCHEMA.names).cast(CLIP_TABLE_SCHEMA).sort_by("key")
