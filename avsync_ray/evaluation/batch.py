"""The evaluation jobs on Ray Data (the only evaluation module that imports Ray): each runs the actors of the pure
evaluation modules over test shards with :mod:`avsync_ray.batch_jobs` and logs one MLflow run."""

from __future__ import annotations

import json

from avsync_ray.batch_jobs import ActorStage, BatchJob, log_batch_run, shard_sample_rows
from avsync_ray.config import EvalSyncConfig
from avsync_ray.evaluation.sync_eval import SyncEvaluator, eval_spec, summarize
from avsync_ray.shards import shard_urls
from avsync_ray.storage import write_json_atomic


def run_eval_sync(config: EvalSyncConfig, out: str | None = None) -> dict:
    """Score every clip of the test shards; returns (and logs to MLflow, writes to ``out``) the summary."""
    job = BatchJob(
        items=[{"url": url} for url in shard_urls(config.data.root, config.data.split)],
        expand=shard_sample_rows,
        stages=[ActorStage(SyncEvaluator, {"classifier": config.classifier, "actor": config.actor, "spec": eval_spec(config),
                                           "tolerance": config.tolerance}, config.actor, config.batch_size)],  # fmt: skip
        ray_config=config.ray,
    )
    results = sorted(job.run(), key=lambda row: row["key"])
    summary = {"classifier": config.classifier, "shards": config.data.root, "split": config.data.split, **summarize(results)}
    summary["protocol"] = {"num_clips": config.num_clips, "shift_s": config.shift_s, "tolerance": config.tolerance}
    summary["mlflow_run_id"] = log_batch_run(
        config.tracking,
        "eval-sync",
        params={"classifier": config.classifier, "shards": config.data.root, "split": config.data.split, **summary["protocol"]},
        metrics={k: summary[k] for k in ("a2v_accuracy", "v2a_accuracy", "clips", "skipped")},
        texts={"eval_sync_per_clip.json": json.dumps(results, indent=1)},
    )
    if out:
        write_json_atomic(out, {**summary, "per_clip": results})
    return summary
