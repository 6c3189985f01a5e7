"""``avsync eval-sync``: the classifier's synchronisation accuracy on test shards (reference §7.4).

Per test clip: K clips (31) ``shift`` s (0.04) apart, centred; the centre audio scored against every video
(a2v) and the centre video against every audio (v2a); correct when the argmax is within ``tolerance`` (5) clips
of the centre. Accuracies are over unique clips. The scoring is a Ray Data actor pool over the shards; a clip
that cannot be decoded or is too short is recorded with its reason and left out of the accuracies.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import torch

from avsync_ray.config import EvalSyncConfig
from avsync_ray.evaluation.sync_metrics import sync_accuracy
from avsync_ray.media.clips import MultiClipSpec
from avsync_ray.training.data import SAMPLE_ERRORS, shard_urls, sync_sample


def eval_spec(config: EvalSyncConfig) -> MultiClipSpec:
    return MultiClipSpec(num_clips=config.num_clips, shift=config.shift_s, placement="center")


@torch.no_grad()
def score_samples(classifier, samples: list[dict], spec: MultiClipSpec, tolerance: int) -> list[dict]:
    """One result row per shard sample: ``a2v_correct``/``v2a_correct`` and the predicted clip indices, or an
    ``error`` reason (the sample then has no verdict)."""
    rows, inputs = [], []
    for raw in samples:
        row = {"key": raw["__key__"], "a2v_correct": None, "v2a_correct": None, "a2v_pred": None, "v2a_pred": None, "error": None}
        try:
            inputs.append(sync_sample(raw, np.random.default_rng(0), spec=spec, image_size=classifier.config.image_size, randflip=False))
        except SAMPLE_ERRORS as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    if inputs:
        device, dtype = classifier.device, classifier.dtype
        mel = torch.stack([i["mel"] for i in inputs]).to(device, dtype)
        video = torch.stack([i["video"] for i in inputs]).to(device, dtype)
        scores = classifier.score_matrix(mel, video).float().cpu()
        accuracy = sync_accuracy(scores, tolerance)
        center = spec.center_index
        verdicts = zip(accuracy.a2v_correct.tolist(), accuracy.v2a_correct.tolist(), scores[:, center, :].argmax(1).tolist(), scores[:, :, center].argmax(1).tolist())
        for row, (a2v, v2a, a2v_pred, v2a_pred) in zip([r for r in rows if r["error"] is None], verdicts):
            row.update(a2v_correct=a2v, v2a_correct=v2a, a2v_pred=a2v_pred, v2a_pred=v2a_pred)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Accuracies over unique keys (a key seen twice counts once), plus the skipped clips by reason."""
    unique = {row["key"]: row for row in rows}
    scored = [row for row in unique.values() if row["error"] is None]
    skipped = [row for row in unique.values() if row["error"] is not None]
    return {
        "clips": len(scored),
        "a2v_accuracy": float(np.mean([row["a2v_correct"] for row in scored])) if scored else None,
        "v2a_accuracy": float(np.mean([row["v2a_correct"] for row in scored])) if scored else None,
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(row["error"].split(":")[0] for row in skipped)),
    }


class SyncEvaluator:
    """Ray Data actor: loads the classifier once, scores batches of shard samples."""

    def __init__(self, classifier: str, device: str, spec: MultiClipSpec, tolerance: int):
        from avsync_ray.evaluation.pair_metrics import load_sync_classifier
        from avsync_ray.generate import resolve_device

        self.classifier = load_sync_classifier(classifier, str(resolve_device(device)))
        self.spec, self.tolerance = spec, tolerance

    def __call__(self, batch: dict) -> dict:
        samples = [{"__key__": k, "mp4": m, "wav": w, "json": j} for k, m, w, j in zip(batch["key"], batch["mp4"], batch["wav"], batch["json"])]
        rows = score_samples(self.classifier, samples, self.spec, self.tolerance)
        return {name: [row[name] for row in rows] for name in rows[0]}


def _shard_rows(item: dict) -> list[dict]:
    from avsync_ray.curation.shards import read_tar

    return [{"key": s["__key__"], "mp4": s["mp4"], "wav": s["wav"], "json": s["json"]} for s in read_tar(item["url"])]


def run_eval_sync(config: EvalSyncConfig, out: str | None = None) -> dict:
    """Score every clip of the test shards; returns (and logs to MLflow, writes to ``out``) the summary."""
    import ray

    from avsync_ray.ray_runtime import init_ray
    from avsync_ray.storage import write_json_atomic

    init_ray(config.ray)
    urls = shard_urls(config.data.root, config.data.split)
    dataset = ray.data.from_items([{"url": url} for url in urls]).flat_map(_shard_rows)
    results = dataset.map_batches(
        SyncEvaluator,
        fn_constructor_kwargs={"classifier": config.classifier, "device": config.device, "spec": eval_spec(config), "tolerance": config.tolerance},
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        num_gpus=config.num_gpus,
        num_cpus=None if config.num_gpus else 1,
    ).take_all()
    summary = {"classifier": config.classifier, "shards": config.data.root, "split": config.data.split, **summarize(results)}
    summary["protocol"] = {"num_clips": config.num_clips, "shift_s": config.shift_s, "tolerance": config.tolerance}
    if config.tracking.enabled:
        summary["mlflow_run_id"] = _log_eval(config, summary, results)
    if out:
        write_json_atomic(out, {**summary, "per_clip": sorted(results, key=lambda r: r["key"])})
    return summary


def _log_eval(config: EvalSyncConfig, summary: dict, rows: list[dict]) -> str:
    from avsync_ray.tracking import log_job_run

    return log_job_run(
        config.tracking,
        "eval-sync",
        params={"classifier": config.classifier, "shards": config.data.root, "split": config.data.split, **summary["protocol"]},
        metrics={k: summary[k] for k in ("a2v_accuracy", "v2a_accuracy", "clips", "skipped") if summary[k] is not None},
        texts={"eval_sync_per_clip.json": json.dumps(sorted(rows, key=lambda r: r["key"]), indent=1)},
    )
