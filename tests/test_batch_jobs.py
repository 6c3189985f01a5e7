"""A batch job run in process (``ray.in_process``): when it is chosen, every row through every stage exactly once
in batches of each stage's size, one instance of the stages per thread, the CPUs shared out as torch threads, rows
handed over while the items are still being expanded, a stage's error raised and the batches not started dropped,
GPUs refused where there are none; and every loader a batch job's stage calls holds the model-loading lock
(building a model is not thread-safe)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from avsync_ray import devices
from avsync_ray.batch_jobs import ActorStage, BatchJob, run_in_process, runs_in_process
from avsync_ray.config.base import ActorConfig, BatchJobRayConfig
from avsync_ray.errors import InputError


class Recorder:
    """A stage that records which thread built it and ran each of its batches."""

    built: list[Recorder] = []

    def __init__(self, name: str, fail_on: int | None = None):
        self.name, self.fail_on, self.thread, self.calls = name, fail_on, threading.current_thread(), []
        Recorder.built.append(self)

    def __call__(self, batch: dict) -> dict:
        self.calls.append((threading.current_thread(), len(batch["x"]), torch.get_num_threads()))
        if self.fail_on in batch["x"]:
            raise RuntimeError(f"row {self.fail_on} is bad")
        return {"x": list(batch["x"]), "seen": [f"{seen}{self.name}" for seen in batch["seen"]]}


def _stage(name: str, batch_size: int, concurrency: int = 1, **kwargs) -> ActorStage:
    return ActorStage(Recorder, {"name": name, **kwargs}, ActorConfig(concurrency=concurrency), batch_size)


@pytest.fixture(autouse=True)
def _fresh_recorder():
    Recorder.built = []


@pytest.mark.parametrize(
    ("ray_config", "actors", "size", "expected"),
    [
        (BatchJobRayConfig(), [ActorConfig()], 32, True),  # a local Ray, CPU actors, a small job
        (BatchJobRayConfig(), [ActorConfig()], 33, False),
        (BatchJobRayConfig(), [ActorConfig()], None, False),  # size not known
        (BatchJobRayConfig(in_process_max_size=100), [ActorConfig()], 33, True),
        (BatchJobRayConfig(), [ActorConfig(), ActorConfig(num_gpus=0.5)], 4, False),
        (BatchJobRayConfig(address="auto"), [ActorConfig()], 4, False),
        (BatchJobRayConfig(in_process=True), [ActorConfig(num_gpus=1)], None, True),
        (BatchJobRayConfig(in_process=False), [ActorConfig()], 1, False),
    ],
)
def test_a_small_cpu_job_on_a_local_ray_runs_in_process(ray_config, actors, size, expected):
    assert runs_in_process(ray_config, actors, size) is expected


def test_inside_a_ray_job_a_small_job_still_goes_to_the_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert not runs_in_process(BatchJobRayConfig(), [ActorConfig()], 4)


def test_every_row_goes_once_through_every_stage_in_its_batches_one_instance_per_thread():
    """Two threads (the larger pool), each with its own instance of both stages, built and called on that thread
    only; every row through both stages once, in batches of at most each stage's size; one torch thread each of
    the 2 CPUs."""
    items, torch_threads = [{"n": n} for n in range(5)], torch.get_num_threads()

    def expand(item: dict):
        return [{"x": item["n"] * 10 + k, "seen": ""} for k in range(item["n"])]  # 0 + 1 + 2 + 3 + 4 = 10 rows

    rows = run_in_process(items, [_stage("a", 3, concurrency=2), _stage("b", 2)], expand, cpus=2)
    assert sorted(row["x"] for row in rows) == sorted(n * 10 + k for n in range(5) for k in range(n))
    assert {row["seen"] for row in rows} == {"ab"}
    assert len(Recorder.built) <= 4 and {r.name for r in Recorder.built} == {"a", "b"}
    for stage in Recorder.built:
        assert all(thread is stage.thread for thread, _, _ in stage.calls)
        assert all(size <= {"a": 3, "b": 2}[stage.name] for _, size, _ in stage.calls)
        assert all(threads == 1 for _, _, threads in stage.calls)
    assert sum(size for r in Recorder.built if r.name == "a" for _, size, _ in r.calls) == 10
    assert sum(size for r in Recorder.built if r.name == "b" for _, size, _ in r.calls) == 10
    threads = {r.thread for r in Recorder.built}
    assert threading.current_thread() not in threads and len(threads) <= 2
    assert len([r for r in Recorder.built if r.name == "a"]) == len(threads)  # one instance per thread that worked
    assert torch.get_num_threads() == torch_threads  # the calling thread's own setting is left alone


def test_the_first_batch_runs_while_the_items_are_still_being_expanded():
    """The expansion (the eval job's decoding) goes on in the calling thread while the pool works on the rows
    already expanded: here the last row is only expanded once a stage has seen the first batch."""
    first_batch_seen, waited = threading.Event(), []

    class Signal(Recorder):
        def __call__(self, batch: dict) -> dict:
            first_batch_seen.set()
            return super().__call__(batch)

    def expand(item: dict):
        yield {"x": 0, "seen": ""}
        waited.append(first_batch_seen.wait(timeout=30))
        yield {"x": 1, "seen": ""}

    rows = run_in_process([{}], [ActorStage(Signal, {"name": "s"}, ActorConfig(), 1)], expand)
    assert waited == [True] and sorted(row["x"] for row in rows) == [0, 1]


class SlowAfterTheFirst(Recorder):
    def __call__(self, batch: dict) -> dict:
        if self.calls:
            time.sleep(1.0)
        return super().__call__(batch)


def test_a_stages_error_ends_the_job_and_the_batches_not_started_are_dropped():
    """The first batch fails; the one thread is then 1 s into the second, and the other eight never start."""
    with pytest.raises(RuntimeError, match="row 0 is bad"):
        run_in_process([{"x": n, "seen": ""} for n in range(10)], [ActorStage(SlowAfterTheFirst, {"name": "a", "fail_on": 0}, ActorConfig(), 1)])
    (stage,) = Recorder.built
    assert len(stage.calls) <= 3


@pytest.mark.parametrize(("actor", "named"), [(ActorConfig(num_gpus=1), r"feature_actor\.num_gpus=1"), (ActorConfig(device="cuda"), r"feature_actor\.device=cuda")])
def test_a_job_in_process_asking_for_a_gpu_this_machine_lacks_is_refused_naming_the_setting(monkeypatch, actor, named):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stage = ActorStage(Recorder, {"name": "a"}, actor, 1, "feature_actor")
    job = BatchJob(items=[{"x": 1, "seen": ""}], stages=[stage], ray_config=BatchJobRayConfig(in_process=True))
    with pytest.raises(InputError, match=rf"{named}: this machine has no GPU"):
        job.run()
    assert not Recorder.built


def test_every_loader_a_batch_jobs_stage_calls_holds_the_model_loading_lock(monkeypatch, tmp_path, tiny_model_dir):
    """Threads of one process each load their own models (a job in process): every loader the eval, eval-sync and
    precompute stages call must build its modules under the lock (diffusers' loaders patch torch.nn process-wide)."""
    from avsync_ray.config.train import AVSyncDModelSettings
    from avsync_ray.models.feature_networks import load_fid_inception, load_i3d, write_tiny_feature_networks
    from avsync_ray.models.imagebind import ImageBind
    from avsync_ray.models.sync_classifier import SyncClassifier, load_sync_classifier
    from avsync_ray.pipelines.loading import load_pipeline
    from avsync_ray.training.components import build_frozen_encoders

    class CountingLock:
        entered = 0

        def __enter__(self):
            CountingLock.entered += 1

        def __exit__(self, *exc):
            return False

    networks = write_tiny_feature_networks(tmp_path / "networks")
    SyncClassifier(image_size=32, base_width=4).save_pretrained(tmp_path / "classifier")
    monkeypatch.setattr(devices, "MODEL_LOADING_LOCK", CountingLock())
    loaders = [
        lambda: load_fid_inception(networks["fid_inception"]),
        lambda: load_i3d(networks["i3d"]),
        lambda: ImageBind.from_checkpoint(networks["imagebind"], "imagebind-tiny"),
        lambda: load_sync_classifier(tmp_path / "classifier"),
        lambda: load_pipeline(tiny_model_dir, "cpu"),
        lambda: build_frozen_encoders(AVSyncDModelSettings(init="tiny")),
    ]
    for number, load in enumerate(loaders, 1):
        load()
        assert CountingLock.entered >= number, f"loader {number} does not hold the lock"
        CountingLock.entered = number
