"""Deterministic WebDataset tars: per-video clip bundles, then size-targeted shards, an index and stats.

Tar members carry fixed metadata (mtime 0, fixed owner and mode) and come in a fixed order, so the same
clips always give the same bytes. Each video's clips are first staged as one bundle (a tar); shards are then
whole bundles concatenated in source-id order, each written under a temporary name and moved into place; the
``<split>.index.json`` written last is the commit point that readers trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable

import fsspec
import webdataset as wds

from avsync_ray.storage import join_uri, list_files, remove, write_bytes_atomic, write_json_atomic

SCHEMA_VERSION = 1


def tar_writer(stream) -> wds.TarWriter:
    """A writer of deterministic tar members (fixed mtime, owner and mode) onto a binary ``stream``; samples are
    ``{"__key__": key, "<extension>": bytes, ...}``, written in the order given."""
    return wds.TarWriter(stream, encoder=False, mtime=0, user="avsync", group="avsync", mode=0o444)


def tar_bytes(samples: Iterable[dict]) -> bytes:
    """Samples ``{"__key__": key, "mp4": bytes, "wav": bytes, "json": bytes}`` as a deterministic tar."""
    buffer = io.BytesIO()
    writer = tar_writer(buffer)
    for sample in samples:
        writer.write(sample)
    writer.close()
    return buffer.getvalue()


def read_tar(uri: str) -> list[dict]:
    """The samples of a tar written by :func:`tar_bytes`, in order (members grouped by key)."""
    samples: list[dict] = []
    with fsspec.open(uri, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
        for member in archive:
            key, _, extension = member.name.partition(".")
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][extension] = archive.extractfile(member).read()
    return samples


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


def write_shard(output: str, split: str, number: int, bundle_uris: list[str]) -> dict:
    """Concatenate bundles into ``<split>-<number:06d>.tar`` (atomically); returns its index entry."""
    samples = [sample for uri in bundle_uris for sample in read_tar(uri)]
    name = f"{split}-{number:06d}.tar"
    data = tar_bytes(samples)
    write_bytes_atomic(join_uri(output, name), data)
    return {"url": name, "nsamples": len(samples), "filesize": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_index(output: str, split: str, shardlist: list[dict], extra: dict) -> dict:
    """Remove shards an earlier, larger run left beyond the new count, then write ``<split>.index.json``:
    the commit point readers trust."""
    kept = {entry["url"] for entry in shardlist}
    for stale in list_files(output, ".tar"):
        name = stale.rsplit("/", 1)[-1]
        if name.startswith(f"{split}-") and name not in kept:
            remove(stale)
    index = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": split,
        "schema_version": SCHEMA_VERSION,
        "shardlist": shardlist,
        "nsamples": sum(entry["nsamples"] for entry in shardlist),
        **extra,
    }
    write_json_atomic(join_uri(output, f"{split}.index.json"), index)
    return index


def shard_stats(output: str, index: dict) -> dict:
    """Counts and durations per label, from the committed shards' JSON members."""
    labels: dict[str, dict] = {}
    seconds = 0.0
    for entry in index["shardlist"]:
        for sample in read_tar(join_uri(output, entry["url"])):
            meta = json.loads(sample["json"])
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
