"""Loading a saved pipeline folder the same way everywhere (generate, the MLflow model, evaluation, serving)."""

from __future__ import annotations

import logging
from pathlib import Path

from avsync_ray.devices import loads_model, resolve_device, torch_dtype
from avsync_ray.pipelines.pipeline_avsyncd import AVSyncDPipeline

logger = logging.getLogger(__name__)


class NotAPipelineError(FileNotFoundError):
    """A model path that is not an AVSyncD pipeline folder."""


def check_pipeline_folder(model_dir: str | Path) -> Path:
    """``model_dir`` if it holds a saved AVSyncD pipeline (``model_index.json`` naming ``AVSyncDPipeline``)."""
    import json

    model_dir = Path(model_dir)
    index = model_dir / "model_index.json"
    if not index.is_file():
        reason = "does not exist" if not model_dir.exists() else "has no model_index.json"
        raise NotAPipelineError(f"{model_dir} is not an AVSyncD pipeline folder: it {reason} (make one with avsync init-model, convert-official or export)")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except ValueError as exc:
        raise NotAPipelineError(f"{index} is not valid JSON: {exc}") from None
    if class_name != AVSyncDPipeline.__name__:
        raise NotAPipelineError(f"{model_dir} holds a {class_name}, not an {AVSyncDPipeline.__name__}")
    return model_dir


# What a pipeline folder without a training config (official conversions, init-model) generates: the official
# AVSync15 size.
DEFAULT_FRAME_SIZE = (256, 256)
TRAINING_CONFIG = "training.config.yaml"  # what `avsync export` writes beside the pipeline


def model_frame_size(model_dir: str | Path) -> tuple[int, int]:
    """(height, width) the pipeline in ``model_dir`` was trained at (its exported training config), else the
    official default."""
    import yaml

    saved = Path(model_dir) / TRAINING_CONFIG
    if saved.is_file():
        config = yaml.safe_load(saved.read_text()) or {}
        if config.get("height") and config.get("width"):
            return int(config["height"]), int(config["width"])
    return DEFAULT_FRAME_SIZE


def quiet_loading_bars() -> None:
    """diffusers' and transformers' per-component loading and saving bars are noise on a command's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@loads_model
def load_pipeline(model_dir: str | Path, device: str = "auto", dtype: str = "float32") -> AVSyncDPipeline:
    """An :class:`AVSyncDPipeline` folder (``avsync init-model``, ``convert-official`` or ``export`` output) on
    ``device`` in ``dtype``, with its progress bar off (callers report progress their own way)."""
    target = resolve_device(device)
    quiet_loading_bars()
    pipe = AVSyncDPipeline.from_pretrained(check_pipeline_folder(model_dir), dtype=torch_dtype(dtype), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if dtype == "float16" and target.type == "cpu":  # once, instead of diffusers' warning for every component moved
        logger.warning("dtype=float16 on the CPU: slow, and some operations may fail there; float32 or bfloat16 suit a CPU")
    return pipe.to(target, silence_dtype_warnings=True)
