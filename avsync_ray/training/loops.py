"""The per-worker training loop Ray Train runs on every rank, for both tasks.

One linear loop: restore, then for each optimizer step draw ``grad_accum_steps`` micro-batches, forward,
backward and step through the DeepSpeed engine; every ``log_every_n_steps`` reduce the on-device metric sums
across ranks (the only host synchronisation) and log them from rank 0; every ``checkpoint.every_n_steps`` and
at the end every rank saves its DeepSpeed shards and reports them to Ray Train. What differs between the tasks
(model, sample decoding, loss) lives in the two task classes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from functools import partial

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import webdataset as wds
from torch import nn

from avsync_ray import faults
from avsync_ray.config.base import dump_config
from avsync_ray.config.train import TrainCommonConfig, TrainConfig, TrainSyncConfig
from avsync_ray.examples import avsyncd_sample, precomputed_sample, sync_sample
from avsync_ray.media.clips import MultiClipSpec
from avsync_ray.shards import read_index, shard_urls
from avsync_ray.training import engine as ds
from avsync_ray.training.components import build_avsyncd_pipeline, build_sync_classifier
from avsync_ray.training.data import ShardStream, first_example, make_loader, rank_shards
from avsync_ray.training.features import check_features, encoder_fingerprint
from avsync_ray.training.objectives import avsyncd_loss, sample_video_latents, sync_loss, training_scheduler, video_latents

logger = logging.getLogger(__name__)


class PairwiseScores(nn.Module):
    """The classifier as the engine's module: ``forward`` returns the (B, K, K) score matrix, so the engine's
    forward (and its ZeRO hooks) covers every encoder and head call."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        return self.classifier.score_matrix(audio, video)


