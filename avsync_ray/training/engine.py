"""DeepSpeed: the engine config from the typed config, the engine itself, its checkpoints, and their export.

Only the trainable module goes through ``deepspeed.initialize``, with a client ``torch.optim.AdamW`` over its
trainable parameters (torch's own kernels, fused on CUDA; no DeepSpeed compiled ops, so the same code runs on CPU
with gloo and on GPUs), optionally ``torch.compile``-d inside the engine.
Checkpoints are DeepSpeed's own layout plus ``avsync_checkpoint.json`` (task, step, resolved config, MLflow
run id, and the settings a resume must not change). A ZeRO checkpoint resumes on another number of workers
through DeepSpeed's universal checkpoint format (:func:`to_universal`; the engine then loads with
``checkpoint.load_universal``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from avsync_ray.config.train import OptimizerConfig, TrainCommonConfig
from avsync_ray.errors import InputError
from avsync_ray.storage import exists, filesystem, join_uri, local_folder, read_json, uri_prefix

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


def deepspeed_config(config: TrainCommonConfig, world_size: int, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config: ZeRO stage and buckets, bf16 or fp32, clipping, accumulation, batch sizes; with
    ``load_universal``, the checkpoint to load is in DeepSpeed's universal format."""
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
        **({"checkpoint": {"load_universal": True}} if load_universal else {}),
    }


def adamw(parameters: list[torch.nn.Parameter], settings: OptimizerConfig) -> torch.optim.AdamW:
    """torch's AdamW with the configured kernels (``optimizer.implementation``; auto: fused on CUDA, where it is one
    kernel per step, and foreach on CPU). All three compute the same update."""
    implementation = settings.implementation
    if implementation == "auto":
        implementation = "fused" if torch.cuda.is_available() else "foreach"
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False, "fused": False}}[implementation]
    return torch.optim.AdamW(parameters, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay, eps=settings.eps, **kernels)


def initialize(model: torch.nn.Module, config: TrainCommonConfig, world_size: int, compile_backend: str = "inductor", load_universal: bool = False):
    """Wrap ``model`` in a DeepSpeed engine with AdamW over its trainable parameters and the config's schedule
    (constant, or constant after a linear warm-up, stepped once per optimizer step). With ``deepspeed.compile``
    the module's forward (and so its backward) runs through ``torch.compile`` with ``compile_backend`` (one
    graph, static shapes: the first step compiles, for minutes). ``load_universal``: the engine will load a
    universal checkpoint (:func:`to_universal`)."""
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
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=deepspeed_config(config, world_size, load_universal), dist_init_required=False
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


def check_resume(meta: dict, config: TrainCommonConfig, task: str) -> bool:
    """Raise :class:`IncompatibleResumeError` naming every setting the config changes against the checkpoint.
    Returns whether the checkpoint must first become a universal one: a ZeRO run resumed on another number of
    workers (its optimizer states are partitioned over the old count)."""
    saved, wanted = meta["signature"], resume_signature(config, task)
    regroup = bool(meta.get("universal")) or "scaling.num_workers" in saved and saved.get("scaling.num_workers") != wanted.get("scaling.num_workers")
    changes = [
        f"{key}: checkpoint has {saved.get(key)!r}, config has {value!r}"
        for key, value in wanted.items()
        if saved.get(key) != value and not (key == "scaling.num_workers" and regroup)
    ]
    if changes:
        raise IncompatibleResumeError(
            f"cannot resume from the checkpoint of step {meta['step']}:\n  " + "\n  ".join(changes)
            + "\nrestore these settings, or start a new run (another run.name, without run.resume)"
        )  # fmt: skip
    return regroup and not meta.get("universal")


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(engine, directory: str | Path, step: int, meta: dict) -> None:
    """Every rank writes its DeepSpeed shards to ``directory``; rank 0 adds :data:`CHECKPOINT_META`."""
    engine.save_checkpoint(str(directory), tag=checkpoint_tag(step), client_state={"step": step})
    if engine.global_rank == 0:
        (Path(directory) / CHECKPOINT_META).write_text(json.dumps({**meta, "step": step, "tag": checkpoint_tag(step)}, indent=2))


