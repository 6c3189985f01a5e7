"""One runner for the batch jobs on Ray Data (``precompute``, ``eval-sync``, ``eval``), and the actor pools that
curation's model stages use too.

A batch job reads items (shard URLs, or clips), optionally expands each into rows (a shard into its samples),
runs one or more actor stages (one model copy per actor, placed by an :class:`~avsync_ray.config.base.ActorConfig`),
and collects the rows. A row the actors could not process carries an ``error`` (its reason) instead of failing
the job; :func:`split_skipped` separates them, and :func:`log_batch_run` records the job as one MLflow run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ray
import ray.data

from avsync_ray.config.base import ActorConfig, RayConfig, TrackingConfig
from avsync_ray.ray_runtime import actor_request, init_ray, require_resources
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


@dataclass
class BatchJob:
    """Items -> (optional) ``expand`` of each item into rows -> actor stages in order -> the rows."""

    items: list[dict]
    stages: list[ActorStage]
    expand: Callable[[dict], list[dict]] | None = None
    ray_config: RayConfig = field(default_factory=RayConfig)

    def run(self) -> list[dict]:
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