class SyncClassifierTask:
    name = "sync-classifier"

    def __init__(self, config: TrainSyncConfig, device: torch.device):
        self.config, self.device = config, device
        self.model = PairwiseScores(build_sync_classifier(config.model))
        spec = MultiClipSpec(num_clips=config.clips.num_clips, shift=config.clips.shift_s, placement="random")
        self.make_sample = partial(sync_sample, spec=spec, image_size=config.model.image_size, randflip=config.loader.randflip)

    def loss(self, engine, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dtype = next(engine.module.parameters()).dtype
        out = sync_loss(engine, batch["mel"].to(self.device, dtype), batch["video"].to(self.device, dtype), self.config.clips.tau)
        return out.loss, {"a2v_accuracy": out.a2v_accuracy.detach(), "v2a_accuracy": out.v2a_accuracy.detach()}

    def after_step(self, engine, step: int, tracker) -> None:
        return None


class AVSyncDTask:
    name = "avsyncd"

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config, self.device = config, device
        self.pipe = build_avsyncd_pipeline(config.model, config.seed).to(device)
        self.model = self.pipe.unet
        if config.deepspeed.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.scheduler = training_scheduler()
        self.text_embeds: dict[str, torch.Tensor] = {}
        self.preview = None
        self.decode_sample = partial(avsyncd_sample, num_frames=config.num_frames, fps=config.fps, size=(config.height, config.width))
        if config.precomputed:
            fingerprint = encoder_fingerprint(self.pipe.vae, self.pipe.audio_encoder)
            check_features(read_index(config.data.root, config.data.split), config, fingerprint)
            self.make_sample = partial(precomputed_sample, randflip=config.loader.randflip)
        else:
            self.make_sample = partial(self.decode_sample, randflip=config.loader.randflip)

    @torch.no_grad()
    def _prompt_embeds(self, prompts: list[str]) -> torch.Tensor:
        """CLIP embeddings of the class prompts, computed once per prompt (the official code precomputes them)."""
        for prompt in set(prompts) - set(self.text_embeds):
            self.text_embeds[prompt] = self.pipe.encode_prompt([prompt], self.device)[0]
        return torch.stack([self.text_embeds[p] for p in prompts])

    @torch.no_grad()
    def _encode(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, audio tokens, their segment masks) of a batch: from the frozen encoders, or drawn from the
        features ``avsync precompute`` stored."""
        encoder = self.pipe.audio_encoder
        if "vae_moments" in batch:
            latents = sample_video_latents(batch["vae_moments"].to(self.device), self.pipe.vae.config.scaling_factor, generator)
            masks = encoder.segment_masks(len(latents), self.config.num_frames, self.device)
            return latents, batch["audio_tokens"].to(self.device), masks
        latents = video_latents(self.pipe.vae, batch["video"].to(self.device), generator)
        audio = encoder(batch["mel"].to(self.device, encoder.dtype), num_segments=self.config.num_frames)
        return latents, audio.audio_encodings, audio.audio_segment_masks

    def loss(self, engine, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        latents, audio_embeds, audio_masks = self._encode(batch, generator)
        with torch.no_grad():
            null_audio = self.pipe.audio_encoder.null_audio_encodings(self.device, self.pipe.audio_encoder.dtype)
            text = self._prompt_embeds(list(batch["prompt"]))
            null_text = self._prompt_embeds([""]) if self.config.text_drop_prob > 0 else None
        loss = avsyncd_loss(
            engine,
            latents,
            text,
            audio_embeds,
            audio_masks,
            null_audio,
            self.scheduler,
            generator,
            audio_drop_prob=self.config.audio_drop_prob,
            null_text_embeds=null_text,
            text_drop_prob=self.config.text_drop_prob,
        )
        return loss, {}

    def _preview_inputs(self) -> dict:
        """The first decodable training clip (unflipped): its first frame, audio and prompt, read once."""
        if self.preview is None:
            example = first_example(shard_urls(self.config.data.root, self.config.data.split), partial(self.decode_sample, randflip=False))
            self.preview = {"image": example["video"][:, 0], "audio": example["audio"].numpy(), "prompt": example["prompt"]}
        return self.preview

    def after_step(self, engine, step: int, tracker) -> None:
        """Every ``preview_every_n_steps``: rank 0 animates the first training sample and logs the video."""
        every = self.config.preview_every_n_steps
        if not every or step % every:
            return
        from avsync_ray.media import encode_mp4
        from avsync_ray.media.frames import to_uint8_frames

        stage3 = self.config.deepspeed.zero_stage == 3
        with ds.setup_deepspeed().zero.GatheredParameters(list(engine.module.parameters()), enabled=stage3):  # collective under ZeRO-3
            if tracker is None:
                return
            inputs = self._preview_inputs()
            engine.module.eval()
            try:
                out = self.pipe(
                    image=inputs["image"],
                    audio=inputs["audio"],
                    prompt=inputs["prompt"],
                    num_frames=self.config.num_frames,
                    height=self.config.height,
                    width=self.config.width,
                    num_inference_steps=self.config.preview_inference_steps,
                    generator=torch.Generator(self.device).manual_seed(self.config.seed),
                    output_type="np",
                )
            finally:
                engine.module.train()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"step_{step:08d}.mp4")
            encode_mp4(to_uint8_frames(out.frames[0]), self.config.fps, out.audio[0], 16_000, path)
            tracker.log_artifact(path, "samples")


TASKS = {"sync-classifier": (SyncClassifierTask, TrainSyncConfig), "avsyncd": (AVSyncDTask, TrainConfig)}


def memory_mb(device: torch.device) -> tuple[float, float]:
    """(peak, current) memory of this rank: GPU memory allocated by torch, or on CPU the process's resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.memory_allocated(device) / 2**20
    import resource

    import psutil

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, psutil.Process().memory_info().rss / 2**20


class MetricWindow:
    """On-device sums between two log steps; :meth:`reduce` averages them over ranks (one host sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.skipped = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, extras: dict[str, torch.Tensor], skipped: int) -> None:
        for name, value in {"loss": loss.detach(), **extras}.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
        self.micro_batches += 1
        self.skipped += skipped

    def reduce(self, world_size: int, samples_per_micro_batch: int) -> dict[str, float]:
        names = sorted(self.sums)
        values = torch.stack([self.sums[n] / self.micro_batches for n in names] + [torch.tensor(float(self.skipped), device=self.device)])
        if world_size > 1:
            dist.all_reduce(values)
            values[:-1] /= world_size
        elapsed = time.perf_counter() - self.started
        memory = torch.tensor(memory_mb(self.device), device=self.device)
        if world_size > 1:
            dist.all_reduce(memory, op=dist.ReduceOp.MAX)  # the largest rank's
        metrics = dict(zip(names, values[:-1].tolist()))
        metrics["data/skipped_samples"] = values[-1].item()
        metrics["memory/peak_mb"], metrics["memory/current_mb"] = memory.tolist()
        metrics["samples_per_s"] = self.micro_batches * samples_per_micro_batch * world_size / max(elapsed, 1e-9)
        metrics["data_wait_s"] = self.data_wait
        self.reset()
        return metrics


def _unclipped_grad_norm(engine) -> torch.Tensor | None:
    """The global gradient norm before clipping, for engines that do not report it (ZeRO-0 in fp32 clips the
    gradients without keeping the norm); called after the boundary's backward, which has all-reduced them."""
    if engine.zero_optimization_stage() > 0 or engine.bfloat16_enabled():
        return None
    return torch.nn.utils.get_total_norm([p.grad for p in engine.module.parameters() if p.grad is not None])


def _checkpoint_meta(checkpoint: ray.train.Checkpoint) -> dict:
    """A Ray Train checkpoint's meta, read in place (no download of the shards)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{ds.CHECKPOINT_META}") as handle:
        return json.loads(handle.read())


def _checkpoint_to_restore(loop_config: dict, world_size: int) -> tuple[ray.train.Checkpoint | None, dict]:
    """The checkpoint a worker group starts from, with its meta: the newest of Ray Train's latest (after a failure,
    or a rerun of the same run) and the run's checkpoints that every rank of this world size uploaded (a node lost
    after the uploads but before Ray Train's controller committed the checkpoint leaves one it does not know). They
    win over ``resume_from``, except over a universal conversion at least as new: a run resumed on another worker
    count starts from that, until it writes its own checkpoints."""
    candidates = []  # (step, checkpoint, meta)
    latest = ray.train.get_checkpoint()
    if latest is not None:
        meta = _checkpoint_meta(latest)
        candidates.append((meta["step"], latest, meta))
    for uri, meta in ds.run_checkpoint_metas(loop_config["run_dir"]):
        if meta.get("world_size") == world_size and ds.fully_uploaded(uri, meta):
            candidates.append((meta["step"], ray.train.Checkpoint(uri), meta))
    resume = loop_config.get("resume_from")
    if resume:
        meta = ds.read_checkpoint_meta(resume)
        if not candidates or (meta.get("universal") and meta["step"] >= max(step for step, *_ in candidates)):
            return ray.train.Checkpoint(resume), meta
    if not candidates:
        return None, {}
    _, checkpoint, meta = max(candidates, key=lambda candidate: candidate[0])
    return checkpoint, meta


def _mark_uploaded(checkpoint: ray.train.Checkpoint, rank: int) -> None:
    """After ``report`` returns, this rank's files are in the run's storage (``get_checkpoint`` is the uploaded one)."""
    with checkpoint.filesystem.open_output_stream(f"{checkpoint.path}/{ds.uploaded_marker(rank)}"):
        pass


def _restore(engine, checkpoint: ray.train.Checkpoint | None) -> dict:
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        return ds.load_checkpoint(engine, directory)


def _open_tracker(config: TrainCommonConfig, task: str, run_id: str | None):
    """Rank 0's MLflow run: the checkpoint's run when resuming, else a new one with the config as params and the
    shards as its training dataset."""
    from avsync_ray.lineage import shard_dataset
    from avsync_ray.tracking import TrainingTracker

    tracking = config.tracking
    return TrainingTracker(
        tracking.uri, tracking.experiment, tracking.run_name or config.run.name, task,
        config.model_dump(mode="json"), dump_config(config), run_id=run_id,
        dataset=None if run_id else shard_dataset(config.data.root, config.data.split),
    )  # fmt: skip


def progress_line(step: int, max_steps: int, metrics: dict[str, float]) -> str:
    """One line a person follows: the step, the loss, any accuracies, the learning rate and the throughput (the
    rest, memory and data-loading figures, is in the MLflow run)."""
    shown = ["loss", *sorted(k for k in metrics if k.endswith("accuracy")), "grad_norm", "lr", "samples_per_s"]
    return f"step {step}/{max_steps} " + " ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)


def _is_log_step(step: int, config: TrainCommonConfig) -> bool:
    return step % config.log_every_n_steps == 0 or step == config.max_steps


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: ``loop_config`` has ``task``, the resolved ``config`` (JSON),
    ``resume_from`` (a checkpoint URI, or None), and the crash tests' :class:`~avsync_ray.faults.FaultPlan` (``faults``,
    None in a real run) with its ``fault_marker`` URI."""
    task_cls, schema = TASKS[loop_config["task"]]
    config = schema.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    task = task_cls(config, device)
    checkpoint, saved = _checkpoint_to_restore(loop_config, world_size)
    engine = ds.initialize(task.model, config, world_size, load_universal=bool(saved.get("universal")))
    meta = _restore(engine, checkpoint)
    start = meta.get("step", 0)
    tracker = _open_tracker(config, task.name, meta.get("mlflow_run_id")) if rank == 0 and config.tracking.enabled else None
    checkpoint_meta = {
        "task": task.name,
        "signature": ds.resume_signature(config, task.name),
        "config": loop_config["config"],
        "mlflow_run_id": tracker.run_id if tracker else None,
        "world_size": world_size,
    }
    seed = wds.utils.make_seed(config.seed, start)  # a resumed run draws new samples and noise
    generator = torch.Generator(device).manual_seed(wds.utils.make_seed(seed, rank))
    stream = ShardStream(
        rank_shards(shard_urls(config.data.root, config.data.split), rank, world_size),
        task.make_sample, config.loader.batch_size, seed=seed, rank=rank, shuffle_buffer=config.loader.shuffle_buffer,
    )  # fmt: skip
    batches = iter(make_loader(stream, config.loader.num_workers))
    window = MetricWindow(device)
    last_metrics: dict[str, float] = {}

    def optimizer_step(step: int) -> torch.Tensor | None:
        """``grad_accum_steps`` micro-batches through the engine; returns the unclipped gradient norm on a logged step."""
        grad_norm = None
        for micro_batch in range(config.optimizer.grad_accum_steps):
            waited = time.perf_counter()
            batch = next(batches)
            window.data_wait += time.perf_counter() - waited
            loss, extras = task.loss(engine, batch, generator)
            engine.backward(loss)
            if _is_log_step(step, config) and micro_batch == config.optimizer.grad_accum_steps - 1:
                grad_norm = _unclipped_grad_norm(engine)
            engine.step()
            window.add(loss, extras, batch["skipped"])
        return grad_norm

    plan = loop_config.get("faults")
    run_step = faults.training_step_with_faults(optimizer_step, plan, rank, loop_config["fault_marker"]) if plan else optimizer_step
    engine.train()
    try:
        for step in range(start + 1, config.max_steps + 1):
            grad_norm = run_step(step)
            if _is_log_step(step, config):
                last_metrics = window.reduce(world_size, config.loader.batch_size)
                reported = engine.get_global_grad_norm()
                grad_norm = reported if reported is not None else grad_norm
                last_metrics.update(lr=engine.get_lr()[0], step=step, **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}))
                if tracker:
                    tracker.log_metrics({k: v for k, v in last_metrics.items() if k != "step"}, step)
                if rank == 0:
                    logger.info(progress_line(step, config.max_steps, last_metrics))
            task.after_step(engine, step, tracker)
            if step % config.checkpoint.every_n_steps == 0 or step == config.max_steps:
                with tempfile.TemporaryDirectory(prefix="avsync-ckpt-") as directory:
                    ds.save_checkpoint(engine, directory, step, checkpoint_meta)
                    ray.train.report({**last_metrics, "step": step}, checkpoint=ray.train.Checkpoint.from_directory(directory))
                _mark_uploaded(ray.train.get_checkpoint(), rank)
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise
    if tracker:
        tracker.finish()
