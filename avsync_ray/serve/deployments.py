"""The Ray Serve deployments, shaped as Ray's Stable Diffusion example (a CPU FastAPI ingress calling a model
deployment through a handle), plus a job book and a sync scorer:

- ``AnimationIngress`` (CPU): the API and page (``api.build_api``), uploads probed and decoded, jobs run as
  tasks that call the model and encode the mp4;
- ``AVSyncDModel``: one ``AVSyncDPipeline`` per replica (on the GPU when the replica has one); ``@serve.batch``
  collects requests and each compatible group runs as one pipeline call, reporting every denoising step to the
  job book and stopping at the next step once all of its jobs are cancelled;
- ``SyncScorer``: the sync classifier, scoring with ``metrics.pair_metrics``;
- ``AnimationJobs``: the one job book of the app (``jobs.JobBook``), so every ingress replica sees every job.

Both model deployments take their model from ``user_config`` (``reconfigure`` swaps it in place).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from avsync_ray.conditioning import Conditioning
from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.config.serve import MODEL_DEPLOYMENTS, ServeAppArgs, ServeLimits
from avsync_ray.devices import resolve_device
from avsync_ray.media import DEFAULT_MEL, MediaError, encode_mp4
from avsync_ray.media.clips import ClipSamplingError
from avsync_ray.media.frames import center_crop_resize, to_uint8_frames
from avsync_ray.pipelines.sampling import configure_pipeline, generate_batch, with_model_size
from avsync_ray.serve.api import build_api, configured_token_digest
from avsync_ray.serve.jobs import JobBook
from avsync_ray.serve.model_slot import ModelSlot
from avsync_ray.serve.schemas import ApiError, GenerationRequest, GenerationResult, group_compatible, overloaded
from avsync_ray.serve.uploads import SyncInputs, media_error

JOBS, INGRESS = "AnimationJobs", "AnimationIngress"
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


async def _call(method, *args):
    """Await a handle call; an :class:`ApiError` raised in the other replica comes back as itself."""
    try:
        return await method.remote(*args)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise cause if isinstance(cause, ApiError) else exc from None


# ------------------------------------------------------------------------------------------------ job book


@serve.deployment(name=JOBS, num_replicas=1, ray_actor_options={"num_cpus": 0})
class AnimationJobs:
    """The app's jobs, in memory (one replica; a restart forgets them and their clients get 404)."""

    def __init__(self, limits: dict):
        limits = ServeLimits(**limits)
        self.book = JobBook(limits.max_active_jobs, limits.job_timeout_s, limits.result_ttl_s, limits.max_stored_results, limits.retry_after_s)

    # async: every call runs on the replica's event loop, one at a time, so the book needs no lock.
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

    async def cancel(self, job_id: str) -> dict:
        return self.book.cancel(job_id)

    async def discard(self, job_id: str) -> None:
        self.book.discard(job_id)

    async def view(self, job_id: str) -> dict:
        return self.book.view(job_id)

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
                self.stopped = set(await _call(self.jobs.progress, self.job_ids, self.step))

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
        model = {key: value for key, value in self._describe(loaded).items() if key in ("role", "name", "source", "version", "alias", "replica")}
        self.stats["batches"] += 1
        self.stats["requests"] += len(requests)
        results: dict[str, GenerationResult] = {}
        for group in group_compatible(requests, GenerationRequest.batch_key):
            batch = [requests[i] for i in group]
            skip = set(await _call(self.jobs.start, [r.job_id for r in batch], model))
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

    def __init__(self):
        self.device = resolve_device("auto", num_gpus=len(ray.get_gpu_ids()))
        self.slot = ModelSlot("sync-score", loader=self._load, presets={"tiny": _write_tiny_classifier})

    def _load(self, path: str):
        from avsync_ray.models.sync_classifier import load_sync_classifier

        return load_sync_classifier(path, self.device)

    async def reconfigure(self, user_config: dict) -> None:
        await self.slot.apply(user_config)

    async def describe(self) -> dict:
        return {**self.slot.describe(), "device": str(self.device), "dtype": "float32", "replica": _replica_id(), **_gpu_memory(self.device)}

    async def score(self, audio: bytes, video: bytes) -> dict:
        loaded = self.slot.loaded
        if loaded is None:
            raise ApiError(404, "not_found", "this server has no sync classifier loaded (set sync_classifier.source)")
        result = await asyncio.to_thread(self._score, loaded.model, audio, video)
        return {**result, "model": {k: v for k, v in self.slot.describe().items() if k in ("name", "source", "version", "alias")}}

    @staticmethod
    def _score(classifier, audio: bytes, video: bytes) -> dict:
        from avsync_ray.metrics.pair_metrics import pair_metric

        try:
            score = pair_metric("score", classifier, audio, video)["value"]
        except MediaError as exc:
            raise media_error("video", exc) from None
        try:
            psync = pair_metric("psync", classifier, audio, video)
        except ClipSamplingError as exc:  # too short for three clips: the score stands, P_sync is not defined
            return {"score": score, "psync": None, "psync_error": f"P_sync needs 2.5 s of audio and video: {exc}"}
        except MediaError as exc:
            raise media_error("video", exc) from None
        return {"score": score, "psync": {"a2v": psync["a2v"], "v2a": psync["v2a"]}, "psync_error": None}


# ------------------------------------------------------------------------------------------------ ingress


