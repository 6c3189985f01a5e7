"""The Ray Serve deployments behind the HTTP ingress (:mod:`avsync_ray.serve.ingress`, shaped as Ray's Stable
Diffusion example: a CPU FastAPI ingress calling a model deployment through a handle):

- ``AVSyncDModel``: one ``AVSyncDPipeline`` per replica (on the GPU when the replica has one); ``@serve.batch``
  collects requests and each compatible group runs as one pipeline call, reporting every denoising step to the
  job book and stopping at the next step once all of its jobs are cancelled;
- ``SyncScorer``: the sync classifier, scoring with ``metrics.pair_metrics``;
- ``AnimationJobs``: the one job book of the app (``jobs.JobBook``), so every ingress replica sees every job.

Both model deployments take their model from ``user_config`` (``reconfigure`` swaps it in place).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import numpy as np
import ray
from ray import serve

from avsync_ray.conditioning import ConditioningError
from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.config.serve import MODEL_DEPLOYMENTS, ServeAppArgs, ServeLimits
from avsync_ray.devices import resolve_device
from avsync_ray.media.clips import ClipSamplingError
from avsync_ray.media.frames import center_crop_resize, to_uint8_frames
from avsync_ray.pipelines.sampling import configure_pipeline, generate_batch, with_model_size
from avsync_ray.serve.jobs import JobBook
from avsync_ray.serve.model_slot import ModelSlot
from avsync_ray.serve.schemas import RESULT_MODEL_FIELDS, ApiError, GenerationRequest, GenerationResult, group_compatible
from avsync_ray.serve.uploads import api_error

JOBS = "AnimationJobs"
MODEL, SCORER = MODEL_DEPLOYMENTS
logger = logging.getLogger("ray.serve")


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return None


def _gpu_memory(device) -> dict:
    import torch

    if device.type != "cuda":
        return {}
    return {"gpu_memory_allocated_mb": round(torch.cuda.memory_allocated(device) / 2**20, 1),
            "gpu_memory_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}  # fmt: skip


def refusals_returned(method):
    """A deployment method whose expected refusals (:class:`ApiError`: an unknown job, a full book) are returned, not
    raised: Serve logs every exception a replica raises with its traceback, and a 404 is no failure. :func:`call`
    raises them again where the route awaits the handle."""

    @functools.wraps(method)
    async def answer(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except ApiError as refusal:
            return refusal

    return answer


async def call(method, *args):
    """Await a handle call; a refusal the other replica returned (see :func:`refusals_returned`) is raised here."""
    result = await method.remote(*args)
    if isinstance(result, ApiError):
        raise result
    return result


# ------------------------------------------------------------------------------------------------ job book


@serve.deployment(name=JOBS, num_replicas=1, ray_actor_options={"num_cpus": 0})
class AnimationJobs:
    """The app's jobs, in memory (one replica; a restart forgets them and their clients get 404)."""

    def __init__(self, limits: dict):
        limits = ServeLimits(**limits)
        self.book = JobBook(limits.max_active_jobs, limits.job_timeout_s, limits.result_ttl_s, limits.max_stored_results, limits.retry_after_s)

    # async: every call runs on the replica's event loop, one at a time, so the book needs no lock.
    @refusals_returned
    async def submit(self, settings: dict, total_steps: int) -> dict:
        return self.book.submit(settings, total_steps)

    async def start(self, job_ids: list[str], model: dict) -> list[str]:
        return self.book.start(job_ids, model)

    async def progress(self, job_ids: list[str], step: int) -> list[str]:
        return self.book.progress(job_ids, step)

    async def succeed(self, job_id: str, video: bytes, model: dict) -> None:
        self.book.succeed(job_id, video, model)

    async def fail(self, job_id: str, error: str) -> None:
        self.book.fail(job_id, error)

    @refusals_returned
    async def cancel(self, job_id: str) -> dict:
        return self.book.cancel(job_id)

    async def discard(self, job_id: str) -> None:
        self.book.discard(job_id)

    @refusals_returned
    async def view(self, job_id: str) -> dict:
        return self.book.view(job_id)

    @refusals_returned
    async def video(self, job_id: str) -> tuple[bytes, dict]:
        return self.book.video(job_id)


# ------------------------------------------------------------------------------------------------ models


class GroupCancelled(Exception):
    """Every job of a pipeline call was cancelled: the denoising loop stops between two steps."""


