"""Launch a training run with Ray Train's ``TorchTrainer`` (the driver side of ``avsync train-sync`` / ``train``).

Checkpoints go to ``<run.storage_path>/<run.name>/`` (local or s3://). Ray Train resumes a run from its
newest checkpoint whenever the same name is launched again, so a fresh launch onto a run that already has
checkpoints is refused unless ``run.resume`` says what to do; every resume is checked against the
checkpoint's settings before any worker starts. A ZeRO run resumed on another number of workers (a node lost for
good, or added) continues from its checkpoint converted to DeepSpeed's universal format.
"""

from __future__ import annotations

import logging

from avsync_ray import faults
from avsync_ray.config.train import TrainCommonConfig
from avsync_ray.errors import InputError
from avsync_ray.storage import join_uri
from avsync_ray.training.engine import check_resume, read_checkpoint_meta, run_checkpoints, to_universal

logger = logging.getLogger(__name__)


class RunExistsError(InputError):
    """A new run would silently continue an old one of the same name."""


def resolve_resume(config: TrainCommonConfig, task: str, run_dir: str) -> str | None:
    """Check ``run.resume`` against what exists; returns the checkpoint URI a fresh worker group starts from
    (None: Ray Train's own latest checkpoint of this run, or nothing)."""
    checkpoints = run_checkpoints(run_dir)
    resume = config.run.resume
    if resume is None:
        if checkpoints:
            raise RunExistsError(
                f"run '{config.run.name}' already has checkpoints in {run_dir} (up to step {checkpoints[-1][0]}); "
                "pass --resume latest to continue it, or choose another run.name"
            )
        return None
    if resume == "latest":
        if not checkpoints:
            raise FileNotFoundError(f"--resume latest: run '{config.run.name}' has no checkpoint in {run_dir}")
        latest = checkpoints[-1][1]
        meta = read_checkpoint_meta(latest)
        return _universal(latest, meta, run_dir, config) if check_resume(meta, config, task) else None
    meta = read_checkpoint_meta(resume)
    return _universal(resume, meta, run_dir, config) if check_resume(meta, config, task) else resume


def _universal(checkpoint: str, meta: dict, run_dir: str, config: TrainCommonConfig) -> str:
    """A ZeRO checkpoint (with its ``meta``) resumed on another number of workers: its universal conversion, kept in
    the run folder (``universal-<tag>``; not a Ray Train checkpoint, so never pruned or taken for the run's latest)."""
    target = join_uri(run_dir, f"universal-{meta['tag']}")
    logger.info(
        "resuming step %d of %d workers on %d: converting the checkpoint to DeepSpeed's universal format in %s",
        meta["step"], meta["signature"]["scaling.num_workers"], config.scaling.num_workers, target,
    )  # fmt: skip
    return to_universal(checkpoint, target)


def _checkpoint_uri(root: str, path: str) -> str:
    """Ray reports paths inside its storage filesystem (``bucket/key`` on S3); give them the storage's scheme back."""
    scheme = root.split("://", 1)[0] if "://" in root else None
    return f"{scheme}://{path}" if scheme and not path.startswith(f"{scheme}://") else path


def launch(config: TrainCommonConfig, task: str) -> dict:
    """Train on ``config.scaling.num_workers`` Ray Train workers; returns the final checkpoint and metrics."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from avsync_ray.ray_runtime import ResourceRequest, init_ray, is_verbose, require_resources
    from avsync_ray.training.loops import train_loop_per_worker

    root = config.run.storage_path  # an absolute local path or a URI (config.PathOrURI), as Ray Train wants
    run_dir = join_uri(root, config.run.name)
    resume_from = resolve_resume(config, task, run_dir)
    init_ray(config.ray)
    plan = faults.plan_from_env()  # the crash tests' plan (None in a real run)
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})}
    fields = {"CPU": f"scaling.cpus_per_worker={scaling.cpus_per_worker:g}", "GPU": "scaling.use_gpu=true"}
    workers = ResourceRequest("training worker", resources, fields, scaling.num_workers, f"scaling.num_workers={scaling.num_workers}")
    require_resources([workers], config.ray)  # all workers start together: Ray Train would retry forever
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "task": task,
            "config": config.model_dump(mode="json"),
            "resume_from": resume_from,
            "faults": plan,
            "fault_marker": join_uri(run_dir, ".injected-failure"),
            "run_dir": run_dir,
        },
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=config.run.name,
            storage_path=root,
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            # Ray Train's controller and workers narrate every resource request and checkpoint report; this
            # project logs its own steps and checkpoints
            logging_config=LoggingConfig(log_level="INFO" if is_verbose(config.ray) else "WARNING"),
        ),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return {
        "task": task,
        "run_dir": run_dir,
        "checkpoint": _checkpoint_uri(root, result.checkpoint.path) if result.checkpoint else None,
        "metrics": result.metrics,
        "mlflow": {"tracking_uri": config.tracking.uri, "experiment": config.tracking.experiment} if config.tracking.enabled else None,
    }
