"""Writing shards: deterministic tars (fixed member metadata and order, so the same samples always give the same
bytes), written atomically with their size and checksum, the order and size-targeted plan of the clips in the
shards, shards assembled from byte ranges of other tars, the index, and stats."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import webdataset as wds

from avsync_ray.shards.reader import index_uri, samples_in_range
from avsync_ray.shards.schema import SCHEMA_VERSION
from avsync_ray.storage import join_uri, list_files, open_atomic, read_ranges, remove, write_json_atomic

# How many clips a shard task fetches at once (concurrent ranged reads; bounds what the task holds).
FETCH_WINDOW = 32

INDEX_KIND = "wids-shard-index-v1"


def tar_writer(stream) -> wds.TarWriter:
    """A writer of deterministic tar members (fixed mtime, owner and mode) onto a binary ``stream``; samples are
    ``{"__key__": key, "<member>": bytes, ...}``, each written with its members in name order."""
    return wds.TarWriter(stream, encoder=False, mtime=0, user="avsync", group="avsync", mode=0o444)


def tar_bytes(samples: Iterable[dict]) -> bytes:
    """Samples as one deterministic tar, in memory (e.g. a video's staged clip bundle)."""
    return tar_bytes_and_ranges(samples)[0]


def tar_bytes_and_ranges(samples: Iterable[dict]) -> tuple[bytes, list[tuple[int, int]]]:
    """Samples as one deterministic tar, in memory, and the byte range ``(offset, length)`` of each sample's
    members in it (what :func:`samples_in_range` reads back)."""
    buffer = io.BytesIO()
    writer = tar_writer(buffer)
    ranges = []
    for sample in samples:
        start = writer.tarstream.offset
        writer.write(sample)
        ranges.append((start, writer.tarstream.offset - start))
    writer.close()
    return buffer.getvalue(), ranges


class _HashingStream:
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, handle):
        self.handle, self.size, self.digest = handle, 0, hashlib.sha256()

    def discard(self) -> None:
        """The shard failed and its file is removed: what tarfile still flushes (when collected) goes nowhere."""
        self.handle = None

    def write(self, data: bytes) -> int:
        if self.handle is None:
            return len(data)
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def _write_tar(uri: str, samples: Iterable[dict]) -> tuple[dict, list[tuple[int, int]]]:
    """Stream ``samples`` into the tar at ``uri`` (atomically); its index entry and each sample's byte range."""
    count, ranges = 0, []
    with open_atomic(uri) as handle:
        stream = _HashingStream(handle)
        writer = tar_writer(stream)
        try:
            for sample in samples:
                start = writer.tarstream.offset
                writer.write(sample)
                ranges.append((start, writer.tarstream.offset - start))
                count += 1
            writer.close()
        except BaseException:
            stream.discard()
            raise
    return {"url": uri.rsplit("/", 1)[-1], "nsamples": count, "filesize": stream.size, "sha256": stream.digest.hexdigest()}, ranges


