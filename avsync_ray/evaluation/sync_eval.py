"""``avsync eval-sync``: the classifier's synchronisation accuracy on test shards (reference §7.4).

Per test clip: K clips (31) ``shift`` s (0.04) apart, centred; the centre audio scored against every video
(a2v) and the centre video against every audio (v2a); correct when the argmax is within ``tolerance`` (5) clips
of the centre. Accuracies are over unique clips. A clip that cannot be decoded or is too short is recorded with
its reason and left out of the accuracies. The Ray Data job that runs :class:`SyncEvaluator` actors over the
shards is :func:`avsync_ray.evaluation.batch.run_eval_sync`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from avsync_ray.config.base import ActorConfig
from avsync_ray.config.evaluate import EvalSyncConfig
from avsync_ray.devices import resolve_device, torch_dtype
from avsync_ray.examples import SAMPLE_ERRORS, sync_sample
from avsync_ray.media.clips import MultiClipSpec
from avsync_ray.metrics.sync_metrics import sync_accuracy
from avsync_ray.models.sync_classifier import load_sync_classifier


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

    def __init__(self, classifier: str, actor: ActorConfig, spec: MultiClipSpec, tolerance: int):
        self.classifier = load_sync_classifier(classifier, resolve_device(actor.device, actor.num_gpus), torch_dtype(actor.dtype))
        self.spec, self.tolerance = spec, tolerance

    def __call__(self, batch: dict) -> dict:
        samples = [{"__key__": k, "mp4": m, "wav": w, "json": j} for k, m, w, j in zip(batch["key"], batch["mp4"], batch["wav"], batch["json"])]
        rows = score_samples(self.classifier, samples, self.spec, self.tolerance)
        return {name: [row[name] for row in rows] for name in rows[0]}
