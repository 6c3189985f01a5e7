"""Writing shards: deterministic tars (fixed member metadata and order, so the same samples always give the same
bytes), written atomically with their size and checksum, size-targeted shard plans, the index, and stats."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

import webdataset as wds

from avsync_ray.shards.reader import index_uri, iter_samples
from avsync_ray.shards.schema import SCHEMA_VERSION, read_metadata
from avsync_ray.storage import join_uri, list_files, open_atomic, remove, write_json_atomic

INDEX_KIND = "wids-shard-index-v1"


def tar_writer(stream) -> wds.TarWriter:
    """A writer of deterministic tar members (fixed mtime, owner and mode) onto a binary ``stream``; samples are
    ``{"__key__": key, "<member>": bytes, ...}``, each written with its members in name order."""
    return wds.TarWriter(stream, encoder=False, mtime=0, user="avsync", group="avsync", mode=0o444)


def tar_bytes(samples: Iterable[dict]) -> bytes:
    """Samples as one deterministic tar, in memory (e.g. a video's staged clip bundle)."""
    buffer = io.BytesIO()
    writer = tar_writer(buffer)
    for sample in samples:
        writer.write(sample)
    writer.close()
    return buffer.getvalue()


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


def write_shard(uri: str, samples: Iterable[dict]) -> dict:
    """Stream ``samples`` (in order) into the tar at ``uri`` (any fsspec URI), under a temporary name moved into
    place at the end; returns its index entry ``{url, nsamples, filesize, sha256}``. ``samples`` may be a
    generator that drops what it cannot make (precompute records those skips itself)."""
    count = 0
    with open_atomic(uri) as handle:
        stream = _HashingStream(handle)
        writer = tar_writer(stream)
        try:
            for sample in samples:
                writer.write(sample)
                count += 1
            writer.close()
        except BaseException:
            stream.discard()
            raise
    return {"url": uri.rsplit("/", 1)[-1], "nsamples": count, "filesize": stream.size, "sha256": stream.digest.hexdigest()}


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def plan_bundles(bundles: list[tuple[str, int, int]], target_bytes: float, max_samples: int) -> list[list[str]]:
    """Group per-video bundles ``(uri, bytes, clips)``, in order, into shards: a shard is closed once it reaches
    ``target_bytes`` or would exceed ``max_samples``. A video's clips stay together (so shards can be written in
    parallel, each from whole bundles); a single bundle larger than the target makes its own shard."""
    shards: list[list[str]] = []
    size = count = 0
    for uri, bundle_bytes, clips in bundles:
        if shards and size < target_bytes and count + clips <= max_samples:
            shards[-1].append(uri)
        else:
            shards.append([uri])
            size = count = 0
        size += bundle_bytes
        count += clips
    return shards


def write_bundled_shard(output: str, split: str, number: int, bundle_uris: list[str]) -> dict:
    """Concatenate staged bundles into shard ``number`` of ``split``; returns its index entry."""
    return write_shard(join_uri(output, shard_name(split, number)), iter_samples(bundle_uris))


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


def shard_stats(output: str, index: dict) -> dict:
    """Counts and durations per label, from the committed shards' metadata members."""
    labels: dict[str, dict] = {}
    seconds = 0.0
    for sample in iter_samples(join_uri(output, entry["url"]) for entry in index["shardlist"]):
        meta = read_metadata(sample)
        duration = meta["span"]["end"] - meta["span"]["start"]
        seconds += duration
        stats = labels.setdefault(meta["label"], {"clips": 0, "seconds": 0.0, "sources": set()})
        stats["clips"] += 1
        stats["seconds"] += duration
        stats["sources"].add(meta["source"]["source_id"])
    return {
        "split": index["name"],
        "shards": len(index["shardlist"]),
        "clips": index["nsamples"],
        "hours": round(seconds / 3600, 4),
        "labels": {k: {"clips": v["clips"], "seconds": round(v["seconds"], 3), "sources": len(v["sources"])} for k, v in sorted(labels.items())},
    }
