"""Reading shards: the index (the commit point), the shard URLs it lists, and one sample iterator that every
consumer uses (training streams, precompute, evaluation, the demo, curation's own bundles)."""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterable, Iterator

import fsspec
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from avsync_ray.storage import exists, join_uri, read_json

logger = logging.getLogger(__name__)


class ShardIndexError(FileNotFoundError):
    """A shard folder without the index of the split asked for (not curated, or not committed yet)."""


def index_uri(root: str, split: str) -> str:
    return join_uri(root, f"{split}.index.json")


def read_index(root: str, split: str) -> dict:
    """The shard index ``<root>/<split>.index.json`` (curation's or precompute's commit point)."""
    uri = index_uri(root, split)
    if not exists(uri):
        raise ShardIndexError(f"{root} has no {split}.index.json: not a shard folder of split '{split}' (or its run has not finished)")
    return read_json(uri)


def shard_urls(root: str, split: str, index: dict | None = None) -> list[str]:
    """Every shard the index lists (the index is the commit point, so only committed shards); ``index``: the
    split's index if the caller has read it already."""
    urls = [join_uri(root, entry["url"]) for entry in (read_index(root, split) if index is None else index)["shardlist"]]
    if not urls:
        raise ShardIndexError(f"{index_uri(root, split)} lists no shards")
    return urls


def _warn_and_continue(exc: Exception) -> bool:
    logger.warning("skipping a damaged part of a shard: %s", exc)
    return True


def iter_samples(urls: Iterable[str], *, skip_damaged: bool = False) -> Iterator[dict]:
    """The samples of the shards at ``urls`` (any fsspec URI), in order: ``{"__key__", "__url__", <member>:
    bytes, ...}`` with members grouped by key. With ``skip_damaged``, an unreadable shard or a damaged part of
    one is logged and skipped (training streams); otherwise it raises."""
    handler = _warn_and_continue if skip_damaged else reraise_exception
    for url in urls:
        try:
            handle = fsspec.open(url, "rb").open()
        except OSError as exc:
            if not skip_damaged:
                raise
            logger.warning("skipping shard %s: %s", url, exc)
            continue
        with handle:
            yield from group_by_keys(tar_file_expander([{"url": url, "stream": handle}], handler=handler), handler=handler)


def read_samples(uri: str) -> list[dict]:
    """Every sample of one tar (a shard or a staged bundle), in order."""
    return list(iter_samples([uri]))



def samples_in_range(data: bytes) -> list[dict]:
    """The samples whose members fill ``data``, a byte range of a tar cut at member boundaries (what
    :func:`~avsync_ray.shards.writer.tar_bytes_and_ranges` records for each sample)."""
    stream = io.BytesIO(bytes(data) + b"\0" * 2 * tarfile.BLOCKSIZE)  # the end-of-archive marker the range lacks
    members = tar_file_expander([{"url": "<range>", "stream": stream}], handler=reraise_exception)
    return [{k: v for k, v in sample.items() if k != "__url__"} for sample in group_by_keys(members, handler=reraise_exception)]
