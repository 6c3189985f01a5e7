"""The HTTP ingress, as Ray's Stable Diffusion example writes one: a module-level FastAPI ``app`` and a CPU
deployment, ``AnimationIngress``, whose routes are methods that check the request and await the other
deployments' handles (the model, the job book, the sync scorer). A job runs as a task of the ingress replica that
accepted it: the model call (retried while the model deployment's queue is full), then the mp4 encode.

The app's settings (Serve application ``args``) are the instance's: the bounds of the animation form, the token,
the body limit and the OpenAPI schema, which states those bounds (``/openapi.json``)."""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
import asyncio
import logging
import time
from typing import Annotated

from fastapi import Depends, FastAPI, File, Response, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.exceptions import BackPressureError

from avsync_ray.conditioning import Conditioning
from avsync_ray.config.serve import PRESET_PREFIX, ServeAppArgs
from avsync_ray.media import DEFAULT_MEL, encode_mp4
from avsync_ray.serve.api import (
    ANIMATIONS,
    ANIMATIONS_SYNC,
    DOCS_ASSETS,
    ERROR_HANDLERS,
    ERRORS,
    UPLOAD,
    VIDEO_RESPONSE,
    AnimationForm,
    BodyLimit,
    animation_forms,
    check_bearer,
    configured_token_digest,
    docs_assets,
    docs_page,
    job_settings,
    openapi_schema,
    page,
    public_settings,
    video_response,
)
from avsync_ray.serve.deployments import call
from avsync_ray.serve.schemas import (
    ApiError,
    GenerationRequest,
    GenerationResult,
    Health,
    JobView,
    ModelsView,
    Readiness,
    SyncScoreView,
    overloaded,
)
from avsync_ray.serve.uploads import prepare_animation_inputs, prepare_sync_inputs

INGRESS = "AnimationIngress"
logger = logging.getLogger("ray.serve")

# The schema and the docs page are the ingress's own routes: they state its settings' bounds.
app = FastAPI(
    title="AVSyncD",
    version="1",
    description="Animate an image in sync with a sound (AVSyncD, ECCV 2024). Submit a job, poll its progress, fetch the mp4; "
    "or score how well a sound matches a video. Every error is JSON: {error, message}.",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)


def serving_ingress() -> "AnimationIngress":
    """The ingress replica answering this request (the instance Serve passes the route methods as ``self``)."""
    return serve.get_replica_context().servable_object


def _max_upload_bytes() -> int:
    return serving_ingress().max_upload_bytes


app.add_middleware(BodyLimit, max_bytes=_max_upload_bytes)
app.mount(DOCS_ASSETS, docs_assets(), name="docs-assets")
for _error, _handler in ERROR_HANDLERS.items():
    app.add_exception_handler(_error, _handler)

bearer = HTTPBearer(auto_error=False, description="the token in the environment variable named by auth.token_env")


async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    check_bearer(serving_ingress().token_sha256, credentials)


def guarded(*statuses: int, responses: dict | None = None) -> dict:
    """Options of a route that needs the bearer token (when auth is on), with the error answers it documents."""
    return {"dependencies": [Depends(authorized)], "responses": {**(responses or {}), **{s: ERRORS[s] for s in (401, 403, *statuses)}}}