def to_universal(checkpoint: str, output: str) -> str:
    """Convert a ZeRO checkpoint (any fsspec URI) into DeepSpeed's universal format, loadable on any number of
    workers, as the checkpoint folder ``output``: the converted tag (``<tag>_universal``) and this package's meta
    (``universal: true``, the source's URI). An ``output`` that already holds the conversion is reused. Uses
    DeepSpeed's ``ds_to_universal`` (one process; ``inject_missing_state`` supplies the parameter layout that
    Megatron models record and plain modules do not). Returns ``output``."""
    if exists(join_uri(output, CHECKPOINT_META)):
        return output
    meta = read_checkpoint_meta(checkpoint)
    if meta["signature"]["deepspeed.zero_stage"] == 0:
        raise ValueError(f"{checkpoint} is a ZeRO stage 0 checkpoint: it loads on any number of workers as it is")
    setup_deepspeed()
    from deepspeed.checkpoint import ds_to_universal

    tag = f"{meta['tag']}_universal"
    fs, out_path = filesystem(output)
    with local_folder(checkpoint) as source, tempfile.TemporaryDirectory(prefix="avsync-universal-") as work:
        folder = out_path if not uri_prefix(fs) else work
        args = argparse.Namespace(input_folder=os.path.join(source, meta["tag"]), output_folder=os.path.join(folder, tag), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()) as narration, contextlib.redirect_stderr(narration):  # its steps and bars
            ds_to_universal.main(args)
        logger.debug("ds_to_universal: %s", narration.getvalue())
        # The meta goes last: it marks a complete conversion.
        (Path(folder) / CHECKPOINT_META).write_text(json.dumps({**meta, "tag": tag, "universal": True, "converted_from": checkpoint}, indent=2))
        if uri_prefix(fs):
            fs.put(os.path.join(work, tag) + "/", f"{out_path}/{tag}", recursive=True)
            fs.put_file(os.path.join(work, CHECKPOINT_META), f"{out_path}/{CHECKPOINT_META}")
    return output


def run_checkpoint_metas(run_dir: str) -> list[tuple[str, dict]]:
    """(URI, meta) of the run's checkpoints that hold their meta, oldest step first."""
    fs, path = filesystem(run_dir)
    if not fs.exists(path):
        return []
    found = []
    for entry in fs.ls(path, detail=False):
        uri = f"{uri_prefix(fs)}{entry}"
        if entry.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_") and fs.exists(f"{entry}/{CHECKPOINT_META}"):
            found.append((uri, read_checkpoint_meta(uri)))
    return sorted(found, key=lambda found_one: (found_one[1]["step"], found_one[0]))


def run_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, URI) of the run's checkpoints that hold their meta, oldest first."""
    return [(meta["step"], uri) for uri, meta in run_checkpoint_metas(run_dir)]


def uploaded_marker(rank: int) -> str:
    """Written by each rank into its checkpoint once Ray Train has uploaded that rank's files."""
    return f".uploaded-rank-{rank}"


def fully_uploaded(checkpoint: str, meta: dict) -> bool:
    """Every rank of the checkpoint's world has uploaded its files (committed by Ray Train or not)."""
    return "world_size" in meta and all(exists(join_uri(checkpoint, uploaded_marker(rank))) for rank in range(meta["world_size"]))


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
    if meta.get("universal"):
        # A universal load restores the parameters and their optimizer states, not the module's buffers (batch-norm
        # statistics): those come from rank 0's model states, as every rank's do in a load of the same world size.
        saved = torch.load(Path(directory) / meta["tag"] / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
        with torch.no_grad():
            for name, buffer in engine.module.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])
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

        # it prints every step of the merge, and a progress bar per file on stderr
        with contextlib.redirect_stdout(io.StringIO()) as narration, contextlib.redirect_stderr(narration):
            state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=meta["tag"])
        logger.debug("zero_to_fp32: %s", narration.getvalue())
    else:
        model_file = Path(directory) / meta["tag"] / "mp_rank_00_model_states.pt"
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
