"""The shard contract (user-facing spec: ``shards/README.md``): sample keys, members, the metadata JSON, the
per-video score table, and the schema version they all carry. Pure: no I/O."""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = 1

# Members of every sample (``<key>.<member>``), and the two that ``avsync precompute`` adds (float16 ``.npy``).
METADATA_MEMBER, VIDEO_MEMBER, AUDIO_MEMBER = "json", "mp4", "wav"
VAE_MOMENTS_MEMBER = "vae_moments.npy"  # (windows, flip variants, 8, T, H/8, W/8): VAE posterior mean and log-variance
AUDIO_TOKENS_MEMBER = "audio_tokens.npy"  # (windows, tokens, d): ImageBind audio encodings of each window

# Curation's per-window scores, in the order of its filter funnel.
SCORE_NAMES = ("pixel_diff", "semantic_diff", "audio_peak", "ia", "it", "psync_a2v", "psync_v2a")

# One row per window of a source video: the per-video tables and ``scores.parquet`` all have exactly this schema
# (a video without windows writes an empty table of it, never null-typed columns).
SCORE_TABLE_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("uri", pa.string()),
        ("label", pa.string()),
        ("shot", pa.int64()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        *((name, pa.float64()) for name in SCORE_NAMES),
        ("keep", pa.bool_()),
        ("reason", pa.string()),
        ("skipped_rules", pa.string()),
        ("clip", pa.string()),
    ]
)


def sample_key(source_id: str, start: float, end: float) -> str:
    """``<source-id>_<start_ms>_<end_ms>``: deterministic, no dots (WebDataset splits names at the first dot)."""
    return f"{source_id}_{int(round(start * 1000)):07d}_{int(round(end * 1000)):07d}"


def sample_metadata(
    *,
    key: str,
    source_uri: str,
    source_id: str,
    label: str,
    span: tuple[float, float, int],
    fps: float,
    num_frames: int,
    size: tuple[int, int],
    sample_rate: int,
    windows: list[dict] | None = None,
    scores: dict | None = None,
    thresholds: dict | None = None,
    curation_id: str | None = None,
) -> bytes:
    """The ``.json`` member of a sample, as bytes (sorted keys, no NaN): ``span`` is (start, end, shot) in the
    source, ``size`` the mp4's (height, width); the curation fields are absent for samples made without it."""
    start, end, shot = span
    meta = {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "source": {"uri": source_uri, "source_id": source_id},
        "label": label,
        "span": {"start": start, "end": end, "shot": int(shot)},
        "fps": fps,
        "num_frames": num_frames,
        "size": list(size),
        "sample_rate": sample_rate,
    }
    curated = {"windows": windows, "scores": scores, "thresholds": thresholds, "curation_id": curation_id}
    meta.update({name: value for name, value in curated.items() if value is not None})
    return json.dumps(meta, sort_keys=True, allow_nan=False).encode()


def read_metadata(sample: dict) -> dict:
    """The parsed ``.json`` member of a sample read from a shard."""
    return json.loads(sample[METADATA_MEMBER])
