"""The shard contract (avsync_ray.shards): keys, metadata, deterministic tars written atomically with their
checksums, one reader for shards and bundles, the index as the commit point, the score-table schema."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds

from avsync_ray.shards import (
    SCHEMA_VERSION,
    SCORE_NAMES,
    SCORE_TABLE_SCHEMA,
    ShardIndexError,
    iter_samples,
    plan_shards,
    read_index,
    read_metadata,
    read_samples,
    sample_key,
    sample_metadata,
    samples_in_range,
    shard_order,
    shard_urls,
    tar_bytes,
    tar_bytes_and_ranges,
    write_index,
    write_shard,
    write_sourced_shard,
)


def test_clip_keys_are_deterministic_and_dot_free():
    key = sample_key("lion-roar-0123456789", 1.5, 4.0)
    assert key == "lion-roar-0123456789_0001500_0004000" and "." not in key
    assert sample_key("a", 0.1234, 3.1239) == "a_0000123_0003124"


def test_plan_shards_targets_size_and_sample_count():
    lengths = np.full(7, 100)
    assert plan_shards(lengths, target_bytes=250, max_samples=100).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert plan_shards(lengths, target_bytes=10_000, max_samples=2).tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert plan_shards(np.array([10_000, 10]), 100, 10).tolist() == [0, 1]  # a clip above the target makes its own shard
    assert plan_shards(np.zeros(0, dtype=np.int64), 100, 10).tolist() == []


def test_shard_order_is_a_hash_of_the_key_and_mixes_labels():
    keys = sorted(f"{label}-{n:03d}-0123456789_0000000_0003000" for label in ("dog", "lion", "rain") for n in range(40))
    ordered = [keys[i] for i in shard_order(iter(keys), len(keys))]
    assert ordered == sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    # three labels in label order become mixed: every third of the order holds all three
    assert all({k.split("-")[0] for k in ordered[lo : lo + 40]} == {"dog", "lion", "rain"} for lo in (0, 40, 80))


def test_tars_are_deterministic_and_readable_by_webdataset(tmp_path):
    samples = [{"__key__": f"vid-1_{i:07d}_0003000", "json": json.dumps({"i": i}).encode(), "mp4": b"v" * (i + 1), "wav": b"a"} for i in range(3)]
    first, second = tar_bytes(samples), tar_bytes(samples)
    assert first == second
    (tmp_path / "s.tar").write_bytes(first)
    assert [s["__key__"] for s in read_samples(str(tmp_path / "s.tar"))] == [s["__key__"] for s in samples]
    loaded = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False))
    assert [s["__key__"] for s in loaded] == [s["__key__"] for s in samples]
    assert {k for k in loaded[0] if not k.startswith("__")} == {"json", "mp4", "wav"}
    assert io.BytesIO(first).getbuffer().nbytes % 512 == 0


def _samples(count: int) -> list[dict]:
    return [{"__key__": f"vid-1_{i:07d}_0003000", "json": json.dumps({"i": i}).encode(), "mp4": b"v" * (i + 1), "wav": b"a"} for i in range(count)]


def test_write_shard_streams_the_same_bytes_as_in_memory_with_size_and_checksum(tmp_path):
    samples = _samples(4)
    entry = write_shard(str(tmp_path / "train-000000.tar"), iter(samples))
    data = (tmp_path / "train-000000.tar").read_bytes()
    assert data == tar_bytes(samples)
    assert entry == {"url": "train-000000.tar", "nsamples": 4, "filesize": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not list(tmp_path.glob("*.tmp-*"))  # written under a temporary name, moved into place


def test_write_shard_leaves_nothing_behind_when_its_samples_fail(tmp_path):
    def failing():
        yield _samples(1)[0]
        raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError):
        write_shard(str(tmp_path / "train-000000.tar"), failing())
    assert list(tmp_path.iterdir()) == []


def test_a_shard_assembled_from_byte_ranges_of_bundles_is_the_tar_of_those_samples(tmp_path):
    samples = _samples(5)
    data, ranges = tar_bytes_and_ranges(samples[:3])
    (tmp_path / "a.tar").write_bytes(data)
    data_b, ranges_b = tar_bytes_and_ranges(samples[3:])
    (tmp_path / "b.tar").write_bytes(data_b)
    picks = [("b.tar", 1), ("a.tar", 0), ("a.tar", 2), ("b.tar", 0)]
    spans = {"a.tar": ranges, "b.tar": ranges_b}
    keys = [samples[3 + i if name == "b.tar" else i]["__key__"] for name, i in picks]
    result = write_sourced_shard(str(tmp_path), "train", 0, keys, [str(tmp_path / name) for name, _ in picks],
                                 [spans[name][i][0] for name, i in picks], [spans[name][i][1] for name, i in picks])  # fmt: skip
    expected = tar_bytes([samples[3 + i if name == "b.tar" else i] for name, i in picks])
    assert (tmp_path / "train-000000.tar").read_bytes() == expected and result["entry"]["nsamples"] == 4
    assert result["entry"]["sha256"] == hashlib.sha256(expected).hexdigest()
    for key, offset, length in zip(keys, result["offsets"], result["lengths"]):  # where each sample is in the shard
        assert [s["__key__"] for s in samples_in_range(expected[offset : offset + length])] == [key]
    with pytest.raises(ValueError, match="does not hold sample"):  # a range that is not the recorded sample's
        write_sourced_shard(str(tmp_path), "train", 1, [keys[0]], [str(tmp_path / "a.tar")], [ranges[1][0]], [ranges[1][1]])


def test_read_samples_round_trips_what_the_reader_gives_back(tmp_path):
    samples = _samples(3)
    write_shard(str(tmp_path / "a.tar"), samples)
    read = read_samples(str(tmp_path / "a.tar"))
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in read] == samples
    assert {s["__url__"] for s in read} == {str(tmp_path / "a.tar")}
    rewritten = write_shard(str(tmp_path / "b.tar"), read)  # the reader's bookkeeping is not written back
    assert (tmp_path / "b.tar").read_bytes() == (tmp_path / "a.tar").read_bytes() and rewritten["nsamples"] == 3


def test_iter_samples_skips_damaged_shards_only_when_asked(tmp_path):
    write_shard(str(tmp_path / "good.tar"), _samples(2))
    (tmp_path / "bad.tar").write_bytes(b"not a tar" * 100)
    urls = [str(tmp_path / "bad.tar"), str(tmp_path / "missing.tar"), str(tmp_path / "good.tar")]
    assert [s["__key__"] for s in iter_samples(urls, skip_damaged=True)] == [s["__key__"] for s in _samples(2)]
    with pytest.raises(tarfile.ReadError):
        list(iter_samples(urls[:1]))
    with pytest.raises(FileNotFoundError):
        list(iter_samples(urls[1:]))


def test_the_index_commits_the_shards_and_removes_stale_ones(tmp_path):
    entries = [write_shard(str(tmp_path / f"train-{n:06d}.tar"), _samples(2)) for n in range(3)]
    write_index(str(tmp_path), "train", entries, {"curation_id": "abc"})
    index = read_index(str(tmp_path), "train")
    assert index["nsamples"] == 6 and index["schema_version"] == SCHEMA_VERSION and index["curation_id"] == "abc"
    assert shard_urls(str(tmp_path), "train") == [f"{tmp_path}/train-{n:06d}.tar" for n in range(3)]
    write_index(str(tmp_path), "train", entries[:1], {})  # a smaller rerun
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == ["train-000000.tar"]
    with pytest.raises(ShardIndexError, match="no test.index.json"):
        read_index(str(tmp_path), "test")
    write_index(str(tmp_path), "empty", [], {})
    with pytest.raises(ShardIndexError, match="lists no shards"):
        shard_urls(str(tmp_path), "empty")


def test_sample_metadata_has_the_schema_fields_sorted_and_no_nan():
    meta = sample_metadata(
        key="v_0000000_0003000", source_uri="s3://b/v.mp4", source_id="v", label="dog", span=(0.0, 3.0, 1),
        fps=24.0, num_frames=72, size=(128, 228), sample_rate=16000,
    )  # fmt: skip
    parsed = read_metadata({"json": meta})
    assert parsed == {
        "schema_version": SCHEMA_VERSION, "key": "v_0000000_0003000", "source": {"uri": "s3://b/v.mp4", "source_id": "v"},
        "label": "dog", "span": {"start": 0.0, "end": 3.0, "shot": 1}, "fps": 24.0, "num_frames": 72, "size": [128, 228],
        "sample_rate": 16000,
    }  # fmt: skip
    assert meta == json.dumps(parsed, sort_keys=True).encode()
    with pytest.raises(ValueError):
        sample_metadata(key="k", source_uri="u", source_id="v", label="l", span=(0, 1, 0), fps=float("nan"), num_frames=1, size=(2, 2), sample_rate=1)


def test_score_table_schema_holds_every_score_and_types_empty_tables():
    assert SCORE_TABLE_SCHEMA.names[6 : 6 + len(SCORE_NAMES)] == list(SCORE_NAMES)
    empty = SCORE_TABLE_SCHEMA.empty_table()
    assert empty.num_rows == 0 and pa.types.is_string(empty.schema.field("reason").type)
    assert pa.types.is_float64(empty.schema.field("psync_v2a").type)
