"""A curation output's ``_work/`` folder (what makes a rerun resume): its layout, in this one place, and reading
and writing what it holds. No Ray here; :mod:`avsync_ray.curation.pipeline` maps the part writers over Ray Data.

::

    _work/layout.json                   {"layout": 2}; a _work/ of another layout is refused
    _work/chunks/<hh>/<digest>.parquet  chunk records (records.CHUNK_SCHEMA), one part per batch of scored chunks
    _work/videos/<hh>/<digest>.parquet  video records (records.VIDEO_SCHEMA), one part per batch of curated videos
    _work/clips/<hh>/<source id>-<generation>.tar   a video's clip bundle, until the shards that hold its clips commit
    _work/shards/<plan id>.parquet      where each clip of the committed shards is (records.SHARD_CLIPS_SCHEMA)
    _work/committed.json                the committed plan: its id, the last generation it holds, whether bundles stay

``<hh>`` is two hex digits of a hash of the file name: keys spread over 256 prefixes, since an object store's
request rate limits apply per prefix. A part is named by a hash of its bytes, so a retried writer overwrites
its own part, and is written with one PUT (atomic on object stores). Resume and finalize read the parts: about
N / 1,000 objects for N videos, never one object per video.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from avsync_ray.curation.records import CHUNK_SCHEMA, VIDEO_SCHEMA, from_ipc
from avsync_ray.errors import InputError
from avsync_ray.storage import (
    StorageError,
    exists,
    find_files,
    fixed_batches,
    join_uri,
    parquet_bytes,
    read_json,
    read_many,
    remove,
    remove_many,
    write_bytes_atomic,
    write_json_atomic,
)

WORK = "_work"
LAYOUT = 2
RECORDS = {"chunks": CHUNK_SCHEMA, "videos": VIDEO_SCHEMA}
# Records per part: at most this many (N / 1,000 objects at scale), and about 100 parts in a small run, so that a
# run stopped early has stored most of what it finished.
PART_RECORDS, MIN_PARTS = 1000, 100
READ_BATCH = 64  # parts fetched at once, at most
READ_RECORDS = 2000  # records fetched at once, about (whole video records hold every window's scores)


class LayoutError(InputError):
    """The output's ``_work/`` was written by another version of this package."""


def work_uri(output: str, *parts: str) -> str:
    return join_uri(output, WORK, *parts)


def _spread(name: str) -> str:
    """``<hh>/<name>``: the name under one of 256 prefixes, by a hash of the name."""
    return f"{hashlib.sha1(name.encode()).hexdigest()[:2]}/{name}"


def prepare(output: str) -> None:
    """Check that ``_work/`` is of this layout (or start one): an earlier version's state is refused, since
    this version can neither read it nor curate beside it."""
    marker = work_uri(output, "layout.json")
    if exists(marker):
        if read_json(marker).get("layout") == LAYOUT:
            return
    elif not exists(work_uri(output)):
        write_json_atomic(marker, {"layout": LAYOUT})
        return
    raise LayoutError(
        f"{work_uri(output)} holds the state of another version of avsync curate; start a new output folder, or delete "
        f"{work_uri(output)} to curate this one again from the start"
    )


def marker_dir(output: str) -> str:
    """Where the crash tests' fault markers go."""
    return work_uri(output)


def bundle_uri(output: str, source_id: str, generation: int) -> str:
    """The clip bundle of a video's record of ``generation`` (each record has its own: a re-threshold never
    overwrites the bundle an earlier record points into)."""
    return work_uri(output, "clips", _spread(f"{source_id}-{generation:06d}.tar"))


def clips_folder(output: str) -> str:
    return work_uri(output, "clips")


def shard_clips_uri(output: str, plan_id: str) -> str:
    return work_uri(output, "shards", f"{plan_id}.parquet")


def committed_uri(output: str) -> str:
    return work_uri(output, "committed.json")