@serve.deployment(name=INGRESS)
@serve.ingress(app)
class AnimationIngress:
    """The API and the page. ``model``, ``jobs`` and ``scorer`` (None: no sync classifier) are the handles of the
    other deployments."""

    # How long the model's frame size is trusted before it is asked again (a swap may change it; a replica
    # re-crops a frame made for another size, so a stale size costs a second resize, never a wrong clip).
    FRAME_SIZE_TTL_S = 30.0

    def __init__(self, args: dict, model, jobs, scorer=None):
        self.settings = settings = ServeAppArgs(**args)
        self.model, self.jobs, self.scorer = model, jobs, scorer
        self.token_sha256 = configured_token_digest(settings.auth)
        self.max_upload_bytes = int(settings.limits.max_upload_mb * 2**20)
        self.fields = animation_forms(settings)
        self.schema = openapi_schema(app, settings)
        self._tasks: set[asyncio.Task] = set()
        self._frame_size: tuple[tuple[int, int], float] | None = None  # (size, when asked)

    # ---------------------------------------------------------------------------------- open routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(page(self.settings, random_init_model=await self._serves_a_preset()))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        return JSONResponse(self.schema)

    @app.get("/docs", include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return docs_page(app.title)

    @app.get("/healthz", response_model=Health, summary="Liveness: the ingress answers")
    async def healthz(self) -> Health:
        return Health()

    # ---------------------------------------------------------------------------------- animations

    @app.post(ANIMATIONS, status_code=202, response_model=JobView, summary="Submit an animation job (image + audio, or a video)", **guarded(400, 413, 415, 422, 503))
    async def submit(self, response: Response, form: Annotated[AnimationForm, Depends()]):
        conditioning, settings = await self._inputs(ANIMATIONS, form)
        job = await call(self.jobs.submit, settings, settings["num_inference_steps"])
        task = asyncio.get_running_loop().create_task(self._run(self._request(job, conditioning)))
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        response.headers["Location"] = f"{ANIMATIONS}/{job['id']}"
        return job

    @app.post(ANIMATIONS_SYNC, response_class=Response, summary="Animate and answer with the mp4 (short jobs)", **guarded(400, 413, 415, 422, 503, responses=VIDEO_RESPONSE))
    async def animate_now(self, form: Annotated[AnimationForm, Depends()]):
        conditioning, settings = await self._inputs(ANIMATIONS_SYNC, form)
        most, default = self.settings.limits.max_sync_steps, self.settings.sampling.num_inference_steps
        if settings["num_inference_steps"] > most:
            raise ApiError(422, "invalid_request", f"num_inference_steps: the default ({default}) is above limits.max_sync_steps ({most}); "
                           "pass fewer steps or use POST /v1/animations")  # fmt: skip
        job = await call(self.jobs.submit, settings, settings["num_inference_steps"])
        try:
            await self._run(self._request(job, conditioning))
            view = await call(self.jobs.view, job["id"])
            if view["status"] == "cancelled":
                raise ApiError(409, "cancelled", f"job {job['id']} was cancelled (DELETE {ANIMATIONS}/{job['id']})")
            if view["status"] != "succeeded":
                raise ApiError(500, "generation_failed", f"job {job['id']} failed: {view['error']}")
            return video_response(*await call(self.jobs.video, job["id"]))
        except asyncio.CancelledError:  # the client went away: stop the model at its next step
            await asyncio.shield(call(self.jobs.cancel, job["id"]))
            raise
        finally:
            await asyncio.shield(call(self.jobs.discard, job["id"]))

    @app.get(ANIMATIONS + "/{job_id}", response_model=JobView, summary="A job's status and progress", **guarded(404))
    async def job(self, job_id: str):
        return await call(self.jobs.view, job_id)

    @app.get(ANIMATIONS + "/{job_id}/video", response_class=Response, summary="A finished job's mp4 (with its audio)",
             **guarded(404, 409, responses=VIDEO_RESPONSE))  # fmt: skip
    async def job_video(self, job_id: str):
        return video_response(*await call(self.jobs.video, job_id))

    @app.delete(ANIMATIONS + "/{job_id}", response_model=JobView, summary="Cancel a queued or running job (it stops at its next denoising step); "
                "delete a finished one", **guarded(404))  # fmt: skip
    async def cancel(self, job_id: str):
        return await call(self.jobs.cancel, job_id)

    # ---------------------------------------------------------------------------------- sync scores, models, readiness

    @app.post("/v1/sync-score", response_model=SyncScoreView, summary="How well a sound matches a video: the sync classifier's score and P_sync",
              **guarded(400, 404, 413, 415, 422, 503))  # fmt: skip
    async def sync_score(self, video: Annotated[UploadFile | None, File(description=UPLOAD)] = None, audio: Annotated[UploadFile | None, File(description=UPLOAD)] = None):
        if not self.settings.sync_score:
            raise ApiError(404, "not_found", "this server has no sync classifier (set sync_classifier.source)")
        files = [await upload.read() if upload is not None else None for upload in (audio, video)]
        inputs = await asyncio.to_thread(prepare_sync_inputs, self.settings.limits, *files)
        return await call(self.scorer.score, inputs.audio, inputs.video)

    @app.get("/v1/models", response_model=ModelsView, summary="The models served, their registry versions and lineage (LoggedModel, training run, "
             "step, dataset), and the request bounds", **guarded())  # fmt: skip
    async def models(self):
        return {"models": await self._describe_models(), **public_settings(self.settings)}

    @app.get("/readyz", response_model=Readiness, summary="Readiness: every model is loaded", **guarded(responses={503: {"model": Readiness}}))
    async def readyz(self):
        try:
            models = await asyncio.wait_for(self._describe_models(), timeout=10)
        except (asyncio.TimeoutError, BackPressureError) as exc:
            return JSONResponse({"ready": False, "message": f"the model deployments did not answer: {type(exc).__name__}"}, status_code=503)
        missing = [m["role"] for m in models if not m.get("loaded_at")]
        if missing:
            return JSONResponse({"ready": False, "message": f"not loaded yet: {', '.join(missing)}"}, status_code=503)
        served = "; ".join(f"{m['role']}: {m['source']}" + (f" (version {m['version']})" if m.get("version") else "") for m in models)
        return {"ready": True, "message": served}

    # ---------------------------------------------------------------------------------- helpers

    async def _serves_a_preset(self) -> bool:
        """Whether the animation model is a preset (random weights): the page says so."""
        try:
            described = await asyncio.wait_for(call(self.model.describe), timeout=5)
        except Exception:  # noqa: BLE001 - the page shows without the notice when the model deployment cannot answer
            return False
        return str(described.get("source") or "").startswith(PRESET_PREFIX)

    async def _describe_models(self) -> list[dict]:
        handles = [self.model] + ([self.scorer] if self.scorer is not None else [])
        return list(await asyncio.gather(*(call(handle.describe) for handle in handles)))

    async def _frame_size_of_model(self) -> tuple[int, int]:
        """(height, width) of the clips: the app's, or the model's own where the app leaves it open (the uploaded
        image is cropped to it)."""
        sampling = self.settings.sampling
        if sampling.height and sampling.width:
            return sampling.height, sampling.width
        if self._frame_size is None or time.monotonic() - self._frame_size[1] > self.FRAME_SIZE_TTL_S:
            try:
                self._frame_size = (tuple(await call(self.model.frame_size)), time.monotonic())
            except BackPressureError:
                if self._frame_size is None:
                    raise overloaded("the animation model is busy; retry shortly", self.settings.limits.retry_after_s) from None
        return self._frame_size[0]

    async def _inputs(self, route: str, form: AnimationForm) -> tuple[Conditioning, dict]:
        """A request's checked settings (over the defaults) and its decoded, bounded inputs at the model's size."""
        settings = job_settings(self.fields[route], form, self.settings)
        height, width = await self._frame_size_of_model()
        sized = self.settings.sampling.model_copy(update={"height": height, "width": width})
        conditioning = await asyncio.to_thread(prepare_animation_inputs, sized, self.settings.limits, *await form.files())
        return conditioning, settings

    @staticmethod
    def _request(job: dict, conditioning: Conditioning) -> GenerationRequest:
        s = job["settings"]
        return GenerationRequest(job_id=job["id"], image=conditioning.image, audio=conditioning.audio, prompt=s["category"], seed=s["seed"],
                                 num_inference_steps=s["num_inference_steps"], scheduler=s["scheduler"], audio_guidance_scale=s["audio_guidance_scale"])  # fmt: skip

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        delay = 0.1
        while True:
            try:
                return await call(self.model.generate, request)
            except BackPressureError:  # the model deployment's queue is full: the job waits here, bounded by the job book
                if request.job_id in await call(self.jobs.progress, [request.job_id], 0):
                    return GenerationResult(request.job_id, None, None)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)

    async def _run(self, request: GenerationRequest) -> None:
        """One job: the model call, then the mp4 encode; the job book learns how it ended."""
        try:
            result = await self._generate(request)
            if result.cancelled:
                return
            fps = self.settings.sampling.fps
            mp4 = await asyncio.to_thread(encode_mp4, result.frames, fps, result.audio, DEFAULT_MEL.sample_rate)
            await call(self.jobs.succeed, request.job_id, mp4, result.model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("job %s failed", request.job_id)
            message = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            await call(self.jobs.fail, request.job_id, message)
