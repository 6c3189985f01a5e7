"""One runner for the batch jobs on Ray Data (``precompute``, ``eval-sync``, ``eval``), and the actor pools that
curation's model stages use too.

A batch job reads items (shard URLs, or clips), optionally expands each into rows (a shard into its samples),
runs one or more actor stages (one model copy per actor, placed by an :class:`~avsync_ray.config.base.ActorConfig`),
and collects the rows. A row the actors could not process carries an ``error`` (its reason) instead of failing
the job; :func:`split_skipped` separates them, and :func:`log_batch_run` records the job as one MLflow run.

A small job on a local machine runs in this process instead (:func:`run_in_process`, ``ray.in_process``): every
actor process of a pool first imports torch and the models' libraries and loads its models, several seconds of
CPU that a job of a few dozen clips does not earn back on a small machine.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
import ray.data

from avsync_ray.config.base import ActorConfig, BatchJobRayConfig, TrackingConfig
from avsync_ray.errors import InputError
from avsync_ray.ray_runtime import actor_request, init_ray, require_resources, starts_local_ray
from avsync_ray.shards import iter_samples


def actor_pool(actor: ActorConfig) -> ray.data.ActorPoolStrategy:
    """A fixed pool of ``actor.concurrency`` actors, or an autoscaling one for a ``[min, max]`` range."""
    if isinstance(actor.concurrency, int):
        return ray.data.ActorPoolStrategy(size=actor.concurrency)
    low, high = actor.concurrency
    return ray.data.ActorPoolStrategy(min_size=low, max_size=high)


def actor_placement(actor: ActorConfig) -> dict:
    """The Ray Data arguments that place one actor stage: pool, GPUs and CPUs per actor."""
    return {"compute": actor_pool(actor), "num_gpus": actor.num_gpus, "num_cpus": actor.num_cpus}


@dataclass(frozen=True)
class ActorStage:
    """A callable class run by an actor pool over batches of rows (``batch_format="numpy"`` dicts of columns)."""

    cls: type
    kwargs: dict
    actor: ActorConfig
    batch_size: int = 1
    field: str = "actor"  # the config field of ``actor`` (errors name it)


class StageChain:
    """One actor running several stages' callables in order on each batch (:func:`colocated`)."""

    def __init__(self, stages: list[tuple[type, dict]]):
        self.stages = [cls(**kwargs) for cls, kwargs in stages]

    def __call__(self, batch: dict) -> dict:
        for stage in self.stages:
            batch = stage(batch)
        return batch


def colocated(stages: list[ActorStage], actor: ActorConfig, batch_size: int, field: str) -> ActorStage:
    """``stages`` as one actor stage: every actor of one pool holds all of their models and runs a batch through
    each in turn. No stage's pool idles while another is the bottleneck (each actor does whatever work its batch
    has), and rows never travel between pools; the price is each actor holding every stage's models."""
    return ActorStage(StageChain, {"stages": [(stage.cls, stage.kwargs) for stage in stages]}, actor, batch_size, field)


def pool_size(actor: ActorConfig) -> int:
    """The most actors ``actor``'s pool runs at once."""
    return actor.concurrency if isinstance(actor.concurrency, int) else actor.concurrency[1]


def runs_in_process(ray_config: BatchJobRayConfig, actors: list[ActorConfig], size: int | None) -> bool:
    """Whether a job of ``size`` clips or samples (None: not known) runs in this process: as ``ray.in_process``
    says, or when unset, a job on a local Ray whose actors use no GPU and which has at most
    ``ray.in_process_max_size`` clips or samples."""
    if ray_config.in_process is not None:
        return ray_config.in_process
    small = size is not None and size <= ray_config.in_process_max_size
    return small and starts_local_ray(ray_config) and not any(actor.num_gpus for actor in actors)


