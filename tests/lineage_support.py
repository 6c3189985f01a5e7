"""An MLflow store with lineage, built by the functions each job logs with (no Ray): a curation run with its corpus
as input and its shards as output, a training run that reads the same dataset (same digest), and exports of that run
as LoggedModels at their steps, registered (tests/test_lineage.py, and the serving tests that report lineage)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
from mlflow.tracking import MlflowClient

from avsync_ray.config.base import load_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.lineage import shard_dataset
from avsync_ray.mlflow_models import log_export
from avsync_ray.shards import iter_samples, read_index, read_metadata, shard_stats
from avsync_ray.storage import join_uri, write_json_atomic
from avsync_ray.tracking import TrainingTracker, log_curation_run

REGISTERED = "tiny-avsyncd"  # the registered model of the session's store (conftest.py: lineage_registry)


def _clips(shards: str, index: dict) -> pa.Table:
    """The clip table curation hands to ``shard_stats``, read back from the shards' metadata."""
    metadata = [read_metadata(sample) for sample in iter_samples(join_uri(shards, entry["url"]) for entry in index["shardlist"])]
    return pa.table({"label": [m["label"] for m in metadata], "source_id": [m["source"]["source_id"] for m in metadata],
                     "start": [float(m["span"]["start"]) for m in metadata], "end": [float(m["span"]["end"]) for m in metadata]})  # fmt: skip


def lineage_store(root: Path, shards_root: Path, folders: dict[int, Path], name: str, aliases: dict[str, int]) -> dict:
    """In ``root``: the store ``mlruns.db``; a copy of the shards at ``shards_root`` (train and test splits, as
    ``synthetic_shards`` writes them) with their stats and report, curated by one run; a training run ``tiny-run`` on
    them; and each of ``folders`` (model folder by training step) exported from that run at its step (to
    ``export-step-<step>``, its ``lineage.json`` written) and registered as ``name``, in step order (so versions 1, 2,
    ...; the last one has the alias ``candidate``), with ``aliases`` (alias: version) set."""
    uri = f"sqlite:///{root}/mlruns.db"
    shards = str(root / "shards")
    shutil.copytree(shards_root, shards)
    index = read_index(shards, "train")
    stats = shard_stats(index, _clips(shards, index))
    write_json_atomic(f"{shards}/train.stats.json", stats)
    (root / "shards" / "report").mkdir()
    (root / "shards" / "report" / "report.md").write_text("# curation\n")

    # Curation: what run_curation hands to log_curation_run, for the synthetic shards.
    sources = [{"uri": f"{root}/corpus/sync/{i}.mp4", "source_id": f"sync-s0-{i:05d}", "label": "sync"} for i in range(8)]
    curate = load_config(CurateConfig, "curate", values={
        "input": str(root / "corpus"), "output": shards, "tracking.uri": uri, "filters.semantic.enabled": False,
        "filters.imagebind.enabled": False, "filters.sync.enabled": False,
    })  # fmt: skip
    report = {"skipped_rules": ["semantic_diff", "ia", "it", "psync_a2v", "psync_v2a"], "funnel": {"windows": 8}, "stats": stats}
    curation = log_curation_run(curate, report, {"videos": 8, "skipped_inputs": {}}, index, "input: corpus\n", sources)

    # Training: rank 0's tracker, as the training loop opens it.
    steps = max(folders)
    tracker = TrainingTracker(uri, "avsync/avsyncd", "tiny-run", "avsyncd", {"max_steps": steps}, f"max_steps: {steps}\n",
                              dataset=shard_dataset(shards, "train"))  # fmt: skip
    for step in range(1, steps + 1):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    tracker.finish()

    # `avsync export --register` of each checkpoint.
    exports = {}
    for step, source in sorted(folders.items()):
        folder = root / f"export-step-{step}"
        shutil.copytree(source, folder)
        summary = {"task": "avsyncd", "step": step, "out": str(folder), "mlflow_run_id": tracker.run_id}
        exports[step] = {"folder": folder, **log_export(summary, uri, register=name)}
    for alias, version in aliases.items():
        MlflowClient(uri).set_registered_model_alias(name, alias, str(version))
    return {"uri": uri, "root": root, "shards": shards, "curation": curation, "training": tracker.run_id, "exports": exports}
