"""``avsync export``: a training checkpoint (DeepSpeed shards of any ZeRO stage) -> a diffusers/safetensors folder
that ``AVSyncDPipeline.from_pretrained`` or ``SyncClassifier.from_pretrained`` loads, rebuilt from the resolved
config the checkpoint carries."""

from __future__ import annotations

from pathlib import Path

from avsync_ray.config.base import save_config
from avsync_ray.config.train import TrainConfig, TrainSyncConfig
from avsync_ray.pipelines.loading import TRAINING_CONFIG, quiet_loading_bars
from avsync_ray.storage import local_folder
from avsync_ray.training.components import build_avsyncd_pipeline, build_sync_classifier
from avsync_ray.training.engine import consolidated_state_dict, read_checkpoint_meta

CLASSIFIER_PREFIX = "classifier."  # the engine wraps the classifier (training.loops.PairwiseScores)


def export_checkpoint(checkpoint: str, out: str | Path) -> dict:
    """Write the trained model of ``checkpoint`` (a folder, any fsspec URI) to ``out``; returns a summary.

    AVSyncD: the whole pipeline, its frozen parts rebuilt as training built them (so the paths in the
    checkpoint's config must still resolve). Classifier: the SyncClassifier folder."""
    out = Path(out)
    with local_folder(checkpoint) as folder:
        meta = read_checkpoint_meta(folder)
        state = consolidated_state_dict(folder)
    task = meta["task"]
    quiet_loading_bars()
    if task == "sync-classifier":
        config = TrainSyncConfig.model_validate(meta["config"])
        model = build_sync_classifier(config.model, load_weights=False)
        unexpected = [k for k in state if not k.startswith(CLASSIFIER_PREFIX)]
        if unexpected:
            raise ValueError(f"{checkpoint} is not a classifier checkpoint: keys {unexpected[:3]} lack the '{CLASSIFIER_PREFIX}' prefix")
        model.load_state_dict({k[len(CLASSIFIER_PREFIX) :]: v for k, v in state.items()}, strict=True)
        model.save_pretrained(out)
    elif task == "avsyncd":
        config = TrainConfig.model_validate(meta["config"])
        pipe = build_avsyncd_pipeline(config.model, config.seed)
        pipe.unet.load_state_dict(state, strict=True)
        pipe.save_pretrained(out, safe_serialization=True)
    else:
        raise ValueError(f"unknown task {task!r} in {checkpoint}")
    save_config(config, out / TRAINING_CONFIG)
    tracking_uri = config.tracking.uri if config.tracking.enabled else None  # the store of the training run
    return {"task": task, "step": meta["step"], "checkpoint": str(checkpoint), "out": str(out), "mlflow_run_id": meta.get("mlflow_run_id"),
            "tracking_uri": tracking_uri}  # fmt: skip
