"""WebDataset input for training, one stream per Ray Train worker (and per DataLoader process inside it).

Shards come from the curation index (``<root>/<split>.index.json``). Each rank reads its own slice of the
shard list when there are at least as many shards as ranks (split by node), then resamples shards from that
slice with a seed of (run seed, rank, loader worker, resume step), so streams never repeat one another and a
resumed run does not replay the samples it has seen. Samples are decoded with the media module from the
``.mp4`` and ``.wav`` members (:mod:`avsync_ray.examples`); a sample that cannot be decoded is skipped, logged
and counted (the count travels with the next batch as ``skipped``), never fatal.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Iterable, Iterator

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avsync_ray.examples import SAMPLE_ERRORS
from avsync_ray.shards import iter_samples

logger = logging.getLogger(__name__)

# A stream that decodes nothing this many times in a row is misconfigured, not unlucky.
MAX_CONSECUTIVE_SKIPS = 200

SampleFn = Callable[[dict, np.random.Generator], dict]


def rank_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's shards: a disjoint slice when every rank can have one, else all of them (resampling with
    per-rank seeds still gives each rank a different stream)."""
    return urls[rank::world_size] if len(urls) >= world_size else list(urls)


# --------------------------------------------------------------------------------------------- stream


def first_example(urls: Iterable[str], make_sample: SampleFn) -> dict:
    """The first sample of the shards that ``make_sample`` can make (with a fixed seed), e.g. for previews."""
    for raw in iter_samples(urls, skip_damaged=True):
        try:
            return make_sample(raw, np.random.default_rng(0))
        except SAMPLE_ERRORS as exc:
            logger.warning("sample %s cannot be an example: %s", raw.get("__key__"), exc)
    raise ValueError("no sample of the shards can be decoded")


def decode_skipping(samples: Iterator[dict], make_sample: SampleFn, rng: np.random.Generator) -> Iterator[dict]:
    """Apply ``make_sample``; a sample it cannot make is logged and skipped, and the number skipped since the
    previous good sample rides along as ``skipped`` (so counts survive DataLoader worker processes)."""
    skipped = 0
    for raw in samples:
        try:
            sample = make_sample(raw, rng)
        except SAMPLE_ERRORS as exc:
            skipped += 1
            logger.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), exc)
            if skipped >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"{skipped} samples in a row could not be decoded; last: {exc}") from exc
            continue
        sample["skipped"] = skipped
        skipped = 0
        yield sample


def collate(samples: list[dict]) -> dict:
    batch = wds.filters.default_collation_fn(samples)
    batch["skipped"] = int(sum(s["skipped"] for s in samples))
    return batch


class ShardStream(IterableDataset):
    """An endless stream of batches from resampled shards (one instance per Ray Train worker)."""

    def __init__(self, urls: list[str], make_sample: SampleFn, batch_size: int, *, seed: int, rank: int = 0, shuffle_buffer: int = 64):
        super().__init__()
        if not urls:
            raise ValueError("no shards to read")
        self.urls, self.make_sample, self.batch_size = list(urls), make_sample, batch_size
        self.seed, self.rank, self.shuffle_buffer = seed, rank, shuffle_buffer

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        seed = wds.utils.make_seed(self.seed, self.rank, worker.id if worker else 0)
        shard_rng = random.Random(seed)
        shards = wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True)
        samples = iter_samples((s["url"] for s in shards), skip_damaged=True)
        if self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shard_rng)(samples)
        decoded = decode_skipping(samples, self.make_sample, np.random.default_rng(seed))
        return wds.batched(self.batch_size, collation_fn=collate, partial=False)(decoded)


def make_loader(stream: ShardStream, num_workers: int = 0) -> DataLoader:
    """Batches from ``stream``, decoded in ``num_workers`` processes (0: in the training process)."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
