"""The WebDataset shard contract in one package: what a sample holds (``schema``), how shards are written
(``writer``) and read (``reader``). Every producer (curation, precompute, synth) and consumer (training,
evaluation, the demo) goes through it; ``shards/README.md`` is its user-facing spec."""

from avsync_ray.shards.reader import ShardIndexError, index_uri, iter_samples, read_index, read_samples, shard_urls
from avsync_ray.shards.schema import (
    AUDIO_MEMBER,
    AUDIO_TOKENS_MEMBER,
    METADATA_MEMBER,
    SCHEMA_VERSION,
    SCORE_NAMES,
    SCORE_TABLE_SCHEMA,
    VAE_MOMENTS_MEMBER,
    VIDEO_MEMBER,
    read_metadata,
    sample_key,
    sample_metadata,
)
from avsync_ray.shards.writer import (
    plan_bundles,
    shard_name,
    shard_stats,
    tar_bytes,
    write_bundled_shard,
    write_index,
    write_shard,
)

__all__ = [
    "AUDIO_MEMBER",
    "AUDIO_TOKENS_MEMBER",
    "METADATA_MEMBER",
    "SCHEMA_VERSION",
    "SCORE_NAMES",
    "SCORE_TABLE_SCHEMA",
    "VAE_MOMENTS_MEMBER",
    "VIDEO_MEMBER",
    "ShardIndexError",
    "index_uri",
    "iter_samples",
    "plan_bundles",
    "read_index",
    "read_metadata",
    "read_samples",
    "sample_key",
    "sample_metadata",
    "shard_name",
    "shard_stats",
    "shard_urls",
    "tar_bytes",
    "write_bundled_shard",
    "write_index",
    "write_shard",
]