def _columns(rows: list[dict]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def _rows(columns: dict) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def run_in_process(
    items: list[dict], stages: list[ActorStage], expand: Callable[[dict], Iterable[dict]] | None = None, cpus: int | None = None, progress: bool = False
) -> list[dict]:
    """A batch job in this process, on threads: as many as the largest pool has actors, each holding its own
    instance of every stage (as an actor holds its own models; nothing is shared between threads) and running
    each of its batches through all stages in turn, as one colocated actor would. This thread expands the items
    meanwhile, handing each batch over as soon as its rows are there. The threads share ``cpus`` (default: every
    CPU) out between them (one torch thread each on a 2-core machine with two threads), as Ray gives an actor
    the CPUs it asks for. A stage gets its batch as a dict of columns, as from Ray Data, but of lists rather than
    numpy arrays. A stage's error ends the job (the batches not started are dropped). ``progress``: a bar of the rows
    done (as Ray Data shows its own)."""
    import torch
    from tqdm import tqdm

    threads = max(pool_size(stage.actor) for stage in stages)
    torch_threads = max(1, (cpus or os.cpu_count() or 1) // threads)
    local = threading.local()

    def start_thread() -> None:
        torch.set_num_threads(torch_threads)

    def run_batch(rows: list[dict]) -> list[dict]:
        if not hasattr(local, "stages"):
            local.stages = [stage.cls(**stage.kwargs) for stage in stages]
        for stage, instance in zip(stages, local.stages):
            rows = [row for start in range(0, len(rows), stage.batch_size) for row in _rows(instance(_columns(rows[start : start + stage.batch_size])))]
        return rows

    rows = (row for item in items for row in expand(item)) if expand is not None else iter(items)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="batch-job", initializer=start_thread)
    try:
        with tqdm(desc="in process", unit="row", disable=not progress) as bar:
            done = []
            for batch in iter(lambda: list(itertools.islice(rows, stages[0].batch_size)), []):
                done.append(pool.submit(run_batch, batch))
                done[-1].add_done_callback(lambda _, n=len(batch): bar.update(n))
            return [row for future in done for row in future.result()]
    finally:  # after an error (or Ctrl-C) the batches not started are dropped, not worked through
        pool.shutdown(cancel_futures=True)


def _require_gpus_here(stages: list[ActorStage]) -> None:
    """Refuse, naming the setting, a job run in process whose actors need a GPU (by ``num_gpus`` or a CUDA
    ``device``, as :func:`~avsync_ray.ray_runtime.actor_request` reads them) on a machine that has none."""
    import torch

    for stage in stages:
        asks = actor_request(stage.field, stage.actor).fields.get("GPU")
        if asks and not torch.cuda.is_available():
            raise InputError(f"{asks}: this machine has no GPU, and ray.in_process runs the job here (set it to false to run on the cluster, "
                             "or ask for no GPU)")  # fmt: skip


@dataclass
class BatchJob:
    """Items -> (optional) ``expand`` of each item into rows -> actor stages in order -> the rows. ``size``: the
    clips or samples the job will process, if known (a small job on a local machine runs in this process:
    :func:`runs_in_process`)."""

    items: list[dict]
    stages: list[ActorStage]
    expand: Callable[[dict], Iterable[dict]] | None = None
    ray_config: BatchJobRayConfig = field(default_factory=BatchJobRayConfig)
    size: int | None = None

    @property
    def in_process(self) -> bool:
        return runs_in_process(self.ray_config, [stage.actor for stage in self.stages], self.size)

    def run(self) -> list[dict]:
        if self.in_process:
            _require_gpus_here(self.stages)
            progress = sys.stderr.isatty() if self.ray_config.progress_bars is None else self.ray_config.progress_bars
            return run_in_process(self.items, self.stages, self.expand, self.ray_config.num_cpus, progress) if self.items else []
        init_ray(self.ray_config)
        require_resources([actor_request(stage.field, stage.actor) for stage in self.stages], self.ray_config)
        if not self.items:
            return []
        dataset = ray.data.from_items(self.items, override_num_blocks=len(self.items))
        if self.expand is not None:
            dataset = dataset.flat_map(self.expand)
        for stage in self.stages:
            # Blocks of one batch each: an item's rows (a shard's clips) are spread over the pool's actors and flow to
            # the next stage batch by batch, instead of travelling as one block that one actor works through alone.
            dataset = dataset.repartition(target_num_rows_per_block=stage.batch_size).map_batches(
                stage.cls, fn_constructor_kwargs=stage.kwargs, batch_size=stage.batch_size, **actor_placement(stage.actor)
            )
        return dataset.take_all()


def shard_sample_rows(item: dict) -> list[dict]:
    """``expand`` for jobs over shard samples: ``{"url": shard}`` -> one row per sample, its members as columns
    (``__key__`` becomes ``key``)."""
    rows = []
    for sample in iter_samples([item["url"]]):
        rows.append({"key": sample["__key__"], **{name: value for name, value in sample.items() if not name.startswith("__")}})
    return rows


def split_skipped(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows that were processed, ``{"key", "reason"}`` of rows whose ``error`` is set)."""
    done = [row for row in rows if not row.get("error")]
    skipped = [{"key": row.get("key"), "reason": row["error"]} for row in rows if row.get("error")]
    return done, skipped


def log_batch_run(tracking: TrackingConfig, task: str, params: dict, metrics: dict[str, float], texts: dict[str, str]) -> str | None:
    """The job's one MLflow run (None when tracking is off); see :func:`avsync_ray.tracking.log_job_run`."""
    if not tracking.enabled:
        return None
    from avsync_ray.tracking import log_job_run

    return log_job_run(tracking, task, params, {k: v for k, v in metrics.items() if v is not None}, texts)
