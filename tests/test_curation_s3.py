"""`avsync curate s3://... s3://...` on a real S3 API (moto behind the counting proxy of tests/s3_proxy.py): a
driver killed from outside resumes to the uninterrupted run's bytes, throttling is retried, storage errors that
outlast the retries are recorded and retried by the next run, and the requests per video stay bounded."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import work
from avsync_ray.curation.pipeline import run_curation
from avsync_ray.synth import synthesize_corpus

pytestmark = pytest.mark.usefixtures("ray_session")
VIDEOS = 5  # synthetic (in sync or static), plus one empty file
BUCKET = "s3://avsync-test"


@pytest.fixture(scope="module")
def s3_corpus(s3_server, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("s3_corpus")
    synthesize_corpus(root, num_videos=VIDEOS, seed=3, categories=["sync", "static"], duration=4.0, size=(64, 96))
    (root / "sync" / "empty.mp4").write_bytes(b"")
    fs = fsspec.filesystem("s3")
    for video in sorted(root.rglob("*.mp4")):
        fs.put_file(str(video), f"{s3_server}/corpus/{video.parent.name}/{video.name}")
    return f"{s3_server}/corpus"


def config(inputs: str, output: str, **ray) -> CurateConfig:
    return CurateConfig.model_validate({
        "input": inputs, "output": output,
        "filters": {"semantic": {"enabled": False}, "imagebind": {"enabled": False}, "sync": {"enabled": False}},
        "shards": {"short_side": 64, "target_size_mb": 0.05, "crf": 30}, "tracking": {"enabled": False},
        "ray": {"progress_bars": False, **ray},
    })  # fmt: skip


def committed_bytes(output: str) -> dict[str, str]:
    """sha256 of the index, every shard and the ledger."""
    fs = fsspec.filesystem("s3")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(output.removeprefix("s3://"), detail=False) if re.search(r"/train-\d+\.tar$", p))
    names += ["train.index.json", "ledger.parquet"]
    return {name: hashlib.sha256(fs.cat_file(f"{output}/{name}")).hexdigest() for name in names}


def ledger(output: str) -> dict[str, dict]:
    with fsspec.open(f"{output}/ledger.parquet", "rb") as handle:
        return {row["source_id"]: row for row in pq.read_table(handle).to_pylist()}


@pytest.fixture(scope="module")
def s3_reference(s3_corpus) -> dict:
    output = f"{BUCKET}/reference"
    summary = run_curation(config(s3_corpus, output))
    assert summary["videos"] == VIDEOS + 1 and summary["done"] >= 2 and summary["shards"] >= 2
    return {"output": output, "bytes": committed_bytes(output), "summary": summary}


def _command(inputs: str, output: str, folder: Path, **ray) -> list[str]:
    path = folder / "curate.json"
    path.write_text(json.dumps(config(inputs, output, **ray).model_dump(mode="json")))
    return [sys.executable, "-m", "avsync_ray", "curate", inputs, output, "--config", str(path)]


def _recorded(output: str) -> list[dict]:
    return work.read_records(output, "videos", ["source_id", "status", "reason", "detail", "windows", "kept", "clips"]).to_pylist()


KILL_POINTS = {
    "scoring": lambda output: work.part_uris(output, "chunks") and not work.part_uris(output, "videos"),
    "clips": lambda output: len(_recorded(output)) >= 2,
    "committed": lambda output: fsspec.filesystem("s3").exists(f"{output}/train.index.json"),
}


@pytest.mark.parametrize("point", [pytest.param("scoring", marks=pytest.mark.slow), "clips", pytest.param("committed", marks=pytest.mark.slow)])
def test_a_driver_killed_from_outside_resumes_on_s3_to_the_same_bytes(s3_corpus, s3_reference, tmp_path, point):
    """SIGKILL the driver process of an S3 -> S3 run at a point of its work, as a lost head would; the same command
    again ends with the uninterrupted run's index, shards and ledger, every video once with its real outcome, and
    the records stored before the kill as they were."""
    import ray

    output = f"{BUCKET}/killed-{point}"
    command = _command(s3_corpus, output, tmp_path, address=ray.get_runtime_context().gcs_address)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not KILL_POINTS[point](output) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, f"the run ended before the kill point {point}: {driver.stderr.read()[-2000:]}"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    before = {row["source_id"]: row for row in _recorded(output)}
    assert point != "clips" or 2 <= len(before) <= VIDEOS + 1
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert committed_bytes(output) == s3_reference["bytes"]
    entries = ledger(output)
    assert len(entries) == VIDEOS + 1 and not any(e["reason"] == "worker_crashed" for e in entries.values())
    for source_id, entry in before.items():
        assert {k: entries[source_id][k] for k in entry} == entry
    assert not fsspec.filesystem("s3").exists(work.clips_folder(output))  # the shards are the only copy of the clips


def test_throttling_and_dropped_connections_are_retried_to_the_same_bytes(s3_corpus, s3_reference, s3_proxy):
    """One request in eight answered 503 SlowDown and one in fifty dropped, for every process: the run ends as the
    unthrottled one, with no video failed for it."""
    s3_proxy.slowdown_share, s3_proxy.reset_share = 0.125, 0.02
    output = f"{BUCKET}/throttled"
    summary = run_curation(config(s3_corpus, output))
    assert s3_proxy.throttled > 5
    s3_proxy.reset()
    assert committed_bytes(output) == s3_reference["bytes"] and summary["failed"] == s3_reference["summary"]["failed"]


def test_requests_per_video_are_bounded(s3_corpus, s3_proxy):
    """Every request of every process, counted at the proxy: a handful per video (the source read twice, its
    bundle written once and read once), plus a constant for the run (config, index, report, listings)."""
    run_curation(config(s3_corpus, f"{BUCKET}/counted"))
    total, first = s3_proxy.total(), s3_proxy.counts.copy()
    s3_proxy.reset()
    run_curation(config(s3_corpus, f"{BUCKET}/counted"))  # nothing to do: the requests of a finished output
    constant = s3_proxy.total()
    assert total - constant <= 12 * (VIDEOS + 1), (dict(first), dict(s3_proxy.counts))


@pytest.mark.slow
def test_storage_errors_that_outlast_the_retries_are_recorded_and_retried_by_the_next_run(s3_corpus, s3_reference, s3_proxy, tmp_path):
    """Every request for one source answered 503 (fewer retries, set as a user would, so the test is short): that
    video is failed with reason storage_error and the message, the others are curated; the next run, with the
    storage back, curates it and ends with the bytes of a run that never failed."""
    output = f"{BUCKET}/storage-error"
    victim = "sync_s3_00000"
    s3_proxy.refused_keys = re.compile(rf"/corpus/sync/{victim}\.mp4$")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "FSSPEC_S3": json.dumps({"config_kwargs": {"retries": {"max_attempts": 2}}})}
    command = _command(s3_corpus, output, tmp_path, num_cpus=2)
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    failed = [e for e in ledger(output).values() if e["status"] == "failed" and e["reason"] == "storage_error"]
    assert [e["uri"].rsplit("/", 1)[-1] for e in failed] == [f"{victim}.mp4"] and "reduce your request rate" in failed[0]["detail"]
    s3_proxy.refused_keys = None
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert committed_bytes(output) == s3_reference["bytes"]
