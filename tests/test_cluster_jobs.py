"""Jobs on a running two-node Ray cluster, submitted as a user does: `ray start --head` and a second node with
`ray start --address` (1 CPU each, on the loopback address 127.0.0.2, free ports), then `avsync submit
jobs/curate-tiny.yaml` (default suite, about a minute) and `avsync submit jobs/train-sync-tiny.yaml` (slow) through
the Ray Jobs API, their paths pointed at temporary folders with `--set`. The curation's shards, index and ledger,
the training's checkpoint and both jobs' logs are checked, and so is where the cluster's processes listen: on
loopback, but for the sockets Ray 2.60 binds to every interface (`local_cluster.ALL_INTERFACES`). The two training
workers need 1 CPU each, so they run one on each node: a multi-node run. The cluster (`tests/local_cluster.py`) is
stopped by the pids this test started."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from local_cluster import ALL_INTERFACES, LOOPBACK_ONLY, REPO, LocalCluster

from avsync_ray.synth import synthesize_corpus
from avsync_ray.training.engine import read_checkpoint_meta


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node, 1 CPU each (``.address``: the dashboard URL, ``.env``: for clients)."""
    with LocalCluster() as running:
        running.add_node()
        yield running


def _submit(spec: str, address: str, env: dict, *overrides: str, wait: bool = True) -> subprocess.CompletedProcess:
    """`avsync submit` from the repository root, as a user runs it (working_dir `.` uploads this checkout)."""
    args = [sys.executable, "-m", "avsync_ray", "submit", spec, "--address", address, "--wait" if wait else "--no-wait"]
    for override in overrides:
        args += ["--set", override]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _job_id(output: str) -> str:
    return output.split("submitted ", 1)[1].split()[0]


def _last_json(logs: str) -> dict:
    """The JSON summary a verb prints last (Ray may log lines after it)."""
    return json.JSONDecoder().raw_decode(logs, logs.rindex("\n{") + 1)[0]


def test_curation_job_on_a_two_node_cluster(cluster, tmp_path):
    """`avsync submit --no-wait`, then the printed `ray job logs --follow` command, as a user follows a job."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env = cluster.address, cluster.env
    corpus, shards = tmp_path / "corpus", tmp_path / "shards"
    synthesize_corpus(corpus, num_videos=4, seed=0, categories=["sync"], duration=6.0)
    submitted = _submit(
        "jobs/curate-tiny.yaml", address, env, f"input={corpus}", f"output={shards}", f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
        wait=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = _job_id(submitted.stdout)
    assert re.fullmatch(r"curate-tiny-\d{8}-\d{6}", job_id)
    follow = f"ray job logs --follow {job_id} --address {address}"
    assert f"follow its logs: {follow}" in submitted.stdout

    followed = subprocess.run(follow.split(), env=env, capture_output=True, text=True, timeout=600)  # returns when the job ends
    assert followed.returncode == 0, followed.stderr
    client = JobSubmissionClient(address)
    info = client.get_job_info(job_id)
    assert info.status == JobStatus.SUCCEEDED, info.message
    assert info.metadata["task"] == "curate-tiny"
    curated = re.compile(rf"curated 4 videos \(4 with clips, 0 without, 0 failed, \d+ other files skipped\): \d+ windows -> \d+ kept -> 4 clips in 1 shards at {re.escape(str(shards))} \(")
    assert curated.search(followed.stdout) and curated.search(client.get_job_logs(job_id))  # the --set output won over the spec's path

    index = json.loads((shards / "train.index.json").read_text())
    assert index["shardlist"] and sum(entry["nsamples"] for entry in index["shardlist"]) == 4
    for entry in index["shardlist"]:
        assert hashlib.sha256((shards / entry["url"]).read_bytes()).hexdigest() == entry["sha256"]
    ledger = pq.read_table(shards / "ledger.parquet").to_pylist()
    assert sorted(row["status"] for row in ledger) == ["done"] * 4


def test_the_cluster_listens_on_loopback_but_where_ray_binds_every_interface(cluster):
    """After a job ran (its workers and the agents up): every LISTEN socket of every process the cluster started
    is on a loopback address or, for the components Ray gives no host flag, on every interface; none is on this
    machine's own network address, and each has a known role."""
    listeners = cluster.listening()
    shown = "\n".join(f"{l.role} {l.scope} {l.ip}:{l.port} node{l.node} {l.process}" for l in listeners)
    assert {l.scope for l in listeners} <= {"loopback", "all interfaces"}, shown
    assert "unknown" not in {l.role for l in listeners}, shown
    everywhere = {l.role for l in listeners if l.scope == "all interfaces"}
    loopback = {l.role for l in listeners if l.scope == "loopback"}
    assert everywhere <= set(ALL_INTERFACES) and loopback == set(LOOPBACK_ONLY), shown
    assert {"gcs", "node-manager", "object-manager", "dashboard-agent-grpc"} <= everywhere, shown  # as the docs say
    for index in range(len(cluster.nodes)):  # each node's own agents are on loopback, its raylet everywhere
        mine = {(l.role, l.scope) for l in listeners if l.node == index}
        assert {("runtime-env-agent", "loopback"), ("dashboard-agent-http", "loopback"), ("node-manager", "all interfaces")} <= mine, shown


@pytest.mark.slow
def test_training_job_spans_both_nodes(cluster, synthetic_shards, tmp_path):
    """`avsync submit` waiting for the job: 2 Ray Train workers of 1 CPU each, so one on each node."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    address, env = cluster.address, cluster.env
    runs = tmp_path / "runs"
    result = _submit(
        "jobs/train-sync-tiny.yaml", address, env,
        f"data.root={synthetic_shards['root']}", f"run.storage_path={runs}", f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
        "run.name=cluster-test", "max_steps=4", "checkpoint.every_n_steps=2", "model.base_width=4", "clips.num_clips=5",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = _job_id(result.stderr)  # said on stderr as soon as it is submitted; the result line is on stdout
    assert result.stdout.strip() == f"job {job_id} SUCCEEDED"  # the logs were streamed (to stderr) to the end
    client = JobSubmissionClient(address)
    summary = _last_json(client.get_job_logs(job_id))
    assert read_checkpoint_meta(summary["checkpoint"])["step"] == 4
    assert Path(summary["checkpoint"]).is_relative_to(runs / "cluster-test")
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", client.get_job_info(job_id).job_id)], detail=True)
    assert len({worker.node_id for worker in workers}) == 2  # the gloo process group spanned the two nodes
