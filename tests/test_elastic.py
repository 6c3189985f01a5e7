"""Elastic runs on a multi-node cluster on this machine (`tests/local_cluster.py`: `ray start` nodes on loopback):
a worker node killed from outside mid-run, and a node joining mid-run.

Curation: the run completes, the ledger holds every video exactly once, and the shards and index are
byte-identical to a one-node run of the same corpus and config; a joining node receives video tasks (Ray's task
placement says so). Training: Ray Train restarts the worker group from the last checkpoint and the run ends with
exactly ``max_steps`` optimizer steps, each step logged once in one MLflow run.

"Mid-run" is made deterministic by the faults hook's delays (``slow_video_s``, ``slow_step_s``: test-only, from
``AVSYNC_INJECT_FAULTS``); the cluster is changed once Ray's State API or the run's own files show work in flight.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from local_cluster import REPO, LocalCluster
from training_checks import optimizer_steps

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import work
from avsync_ray.curation.pipeline import run_curation
from avsync_ray.faults import ENV_VAR as FAULTS_ENV_VAR
from avsync_ray.synth import synthesize_corpus
from avsync_ray.training.engine import read_checkpoint_meta, run_checkpoints

VIDEOS = 6


@pytest.fixture(scope="module")
def cluster():
    """A head of 1 CPU; each test adds (and removes or kills) the worker nodes it needs."""
    with LocalCluster(head_cpus=1) as running:
        yield running


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic_corpus")
    synthesize_corpus(root, num_videos=VIDEOS, seed=0, categories=["sync"], duration=6.0)
    return root


def _config(corpus: Path, output: Path, **ray) -> CurateConfig:
    return CurateConfig.model_validate(
        {
            "input": str(corpus),
            "output": str(output),
            "filters": {"semantic": {"enabled": False}, "imagebind": {"enabled": False}, "sync": {"enabled": False}},
            "shards": {"short_side": 128, "target_size_mb": 0.3, "crf": 30},
            "tracking": {"enabled": False},
            "ray": {"progress_bars": False, **ray},
        }
    )


def _digests(output: Path) -> dict[str, str]:
    """sha256 of every shard and of the index (the commit, with every shard's sha256 inside)."""
    files = [*sorted(output.glob("train-*.tar")), output / "train.index.json"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def reference(ray_session, corpus, tmp_path_factory) -> dict[str, str]:
    """The same corpus and config curated on one node (the test session's local Ray)."""
    output = tmp_path_factory.mktemp("elastic_reference") / "out"
    summary = run_curation(_config(corpus, output))
    assert summary["done"] == VIDEOS and summary["shards"] >= 2  # several shards: their order and split count too
    return _digests(output)


def _start_curation(cluster: LocalCluster, corpus: Path, output: Path, slow_video_s: float) -> subprocess.Popen:
    """`avsync curate` as a driver on the head's machine, joined to the cluster, every video slowed down."""
    config = output.with_suffix(".yaml")
    config.write_text(json.dumps(_config(corpus, output, address=cluster.gcs_address).model_dump(mode="json")))
    env = {**cluster.env, FAULTS_ENV_VAR: json.dumps({"slow_video_s": slow_video_s})}
    command = [sys.executable, "-m", "avsync_ray", "curate", str(corpus), str(output), "--config", str(config)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(condition, driver: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, f"the run ended before {what}: {driver.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _finish(driver: subprocess.Popen, timeout: float = 600) -> str:
    try:
        stdout, stderr = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, stderr[-3000:]
    return stdout


def _video_tasks(cluster: LocalCluster, node_id: str, state: str | None = None) -> list:
    """Curation's per-video tasks (Ray Data fuses prepare and finalize into one) placed on ``node_id``."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=cluster.address, filters=[("node_id", "=", node_id)], detail=True, limit=10_000, raise_on_missing_output=False)
    return [t for t in tasks if "scan_video" in t.name and (state is None or t.state == state)]


def _assert_complete_and_identical(output: Path, reference: dict[str, str]) -> None:
    ledger = pq.read_table(output / "ledger.parquet").to_pylist()
    stored = work.read_records(str(output), "videos", ["source_id"])["source_id"].to_pylist()
    assert sorted(row["source_id"] for row in ledger) == sorted(stored)  # one stored record per video
    assert len(ledger) == len({row["source_id"] for row in ledger}) == VIDEOS  # every video, once
    assert {row["status"] for row in ledger} == {"done"}
    assert _digests(output) == reference


# Slow suite (about 1.5 min). With a worker node of one or two CPUs, some runs had every scan task on the head (the
# driver's node: Ray Data ran them one at a time there and gave the worker only the short record-writing tasks),
# so no scan was in flight on the worker when it was killed; a worker of four CPUs takes scans side by side.
@pytest.mark.slow
def test_curation_survives_a_worker_node_killed_mid_run(cluster, corpus, reference, tmp_path):
    worker = cluster.add_node(num_cpus=4)
    output = tmp_path / "out"
    # 5 s per video: the state API sees a task's RUNNING a second or more late on a loaded machine, and the kill
    # must land while the worker's tasks run
    driver = _start_curation(cluster, corpus, output, slow_video_s=5.0)
    try:
        _wait_until(lambda: _video_tasks(cluster, worker.node_id, "RUNNING"), driver, "video task running on the worker node")
        cluster.kill_node(worker)
    finally:
        _finish(driver)
    lost = _video_tasks(cluster, worker.node_id)
    assert any(t.state == "FAILED" for t in lost), [(t.name, t.state, t.error_type) for t in lost]  # killed mid-task, retried
    _assert_complete_and_identical(output, reference)


def test_curation_hands_work_to_a_node_joining_mid_run(cluster, corpus, reference, tmp_path):
    output = tmp_path / "out"
    driver = _start_curation(cluster, corpus, output, slow_video_s=3.0)
    joined = None
    try:
        _wait_until(lambda: _video_tasks(cluster, cluster.head.node_id, "RUNNING"), driver, "video task running on the head")
        joined = cluster.add_node()
        _finish(driver)
        on_joined = _video_tasks(cluster, joined.node_id, "FINISHED")
        assert on_joined, "the joining node ran no video task"
        assert len(on_joined) < VIDEOS  # the head did its share
    finally:
        if driver.poll() is None:
            driver.kill()
        if joined is not None:
            cluster.remove_node(joined)
    _assert_complete_and_identical(output, reference)


def _train_command(shards: Path, tmp_path: Path, cluster: LocalCluster) -> list[str]:
    overrides = [
        f"run.storage_path={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", "run.name=elastic",
        "max_steps=6", "checkpoint.every_n_steps=2", "log_every_n_steps=1", "model.base_width=4", "model.image_size=32",
        "clips.num_clips=5", f"ray.address={cluster.gcs_address}",
    ]  # fmt: skip
    return [sys.executable, "-m", "avsync_ray", "train-sync", str(shards), "--preset", "train-sync-tiny", *(a for o in overrides for a in ("--set", o))]


def _committed_step(run_dir: Path) -> int | None:
    """The step of Ray Train's latest committed checkpoint (its controller's snapshot). A checkpoint on storage
    is committed only when the controller has collected every rank's report (it polls every 2 s); a failure
    before that restarts from the previous committed checkpoint, or from scratch."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return latest["metrics"]["step"] if latest else None


@pytest.mark.slow
def test_training_restarts_from_the_last_checkpoint_after_losing_a_node(cluster, synthetic_shards, tmp_path):
    """Two Ray Train workers of 1 CPU on three 1-CPU nodes; the node of a worker that is not on the head is killed
    once Ray Train has committed the step-2 checkpoint (every rank sleeps 6 s after each step, so step 3 is not
    logged yet)."""
    from mlflow.tracking import MlflowClient
    from ray.util.state import list_actors

    workers = [cluster.add_node(), cluster.add_node()]
    run_dir = tmp_path / "runs" / "elastic"
    env = {**cluster.env, FAULTS_ENV_VAR: json.dumps({"slow_step_s": 6.0})}
    driver = subprocess.Popen(_train_command(synthetic_shards["root"], tmp_path, cluster), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: _committed_step(run_dir) == 2, driver, "committed step-2 checkpoint", timeout=300)
        alive = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
        victim = next(node for node in workers if node.node_id in {actor.node_id for actor in alive})
        killed_at_ms = time.time() * 1000
        cluster.kill_node(victim)
        stdout = _finish(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
        for node in workers:
            if node.process.poll() is None:
                cluster.remove_node(node)
    checkpoint = json.loads(stdout)["checkpoint"]
    meta = read_checkpoint_meta(checkpoint)
    assert meta["step"] == 6 and optimizer_steps(checkpoint) == 6
    assert [step for step, _ in run_checkpoints(str(run_dir))][-1] == 6

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.run_id for run in runs] == [meta["mlflow_run_id"]]  # the restart continued the run, no new one
    history = client.get_metric_history(meta["mlflow_run_id"], "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # each step once
    assert all((m.timestamp < killed_at_ms) == (m.step <= 2) for m in history)  # steps 3.. by the restarted group
    dead = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "DEAD")], detail=True)
    assert victim.node_id in {actor.node_id for actor in dead}
