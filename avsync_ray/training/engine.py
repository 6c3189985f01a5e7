"""DeepSpeed: the engine config from the typed config, the engine itself, its checkpoints, and their export.

Only the trainable module goes through ``deepspeed.initialize``, with a client ``torch.optim.AdamW`` over its
trainable parameters (torch's own kernels, fused on CUDA; no DeepSpeed compiled ops, so the same code runs on CPU
with gloo and on GPUs), optionally ``torch.compile``-d inside the engine.
Checkpoints are DeepSpeed's own layout plus ``avsync_checkpoint.json`` (task, step, resolved config, MLflow
run id, and the settings a resume must not change).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from avsync_ray.config import OptimizerConfig, TrainCommonConfig
from avsync_ray.errors import InputError
from avsync_ray.storage import exists, join_uri, read_json

CHECKPOINT_META = "avsync_checkpoint.json"
logger = logging.getLogger(__name__)


def setup_deepspeed():
    """Import DeepSpeed for this process, set up for the machine: its accelerator (picked when it is first
    imported; without CUDA it must be told to use the CPU one) and, on CPUs, no shared-memory comm op (DeepSpeed
    would JIT-build it for minutes; gloo collectives work without it). Returns the ``deepspeed`` module."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import deepspeed.ops

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


class IncompatibleResumeError(InputError):
    """The checkpoint was written under settings that this config changes in a way a resume cannot honour."""


def deepspeed_config(config: TrainCommonConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config: ZeRO stage and buckets, bf16 or fp32, clipping, accumulation, batch sizes."""
    settings, optimizer = config.deepspeed, config.optimizer
    zero: dict[str, Any] = {"stage": settings.zero_stage, "reduce_bucket_size": settings.bucket_size}
    if settings.zero_stage in (1, 2):
        zero["allgather_bucket_size"] = settings.bucket_size
    if settings.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = settings.bucket_size
    return {
        "train_micro_batch_size_per_gpu": config.loader.batch_size,
        "gradient_accumulation_steps": optimizer.grad_accum_steps,
        "train_batch_size": config.loader.batch_size * optimizer.grad_accum_steps * world_size,
        "gradient_clipping": optimizer.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": settings.precision == "bf16"},
        "steps_per_print": 2**31 - 1,  # progress goes to MLflow and the Ray logs, not DeepSpeed's prints
        "wall_clock_breakdown": False,
    }


def adamw(parameters: list[torch.nn.Parameter], settings: OptimizerConfig) -> torch.optim.AdamW:
    """torch's AdamW with the configured kernels (``optimizer.implementation``; auto: fused on CUDA, where it is one
    kernel per step, and foreach on CPU). All three compute the same update."""
    implementation = settings.implementation
    if implementation == "auto":
        implementation = "fused" if torch.cuda.is_available() else "foreach"
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False, "fused": False}}[implementation]
    return torch.optim.AdamW(parameters, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay, eps=settings.eps, **kernels)


def initialize(model: torch.nn.Module, config: TrainCommonConfig, world_size: int, compile_backend: str = "inductor"):
    """Wrap ``model`` in a DeepSpeed engine with AdamW over its trainable parameters and the config's schedule
    (constant, or constant after a linear warm-up, stepped once per optimizer step). With ``deepspeed.compile``
    the module's forward (and so its backward) runs through ``torch.compile`` with ``compile_backend`` (one
    graph, static shapes: the first step compiles, for minutes)."""
    from diffusers.optimization import get_scheduler

    deepspeed = setup_deepspeed()
    settings = config.optimizer
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    optimizer = adamw(parameters, settings)
    schedule = "constant_with_warmup" if settings.warmup_steps else "constant"
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=settings.warmup_steps)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=deepspeed_config(config, world_size), dist_init_required=False
    )
    if config.deepspeed.compile:
        # The module's forward, not its call: DeepSpeed's module hooks around it stay eager (they are Python
        # bookkeeping that dynamo cannot trace into the graph), the forward and its backward are one graph each.
        engine.module.forward = torch.compile(engine.module.forward, backend=compile_backend, fullgraph=True, dynamic=False)
    return engine


# ------------------------------------------------------------------------------------------------ checkpoints


def resume_signature(config: TrainCommonConfig, task: str) -> dict[str, Any]:
    """What a checkpoint fixes: the task and model, the optimizer's partitioning and precision (ZeRO stages
    1-3 shard optimizer states over the ranks, so the world size too)."""
    signature = {
        "task": task,
        "model": config.model.model_dump(mode="json", include=_ARCHITECTURE_FIELDS[task]),
        "deepspeed.zero_stage": config.deepspeed.zero_stage,
        "deepspeed.precision": config.deepspeed.precision,
    }
    if config.deepspeed.zero_stage > 0:
        signature["scaling.num_workers"] = config.scaling.num_workers
    return signature


_ARCHITECTURE_FIELDS = {"sync-classifier": {"base_width", "image_size"}, "avsyncd": {"init", "imagebind_preset"}}


def check_resume(meta: dict, config: TrainCommonConfig, task: str) -> None:
    """Raise :class:`IncompatibleResumeError` naming every setting the config changes against the checkpoint."""
    saved, wanted = meta["signature"], resume_signature(config, task)
    changes = [f"{key}: checkpoint has {saved.get(key)!r}, config has {value!r}" for key, value in wanted.items() if saved.get(key) != value]
    if changes:
        raise IncompatibleResumeError(
            f"cannot resume from the checkpoint of step {meta['step']}:\n  " + "\n  ".join(changes)
            + "\nrestore these settings, or start a new run (another run.name, without run.resume)"
        )  # fmt: skip


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(engine, directory: str | Path, step: int, meta: dict) -> None:
    """Every rank writes its DeepSpeed shards to ``directory``; rank 0 adds :data:`CHECKPOINT_META`."""
    engine.save_checkpoint(str(directory), tag=checkpoint_tag(step), client_state={"step": step})
    if engine.global_rank == 0:
        (Path(directory) / CHECKPOINT_META).write_text(json.dumps({**meta, "step": step, "tag": checkpoint_tag(step)}, indent=2))


def read_checkpoint_meta(directory: str | Path) -> dict:
    """The meta of a checkpoint folder (any fsspec URI)."""
    uri = join_uri(str(directory), CHECKPOINT_META)
    if not exists(uri):
        raise FileNotFoundError(f"{directory} is not an avsync training checkpoint ({CHECKPOINT_META} is missing)")
    return read_json(uri)


def load_checkpoint(engine, directory: str | Path) -> dict:
    """Restore weights, optimizer and schedule state; returns the checkpoint's meta."""
    meta = read_checkpoint_meta(directory)
    path, client_state = engine.load_checkpoint(str(directory), tag=meta["tag"], load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None or client_state.get("step") != meta["step"]:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory} (tag {meta['tag']})")
    return meta


def consolidated_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of the trained module from a checkpoint of any ZeRO stage and world size.

    Stages 1-3 keep the fp32 master weights in the optimizer shards (merged by DeepSpeed's ``zero_to_fp32``);
    stage 0 keeps the module's own weights (bf16 runs: their bf16 values). These files are our own runs'
    DeepSpeed checkpoints, which DeepSpeed pickles; only read checkpoints you trust."""
    meta = read_checkpoint_meta(directory)
    if meta["signature"]["deepspeed.zero_stage"] > 0:
        setup_deepspeed()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()) as narration:  # it prints every step of the merge
            state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=meta["tag"])
        logger.debug("zero_to_fp32: %s", narration.getvalue())
    else:
        model_file = Path(directory) / meta["tag"] / "mp_rank_00_model_states.pt"
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
