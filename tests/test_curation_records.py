"""Curation's stored records (avsync_ray.curation.records, pure Arrow) and the _work/ layout (work): which
record counts, when a video's scan is complete, the ledger, score and clip tables, parts and the layout check."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from avsync_ray.curation import report, spill, work
from avsync_ray.curation.records import (
    CHUNK_SCHEMA,
    SCORE_LISTS,
    VIDEO_SCHEMA,
    clip_table,
    final_ids,
    from_ipc,
    latest_videos,
    ledger_table,
    record_table,
    scanned_ids,
    scanned_videos,
    score_table,
    to_ipc,
    video_record,
)
from avsync_ray.shards import SCORE_TABLE_SCHEMA
from avsync_ray.storage import write_parquet_batches

SCORES = [name for name, _ in SCORE_LISTS]


def chunk(source_id: str, number: int, chunks: int, starts=(), status: str = "ok", reason: str = "", decoded: int = 10) -> dict:
    starts = list(starts)
    return {"source_id": source_id, "uri": f"s3://b/{source_id}.mp4", "label": "dog", "status": status, "reason": reason, "detail": "",
            "fps": 24.0, "video_end": 9.0, "audio_start": 0.0, "decoded_frames": decoded, "chunk": number, "chunks": chunks,
            "window_shot": [0] * len(starts), "window_start": starts, "window_end": [s + 3 for s in starts],
            **{name: [0.5] * len(starts) for name in SCORES}}  # fmt: skip


def video(source_id: str, generation: int, status: str = "done", reason: str = "", clips=(), windows=(0.0,)) -> dict:
    windows = list(windows)
    return video_record(
        source_id=source_id, uri=f"s3://b/{source_id}.mp4", label="dog", status=status, reason=reason, scoring_id="s", generation=generation,
        windows=len(windows), clips=len(clips), window_shot=[0] * len(windows), window_start=windows, window_end=[w + 3 for w in windows],
        **{name: [0.1] * len(windows) for name in SCORES}, window_keep=[True] * len(windows), window_reason=[""] * len(windows),
        window_clip=[""] * len(windows), clip_key=list(clips), clip_shot=[0] * len(clips), clip_start=[0.0] * len(clips),
        clip_end=[3.0] * len(clips), clip_offset=[512 * i for i in range(len(clips))], clip_length=[512] * len(clips),
    )  # fmt: skip


def test_records_travel_as_ipc_and_fit_their_schemas():
    table = record_table([video("a", 0, clips=["a_0000000_0003000"])], VIDEO_SCHEMA)
    assert from_ipc([to_ipc(table), to_ipc(table)], VIDEO_SCHEMA).num_rows == 2
    assert record_table([chunk("a", -1, 0)], CHUNK_SCHEMA).schema == CHUNK_SCHEMA


def test_the_latest_generation_of_a_video_counts_and_storage_errors_are_retried():
    records = record_table([video("a", 0), video("a", 2, status="zero_survivors"), video("a", 1), video("b", 0, "failed", "storage_error"),
                            video("c", 0, "failed", "corrupt")], VIDEO_SCHEMA)  # fmt: skip
    latest = latest_videos(records)
    assert latest["source_id"].to_pylist() == ["a", "b", "c"] and latest["generation"].to_pylist() == [2, 0, 0]
    assert final_ids(records).to_pylist() == ["a", "c"]  # b is curated again by the next run
    assert ledger_table(records)["status"].to_pylist() == ["zero_survivors", "failed", "failed"]


def test_a_scan_counts_once_every_chunk_is_stored():
    chunks = record_table(
        [chunk("long", 1, 3, [10.0]), chunk("long", 0, 3, [0.0, 0.5], decoded=40), chunk("long", 0, 3, [0.0, 0.5], decoded=40),  # a rescan
         chunk("half", 0, 2, [0.0]), chunk("short", -1, 0), chunk("broken", -1, 0, status="failed", reason="corrupt")],
        CHUNK_SCHEMA,
    )  # fmt: skip
    assert sorted(scanned_ids(chunks).to_pylist()) == ["broken", "short"]
    complete = record_table(chunks.to_pylist() + [chunk("long", 2, 3, [20.0], decoded=99)], CHUNK_SCHEMA)
    videos = {row["source_id"]: row for row in scanned_videos(complete).to_pylist()}
    assert sorted(videos) == ["broken", "long", "short"]  # 'half' still lacks a chunk
    assert videos["long"]["window_start"] == [0.0, 0.5, 10.0, 20.0] and videos["long"]["decoded_frames"] == 99
    assert videos["broken"]["status"] == "failed" and videos["short"]["window_start"] == []


def test_a_scan_stopped_by_a_storage_error_is_scanned_again_and_a_rescan_wins():
    failed = chunk("v", -1, 0, status="failed", reason="storage_error")
    assert scanned_ids(record_table([failed], CHUNK_SCHEMA)).to_pylist() == []
    assert scanned_videos(record_table([failed], CHUNK_SCHEMA))["reason"].to_pylist() == ["storage_error"]  # recorded as such
    rescanned = record_table([failed, chunk("v", 0, 1, [0.0])], CHUNK_SCHEMA)
    assert scanned_ids(rescanned).to_pylist() == ["v"]
    assert scanned_videos(rescanned).to_pylist()[0]["status"] == "ok"
    no_window = record_table([failed, chunk("v", -1, 0)], CHUNK_SCHEMA)
    assert scanned_videos(no_window)["status"].to_pylist() == ["ok"]


def test_score_and_clip_tables_flatten_the_latest_records():
    records = record_table([video("b", 0, windows=[0.0, 0.5], clips=["b_0000000_0003500"]), video("a", 0, windows=[1.0]),
                            video("a", 1, "zero_survivors", windows=[]), video("c", 0, "failed", windows=[])], VIDEO_SCHEMA)  # fmt: skip
    scores = score_table(records)
    assert scores.schema == SCORE_TABLE_SCHEMA and scores["source_id"].to_pylist() == ["b", "b"] and scores["start"].to_pylist() == [0.0, 0.5]
    clips = clip_table(records)
    assert clips["key"].to_pylist() == ["b_0000000_0003500"] and clips["label"].to_pylist() == ["dog"]
    empty = record_table([video("a", 0, windows=[])], VIDEO_SCHEMA)
    assert score_table(empty).schema == SCORE_TABLE_SCHEMA and score_table(empty).num_rows == 0 and clip_table(empty).num_rows == 0


def test_parts_hold_many_records_and_spread_over_prefixes(tmp_path):
    output = str(tmp_path / "out")
    work.prepare(output)
    table = record_table([video(f"v{i}", 0) for i in range(250)], VIDEO_SCHEMA)
    size = work.records_per_part(250)
    for lo in range(0, 250, size):
        work.write_part(output, "videos", table.slice(lo, size))
    uris = work.part_uris(output, "videos")
    prefixes = [uri.split("/")[-2] for uri in uris]
    assert len(uris) == math.ceil(250 / size) and all(re.fullmatch("[0-9a-f]{2}", p) for p in prefixes) and len(set(prefixes)) > 1
    assert sorted(work.read_records(output, "videos", ["source_id"])["source_id"].to_pylist()) == sorted(f"v{i}" for i in range(250))
    assert work.records_per_part(200_000) == 1000 and work.records_per_part(20) == 1
    again = work.write_part(output, "videos", table.slice(0, size))  # a retried writer rewrites its own part
    assert again in uris and len(work.part_uris(output, "videos")) == len(uris)


def test_an_earlier_versions_work_folder_is_refused_with_one_line(tmp_path):
    old = tmp_path / "old"
    (old / "_work" / "ledger").mkdir(parents=True)
    (old / "_work" / "ledger" / "v.json").write_text("{}")
    with pytest.raises(work.LayoutError, match=r"start a new output folder, or delete .*_work") as error:
        work.prepare(str(old))
    assert "\n" not in str(error.value)
    work.prepare(str(tmp_path / "new"))
    work.prepare(str(tmp_path / "new"))  # its own layout: fine
    assert (tmp_path / "new" / "_work" / "layout.json").exists()


def test_clip_bundles_of_different_generations_have_their_own_names():
    first, second = work.bundle_uri("s3://b/out", "v", 0), work.bundle_uri("s3://b/out", "v", 1)
    assert first != second and first.startswith("s3://b/out/_work/clips/") and first.endswith("/v-000000.tar")


def test_compaction_keeps_the_latest_records_and_removes_the_superseded_parts(tmp_path):
    output = str(tmp_path / "out")
    work.prepare(output)
    for generation in range(3):  # e.g. a run and two re-thresholds
        work.write_part(output, "videos", record_table([video(f"v{i}", generation) for i in range(5)], VIDEO_SCHEMA))
    uris = work.part_uris(output, "videos")
    work.compact_videos(output, uris, [latest_videos(work.read_parts(uris, VIDEO_SCHEMA))])
    after = work.read_records(output, "videos")
    assert after.num_rows == 5 and set(after["generation"].to_pylist()) == {2} and len(work.part_uris(output, "videos")) == 1


def test_a_ranked_spill_gives_every_row_back_sorted_a_range_of_ranks_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "MIN_RANKS", 4)
    ranks = np.random.default_rng(0).permutation(10)
    table = pa.table({"key": [f"k{r:02d}" for r in ranks], "rank": ranks})
    store = spill.RankedSpill(str(tmp_path), 10)
    store.add("t", table.slice(0, 6), ranks[:6])
    store.add("t", table.slice(6), ranks[6:])
    ranges = list(store.sorted_tables("t", [("key", "ascending")]))
    assert [t["rank"].to_pylist() for t in ranges] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(tmp_path.iterdir()) == []  # each file goes once read


def test_the_streamed_ledger_and_score_table_are_the_whole_tables_bytes_and_the_report_counts(tmp_path, monkeypatch):
    """The finalize writes ledger.parquet and scores.parquet from the parts a part at a time (spilled by rank, a
    few videos per range here): the same bytes as the tables built from every record at once, with the report's
    counts and histograms of those tables."""
    from avsync_ray.curation import pipeline

    monkeypatch.setattr(spill, "MIN_RANKS", 3)
    output = str(tmp_path / "out")
    work.prepare(output)
    rng = np.random.default_rng(1)
    records = []
    for generation in range(2):  # a re-threshold supersedes half of the videos
        for i in range(0 if generation == 0 else 5, 10):
            starts = [1.0, 0.0, 1.0][: i % 4]  # equal starts keep their window order
            row = video(f"v{(i * 7) % 10}", generation, "done" if i % 3 else "zero_survivors", "" if i % 3 else "all_windows_rejected", windows=starts)
            row.update({name: rng.random(len(starts)).tolist() for name in SCORES}, window_reason=["", "too_static", ""][: len(starts)])
            records.append(row)
    table = record_table(records, VIDEO_SCHEMA)
    for lo in range(0, table.num_rows, 4):
        work.write_part(output, "videos", table.slice(lo, 4))
    stored = work.read_records(output, "videos")  # the parts' order: the reference reads them so too

    recorded = pipeline._Recorded.read(output)
    tally = pipeline._write_tables(output, recorded)

    for name, reference in (("ledger", ledger_table(stored)), ("scores", score_table(stored))):
        expected = tmp_path / f"{name}-whole.parquet"
        write_parquet_batches(str(expected), reference.schema, [reference])
        assert (tmp_path / "out" / f"{name}.parquet").read_bytes() == expected.read_bytes()
    ledger, scores = ledger_table(stored), score_table(stored)
    assert tally.videos == ledger.num_rows == 10 and dict(tally.statuses) == Counter(ledger["status"].to_pylist())
    assert dict(tally.window_reasons) == Counter(scores["reason"].to_pylist())
    assert dict(tally.zero_survivor_reasons) == {"all_windows_rejected": Counter(ledger["status"].to_pylist())["zero_survivors"]}
    for name in SCORES:
        values = scores[name].to_numpy()
        assert np.array_equal(tally.histograms[name], np.histogram(values, report.HISTOGRAM_BINS)[0])
    assert recorded.superseded is False and len(recorded.ranks) == table.num_rows