class StepReporter:
    """Carries a pipeline call's progress from its thread to the job book after every denoising step, and
    the book's cancellations back (reports are coalesced: the step loop never waits on the book)."""

    def __init__(self, jobs, job_ids: list[str]):
        self.jobs, self.job_ids = jobs, job_ids
        self.loop = asyncio.get_running_loop()
        self.step, self.stopped, self.closed = 0, set(), False
        self._wake = asyncio.Event()

    def on_step(self, pipe, index: int, timestep, tensors: dict) -> dict:
        """``callback_on_step_end`` of the pipeline (runs in its thread, between steps)."""
        self.step = index + 1
        self.loop.call_soon_threadsafe(self._wake.set)
        if self.stopped >= set(self.job_ids):
            raise GroupCancelled
        return {}

    async def forward(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            if not self.closed:
                self.stopped = set(await call(self.jobs.progress, self.job_ids, self.step))

    def close(self) -> None:
        self.closed = True
        self._wake.set()


@dataclass
class ServedPipeline:
    pipe: object  # AVSyncDPipeline
    config: SamplingConfig  # the app's sampling settings with the output size this model leaves open set to its own


@serve.deployment(name=MODEL)
class AVSyncDModel:
    """One AVSyncD pipeline per replica; batched calls of compatible requests."""

    def __init__(self, args: dict, jobs):
        settings = ServeAppArgs(**args)
        self.sampling, self.dtype = settings.sampling, settings.dtype
        self.device = resolve_device(settings.device, num_gpus=len(ray.get_gpu_ids()))
        self.jobs = jobs
        self.generate.set_max_batch_size(settings.batching.max_batch_size)
        self.generate.set_batch_wait_timeout_s(settings.batching.batch_wait_timeout_s)
        self.slot = ModelSlot("animation", loader=self._load, presets={"tiny": _write_tiny_pipeline})
        # What this replica ran: batches from @serve.batch, jobs skipped because they were cancelled before they
        # started, pipeline calls (one per compatible group) and the last call's steps (a cancelled call ends early).
        self.stats = {"batches": 0, "requests": 0, "skipped_jobs": 0, "pipeline_calls": 0, "cancelled_calls": 0, "last_call": None}

    def __del__(self):  # Serve calls it when the replica stops
        self.slot.close()

    def _load(self, path: str) -> ServedPipeline:
        from avsync_ray.pipelines.loading import load_pipeline

        return ServedPipeline(load_pipeline(path, str(self.device), self.dtype), with_model_size(self.sampling, path))

    async def reconfigure(self, user_config: dict) -> None:
        await self.slot.apply(user_config)
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()  # the swapped-out pipeline's memory

    def check_health(self) -> None:
        if self.slot.loaded is None:
            raise RuntimeError(f"no animation model loaded (source {self.slot.config.source if self.slot.config else None})")

    def _describe(self, loaded) -> dict:
        pipe, config = loaded.model.pipe, loaded.model.config
        components = {name: type(module).__name__ for name, module in pipe.components.items() if module is not None}
        return {**self.slot.describe(), "device": str(self.device), "dtype": self.dtype, "replica": _replica_id(),
                "config": {"components": components, "scheduler": type(pipe.scheduler).__name__, "height": config.height, "width": config.width},
                **_gpu_memory(self.device)}  # fmt: skip

    @refusals_returned
    async def frame_size(self) -> tuple[int, int]:
        """(height, width) of the clips this replica makes: the app's, or its model's own where the app leaves it open."""
        loaded = self.slot.loaded
        if loaded is None:
            raise ApiError(503, "not_ready", "the animation model is still loading; retry shortly", {"Retry-After": "5"})
        return loaded.model.config.height, loaded.model.config.width

    async def describe(self) -> dict:
        loaded = self.slot.loaded
        described = self._describe(loaded) if loaded is not None else {**self.slot.describe(), "replica": _replica_id()}
        return {**described, "stats": self.stats}

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)  # sizes from config, set in __init__
    async def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        loaded = self.slot.loaded
        if loaded is None:
            raise ApiError(503, "not_ready", "the animation model is still loading; retry shortly", {"Retry-After": "5"})
        model = {key: value for key, value in self._describe(loaded).items() if key in RESULT_MODEL_FIELDS}
        self.stats["batches"] += 1
        self.stats["requests"] += len(requests)
        results: dict[str, GenerationResult] = {}
        for group in group_compatible(requests, GenerationRequest.batch_key):
            batch = [requests[i] for i in group]
            skip = set(await call(self.jobs.start, [r.job_id for r in batch], model))
            self.stats["skipped_jobs"] += len(skip)
            live = [r for r in batch if r.job_id not in skip]
            outputs, stopped = await self._run_group(loaded.model, live) if live else ([], set())
            for request, output in zip(live, outputs):
                if request.job_id not in stopped:
                    results[request.job_id] = GenerationResult(request.job_id, output[0], output[1], model)
            for request in batch:
                results.setdefault(request.job_id, GenerationResult(request.job_id, None, None, model))
        return [results[r.job_id] for r in requests]

    async def _run_group(self, served: ServedPipeline, requests: list[GenerationRequest]) -> tuple[list, set[str]]:
        """One pipeline call in a worker thread (the event loop keeps batching, reporting and health checks);
        returns the outputs and the jobs cancelled while it ran."""
        first = requests[0]
        config = served.config.model_copy(update={"num_inference_steps": first.num_inference_steps, "scheduler": first.scheduler,
                                                "audio_guidance_scale": first.audio_guidance_scale})  # fmt: skip
        reporter = StepReporter(self.jobs, [r.job_id for r in requests])
        forwarding = asyncio.create_task(reporter.forward())
        try:
            outputs = await asyncio.to_thread(self._generate_group, served.pipe, config, requests, reporter.on_step)
        except GroupCancelled:
            outputs = []
        finally:
            reporter.close()
            await forwarding
        self.stats["pipeline_calls"] += 1
        self.stats["cancelled_calls"] += not outputs
        self.stats["last_call"] = {"jobs": len(requests), "steps_run": reporter.step, "steps": first.num_inference_steps, "cancelled": not outputs}
        return outputs, reporter.stopped

    @staticmethod
    def _generate_group(pipe, config: SamplingConfig, requests: list[GenerationRequest], on_step) -> list:
        configure_pipeline(pipe, config)
        # Arrays arrive read-only from Ray's object store; torch wants its own copies. A frame cropped for another
        # size (the ingress asked before a model swap changed it) is cropped again for this model.
        size = (config.height, config.width)
        images = [np.array(r.image) if r.image.shape[:2] == size else to_uint8_frames(center_crop_resize(r.image, size))[0] for r in requests]
        frames, audios = generate_batch(pipe, images, [np.array(r.audio) for r in requests], [r.prompt for r in requests],
                                        [r.seed for r in requests], config, callback_on_step_end=on_step)  # fmt: skip
        return list(zip(frames, audios))