class HandleBackend:
    """What the routes do, through the other deployments' handles. A job runs as a task of the ingress replica
    that accepted it: the model call (retried while the model deployment's queue is full), then the mp4 encode."""

    # How long the model's frame size is trusted before it is asked again (a swap may change it; a replica
    # re-crops a frame made for another size, so a stale size costs a second resize, never a wrong clip).
    FRAME_SIZE_TTL_S = 30.0

    def __init__(self, settings: ServeAppArgs, model, jobs, scorer):
        self.settings, self.model, self.jobs, self.scorer = settings, model, jobs, scorer
        self._tasks: set[asyncio.Task] = set()
        self._frame_size: tuple[tuple[int, int], float] | None = None  # (size, when asked)

    async def frame_size(self) -> tuple[int, int]:
        sampling = self.settings.sampling
        if sampling.height and sampling.width:
            return sampling.height, sampling.width
        if self._frame_size is None or time.monotonic() - self._frame_size[1] > self.FRAME_SIZE_TTL_S:
            try:
                self._frame_size = (tuple(await _call(self.model.frame_size)), time.monotonic())
            except BackPressureError:
                if self._frame_size is None:
                    raise overloaded("the animation model is busy; retry shortly", self.settings.limits.retry_after_s) from None
        return self._frame_size[0]

    @staticmethod
    def _request(job: dict, conditioning: Conditioning) -> GenerationRequest:
        s = job["settings"]
        return GenerationRequest(job_id=job["id"], image=conditioning.image, audio=conditioning.audio, prompt=s["category"], seed=s["seed"],
                                 num_inference_steps=s["num_inference_steps"], scheduler=s["scheduler"], audio_guidance_scale=s["audio_guidance_scale"])  # fmt: skip

    async def submit(self, conditioning: Conditioning, settings: dict) -> dict:
        job = await _call(self.jobs.submit, settings, settings["num_inference_steps"])
        task = asyncio.get_running_loop().create_task(self._run(self._request(job, conditioning)))
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return job

    async def run_sync(self, conditioning: Conditioning, settings: dict) -> tuple[bytes, dict]:
        job = await _call(self.jobs.submit, settings, settings["num_inference_steps"])
        try:
            await self._run(self._request(job, conditioning))
            view = await _call(self.jobs.view, job["id"])
            if view["status"] == "succeeded":
                return await _call(self.jobs.video, job["id"])
            if view["status"] == "cancelled":
                raise ApiError(409, "cancelled", f"job {job['id']} was cancelled (DELETE /v1/animations/{job['id']})")
            raise ApiError(500, "generation_failed", f"job {job['id']} failed: {view['error']}")
        except asyncio.CancelledError:  # the client went away: stop the model at its next step
            await asyncio.shield(_call(self.jobs.cancel, job["id"]))
            raise
        finally:
            await asyncio.shield(_call(self.jobs.discard, job["id"]))

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        delay = 0.1
        while True:
            try:
                return await _call(self.model.generate, request)
            except BackPressureError:  # the model deployment's queue is full: the job waits here, bounded by the job book
                if request.job_id in await _call(self.jobs.progress, [request.job_id], 0):
                    return GenerationResult(request.job_id, None, None)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)

    async def _run(self, request: GenerationRequest) -> None:
        try:
            result = await self._generate(request)
            if result.cancelled:
                return
            fps = self.settings.sampling.fps
            mp4 = await asyncio.to_thread(encode_mp4, result.frames, fps, result.audio, DEFAULT_MEL.sample_rate)
            await _call(self.jobs.succeed, request.job_id, mp4, result.model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("job %s failed", request.job_id)
            message = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            await _call(self.jobs.fail, request.job_id, message)

    async def job(self, job_id: str) -> dict:
        return await _call(self.jobs.view, job_id)

    async def cancel(self, job_id: str) -> dict:
        return await _call(self.jobs.cancel, job_id)

    async def video(self, job_id: str) -> tuple[bytes, dict]:
        return await _call(self.jobs.video, job_id)

    async def sync_score(self, inputs: SyncInputs) -> dict:
        return await _call(self.scorer.score, inputs.audio, inputs.video)

    def _model_handles(self):
        return [self.model] + ([self.scorer] if self.scorer is not None else [])

    async def models(self) -> list[dict]:
        return list(await asyncio.gather(*(_call(handle.describe) for handle in self._model_handles())))

    async def ready(self) -> tuple[bool, str]:
        try:
            models = await asyncio.wait_for(self.models(), timeout=10)
        except (asyncio.TimeoutError, BackPressureError) as exc:
            return False, f"the model deployments did not answer: {type(exc).__name__}"
        missing = [m["role"] for m in models if not m.get("loaded_at")]
        if missing:
            return False, f"not loaded yet: {', '.join(missing)}"
        return True, "; ".join(f"{m['role']}: {m['source']}" + (f" (version {m['version']})" if m.get("version") else "") for m in models)


@serve.deployment(name=INGRESS)
@serve.ingress()
class AnimationIngress:
    """The HTTP ingress: the FastAPI app of ``api.build_api`` over :class:`HandleBackend`."""

    def __init__(self, args: dict, model, jobs, scorer=None):
        self.settings = ServeAppArgs(**args)
        self.token_sha256 = configured_token_digest(self.settings.auth)
        self.backend = HandleBackend(self.settings, model, jobs, scorer)

    def __serve_build_asgi_app__(self):
        return build_api(self.settings, self.backend, self.token_sha256)