def write_shard(uri: str, samples: Iterable[dict]) -> dict:
    """Stream ``samples`` (in order) into the tar at ``uri`` (any fsspec URI), written atomically (see
    :func:`~avsync_ray.storage.open_atomic`); returns its index entry ``{url, nsamples, filesize, sha256}``.
    ``samples`` may be a generator that drops what it cannot make (precompute records those skips itself)."""
    return _write_tar(uri, samples)[0]


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def shard_order(keys: Iterable[str], count: int) -> np.ndarray:
    """The order of the ``count`` clips of ``keys`` (given sorted) in the shards: by the SHA-1 of their key (its
    first 64 bits; ties, which practically never happen, by key), which mixes labels and sources across the shards
    and depends on nothing but the keys (the same on a rerun, a resume or another cluster). Eight bytes per clip."""
    digests = np.fromiter((int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") for key in keys), dtype=np.uint64, count=count)
    return np.argsort(digests, kind="stable")


def plan_shards(lengths: np.ndarray, target_bytes: float, max_samples: int) -> np.ndarray:
    """The shard number of each clip of byte size ``lengths`` (clips in shard order): a shard is closed once it
    reaches ``target_bytes`` or would exceed ``max_samples``."""
    numbers = np.zeros(len(lengths), dtype=np.int64)
    number = size = count = 0
    for index, length in enumerate(np.asarray(lengths).tolist()):
        if count and (size >= target_bytes or count >= max_samples):
            number, size, count = number + 1, 0, 0
        numbers[index] = number
        size += length
        count += 1
    return numbers


def _fetched_samples(keys: list[str], uris: list[str], offsets: list[int], lengths: list[int]) -> Iterator[dict]:
    """The samples at those byte ranges, in order, fetched ``FETCH_WINDOW`` at a time; each must hold its key."""
    for lo in range(0, len(keys), FETCH_WINDOW):
        hi = lo + FETCH_WINDOW
        datas = read_ranges(uris[lo:hi], offsets[lo:hi], [o + n for o, n in zip(offsets[lo:hi], lengths[lo:hi])])
        for key, uri, data in zip(keys[lo:hi], uris[lo:hi], datas):
            samples = samples_in_range(data)
            if [s["__key__"] for s in samples] != [key]:
                raise ValueError(f"{uri} does not hold sample {key} at the recorded byte range (it holds {[s['__key__'] for s in samples]})")
            yield samples[0]


def write_sourced_shard(output: str, split: str, number: int, keys: list[str], uris: list[str], offsets: list[int], lengths: list[int]) -> dict:
    """Shard ``number`` of ``split`` made of the samples at those byte ranges of other tars (staged bundles), in
    that order; returns ``{"entry": <index entry>, "offsets": [...], "lengths": [...]}`` (where each sample is in
    the shard)."""
    entry, ranges = _write_tar(join_uri(output, shard_name(split, number)), _fetched_samples(keys, uris, offsets, lengths))
    return {"entry": entry, "offsets": [o for o, _ in ranges], "lengths": [n for _, n in ranges]}


def write_index(output: str, split: str, shardlist: list[dict], extra: dict) -> dict:
    """Remove shards an earlier, larger run left beyond the new count, then write ``<split>.index.json``:
    the commit point readers trust."""
    kept = {entry["url"] for entry in shardlist}
    for stale in list_files(output, ".tar"):
        name = stale.rsplit("/", 1)[-1]
        if name.startswith(f"{split}-") and name not in kept:
            remove(stale)
    index = {
        "__kind__": INDEX_KIND,
        "wids_version": 1,
        "name": split,
        "schema_version": SCHEMA_VERSION,
        "shardlist": shardlist,
        "nsamples": sum(entry["nsamples"] for entry in shardlist),
        **extra,
    }
    write_json_atomic(index_uri(output, split), index)
    return index


def shard_stats(index: dict, clips: pa.Table) -> dict:
    """Counts and durations per label of the clips the shards were written from (a table with ``label``,
    ``source_id``, ``start`` and ``end`` per clip), with Arrow's group-by: no shard is read."""
    labels = {}
    seconds = 0.0
    if clips.num_rows:
        table = clips.append_column("seconds", pc.subtract(clips["end"], clips["start"]))
        seconds = pc.sum(table["seconds"]).as_py()
        grouped = table.group_by("label").aggregate([("seconds", "count"), ("seconds", "sum"), ("source_id", "count_distinct")]).sort_by("label")
        labels = {row["label"]: {"clips": row["seconds_count"], "seconds": round(row["seconds_sum"], 3), "sources": row["source_id_count_distinct"]}
                  for row in grouped.to_pylist()}  # fmt: skip
    return {"split": index["name"], "shards": len(index["shardlist"]), "clips": index["nsamples"], "hours": round(seconds / 3600, 4), "labels": labels}