def _write_tiny_pipeline(folder):
    from avsync_ray.pipelines.presets import save_tiny_pipeline

    return save_tiny_pipeline(folder, seed=0)


def _write_tiny_classifier(folder):
    import torch

    from avsync_ray.models.sync_classifier import SyncClassifier

    torch.manual_seed(0)
    SyncClassifier(image_size=32, base_width=8).save_pretrained(folder)  # the train-sync-tiny sizes


@serve.deployment(name=SCORER)
class SyncScorer:
    """The sync classifier: the raw score of a pair, and P_sync as curation computes it."""

    def __init__(self, limits: dict):
        self.limits = ServeLimits(**limits)
        self.device = resolve_device("auto", num_gpus=len(ray.get_gpu_ids()))
        self.slot = ModelSlot("sync-score", loader=self._load, presets={"tiny": _write_tiny_classifier})

    def __del__(self):  # Serve calls it when the replica stops
        self.slot.close()

    def _load(self, path: str):
        from avsync_ray.models.sync_classifier import load_sync_classifier

        return load_sync_classifier(path, self.device)

    async def reconfigure(self, user_config: dict) -> None:
        await self.slot.apply(user_config)

    async def describe(self) -> dict:
        return {**self.slot.describe(), "device": str(self.device), "dtype": "float32", "replica": _replica_id(), **_gpu_memory(self.device)}

    @refusals_returned
    async def score(self, audio: bytes, video: bytes) -> dict:
        loaded = self.slot.loaded
        if loaded is None:
            raise ApiError(404, "not_found", "this server has no sync classifier loaded (set sync_classifier.source)")
        result = await asyncio.to_thread(self._score, loaded.model, audio, video, self.limits)
        return {**result, "model": {k: v for k, v in self.slot.describe().items() if k in RESULT_MODEL_FIELDS}}

    @staticmethod
    def _score(classifier, audio: bytes, video: bytes, limits: ServeLimits) -> dict:
        """The score and P_sync of a pair, every decode bounded by ``limits`` (the files are only probed upstream)."""
        from avsync_ray.metrics.pair_metrics import pair_metric

        try:
            score = pair_metric("score", classifier, audio, video, limits=limits)["value"]
            try:
                psync = pair_metric("psync", classifier, audio, video, limits=limits)
            except ClipSamplingError as exc:  # too short for three clips: the score stands, P_sync is not defined
                return {"score": score, "psync": None, "psync_error": f"P_sync needs 2.5 s of audio and video: {exc}"}
        except ConditioningError as exc:
            raise api_error(exc) from None
        return {"score": score, "psync": {"a2v": psync["a2v"], "v2a": psync["v2a"]}, "psync_error": None}