def records_per_part(count: int) -> int:
    return max(1, min(PART_RECORDS, count // MIN_PARTS))


def write_part(output: str, kind: str, table: pa.Table) -> str:
    """Store records of ``kind`` ('chunks' or 'videos') as one part; returns its URI."""
    data = parquet_bytes(table.cast(RECORDS[kind]))
    uri = work_uri(output, kind, _spread(f"{hashlib.sha1(data).hexdigest()[:24]}.parquet"))
    write_bytes_atomic(uri, data)
    return uri


def part_uris(output: str, kind: str) -> list[str]:
    """Every stored part of ``kind`` (a fresh listing: parts written by other processes are there)."""
    return find_files(work_uri(output, kind), ".parquet")


def columns_schema(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    """``schema`` with only ``columns`` (all, when None): what reading those columns of records gives."""
    return schema if columns is None else pa.schema([schema.field(name) for name in columns])


def iter_parts(uris: list[str], schema: pa.Schema, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The records of each of those parts (``columns`` only, when given), part by part in the order of ``uris``.
    Parts are fetched several at once, about :data:`READ_RECORDS` records (judged from the parts read so far, at
    most :data:`READ_BATCH` parts), so that what is in memory does not grow with the parts' size or number."""
    wanted = columns_schema(schema, columns)
    start, batch, largest = 0, 1, 1
    while start < len(uris):
        for data in read_many(uris[start : start + batch]):
            table = pq.read_table(io.BytesIO(data), columns=columns).cast(wanted)
            largest = max(largest, table.num_rows)
            yield table
        start += batch
        batch = max(1, min(READ_BATCH, READ_RECORDS // largest))


def read_parts(uris: list[str], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """The records of those parts (``columns`` only, when given), in the order of ``uris``."""
    tables = list(iter_parts(uris, schema, columns))
    return pa.concat_tables(tables) if tables else columns_schema(schema, columns).empty_table()


def read_records(output: str, kind: str, columns: list[str] | None = None) -> pa.Table:
    return read_parts(part_uris(output, kind), RECORDS[kind], columns)


def remove_parts(uris: list[str]) -> None:
    remove_many(uris)


def compact_videos(output: str, uris: list[str], latest: Iterable[pa.Table]) -> None:
    """Store the ``latest`` video records (read from the parts ``uris``, a table at a time) in full parts and remove
    those parts, so that later runs read N / 1,000 parts again after re-thresholds and retries superseded many
    records. A run stopped in between leaves both, and a record stored twice counts once."""
    written = {write_part(output, "videos", part) for part in fixed_batches(latest, PART_RECORDS)}
    remove_many(sorted(set(uris) - written))


def read_committed(output: str) -> dict | None:
    uri = committed_uri(output)
    return read_json(uri) if exists(uri) else None


def commit(output: str, plan_id: str, generation: int, kept_bundles: list[str] | None) -> None:
    """After the index committed the shards of ``plan_id``, which hold the clips of the video records up to
    ``generation``: record it, drop the clip locations of earlier plans, and the staged bundles: all of them (the
    shards hold every clip; a later run that rewrites the shards stages their clips again from them), or, when
    ``kept_bundles`` lists the bundles the records point into, the others (of superseded records)."""
    bundles = "removed" if kept_bundles is None else "kept"
    write_json_atomic(committed_uri(output), {"plan_id": plan_id, "generation": generation, "bundles": bundles})
    remove_many([uri for uri in find_files(work_uri(output, "shards"), ".parquet") if uri != shard_clips_uri(output, plan_id)])
    if kept_bundles is None:
        remove(clips_folder(output), recursive=True)
    else:
        remove_many(sorted(set(find_files(clips_folder(output), ".tar")) - set(kept_bundles)))


def _store(batch: dict, output: str, kind: str, finished: int) -> dict:
    """Write the batch's records (``record``: Arrow IPC bytes) as one part; a progress row for the driver, or the
    batch's source ids with the error when storage failed every retry."""
    ids = sorted(set(str(i) for i in batch["source_id"]))
    try:
        write_part(output, kind, from_ipc(list(batch["record"]), RECORDS[kind]))
    except StorageError as error:
        return {"videos": [0], "failed": ["\n".join(ids)], "error": [str(error)[:500]]}
    return {"videos": [finished], "failed": [""], "error": [""]}


def store_chunk_records(batch: dict, output: str) -> dict:
    """A Ray Data batch of chunk records as one part; counts the videos whose last chunk it holds."""
    last = (batch["chunk"] == batch["chunks"] - 1) | (batch["chunks"] == 0)
    return _store(batch, output, "chunks", int(last.sum()))


def store_video_records(batch: dict, output: str) -> dict:
    """A Ray Data batch of video records as one part."""
    return _store(batch, output, "videos", len(batch["source_id"]))
