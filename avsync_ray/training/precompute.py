"""``avsync precompute``: the Ray Data job that writes a copy of the shards with the frozen encoders' outputs
of fixed training windows added (what they are and how training reads them: :mod:`avsync_ray.training.features`)."""

from __future__ import annotations

import json

from avsync_ray.batch_jobs import ActorStage, BatchJob, log_batch_run
from avsync_ray.config.base import dump_config
from avsync_ray.config.train import PrecomputeConfig
from avsync_ray.shards import index_uri, read_index, write_index
from avsync_ray.storage import join_uri
from avsync_ray.training.features import FEATURES_KEY, ShardPrecomputer, features_descriptor


def run_precompute(config: PrecomputeConfig) -> dict:
    """Featurize every shard of ``config.input`` into ``config.output`` and commit the new index; returns a
    summary (and logs it to MLflow)."""
    source = read_index(config.input.root, config.input.split)
    if config.output.rstrip("/") == config.input.root.rstrip("/"):
        raise ValueError("precompute writes new shards: choose an output folder other than the input")
    rows = [
        {"in_url": join_uri(config.input.root, entry["url"]), "out_url": join_uri(config.output, entry["url"]), "nsamples": entry["nsamples"]}
        for entry in source["shardlist"]
    ]
    stage = ActorStage(ShardPrecomputer, {"config": config.model_dump(mode="json")}, config.actor, batch_size=1)
    results = BatchJob(items=rows, stages=[stage], ray_config=config.ray, size=sum(row["nsamples"] for row in rows)).run()
    fingerprints = {row["encoders"] for row in results}
    if len(fingerprints) != 1:
        raise RuntimeError(f"the encoding actors built {len(fingerprints)} different encoders; check model.init and seed")
    entries = sorted((json.loads(row["entry"]) for row in results), key=lambda entry: entry["url"])
    skipped = [item for entry in entries for item in entry.pop("skipped")]
    inherited = {k: v for k, v in source.items() if k not in ("shardlist", "nsamples", "name", FEATURES_KEY, "skipped_samples")}
    index = write_index(
        config.output,
        config.input.split,
        [entry for entry in entries if entry["nsamples"]],  # a shard left empty is not committed (and is removed)
        {
            **inherited,
            FEATURES_KEY: features_descriptor(config, fingerprints.pop()),
            "source": {"root": config.input.root, "split": config.input.split},
            "skipped_samples": skipped,
        },
    )
    summary = {
        "output": config.output,
        "index": index_uri(config.output, config.input.split),
        "shards": len(index["shardlist"]),
        "samples": index["nsamples"],
        "skipped": len(skipped),
        "bytes": sum(entry["filesize"] for entry in index["shardlist"]),
        "features": index[FEATURES_KEY],
    }
    summary["mlflow_run_id"] = log_batch_run(
        config.tracking,
        "precompute",
        params={"input": config.input.root, "output": config.output, **{k: v for k, v in summary["features"].items() if k != "encoders"}},
        metrics={k: summary[k] for k in ("shards", "samples", "skipped", "bytes")},
        texts={"config.yaml": dump_config(config), "skipped_samples.json": json.dumps(skipped, indent=1)},
    )
    return summary
