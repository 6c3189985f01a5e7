"""The HTTP API and the web page, as a FastAPI app built per ingress replica from the app's settings (so the
OpenAPI schema at ``/docs`` states the real bounds). Routes validate, authorise and probe uploads, then hand
the work to a :class:`Backend` (the Serve deployments in production); every 4xx is JSON with a message."""

# No ``from __future__ import annotations``: FastAPI reads the route signatures, whose types are built per app.
import asyncio
import hashlib
import hmac
import importlib.resources
import json
import logging
import os
from http import HTTPStatus
from typing import Annotated, Literal, Protocol

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from avsync_ray.conditioning import Conditioning
from avsync_ray.config.base import ConfigError
from avsync_ray.config.sampling import SchedulerName
from avsync_ray.config.serve import AuthConfig, ServeAppArgs
from avsync_ray.serve.schemas import ApiError, ErrorBody, Health, JobView, ModelsView, Readiness, SyncScoreView
from avsync_ray.serve.uploads import SyncInputs, prepare_animation_inputs, prepare_sync_inputs

logger = logging.getLogger("ray.serve")
MAX_SEED = 2**32 - 1
ERRORS = {status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 415, 422, 503)}
VIDEO_RESPONSE = {200: {"content": {"video/mp4": {}}, "description": "the mp4 (H.264 with the AAC audio muxed in)"}}


class Backend(Protocol):
    """What the routes need from the rest of the app. Failures are :class:`ApiError`."""

    async def frame_size(self) -> tuple[int, int]: ...  # (height, width) of the clips: the uploaded image is cropped to it
    async def submit(self, conditioning: Conditioning, settings: dict) -> dict: ...  # a queued job's view
    async def run_sync(self, conditioning: Conditioning, settings: dict) -> tuple[bytes, dict]: ...  # (mp4, view)
    async def job(self, job_id: str) -> dict: ...
    async def cancel(self, job_id: str) -> dict: ...
    async def video(self, job_id: str) -> tuple[bytes, dict]: ...
    async def sync_score(self, inputs: SyncInputs) -> dict: ...
    async def models(self) -> list[dict]: ...
    async def ready(self) -> tuple[bool, str]: ...


def token_digest(token: str) -> str:
    """What the ingress keeps of the bearer token (it never needs the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def configured_token_digest(auth: AuthConfig) -> str | None:
    """The digest of the token in the environment variable ``auth.token_env`` names (None: no auth). A named
    variable that is unset is an error: the server must not start open when auth was asked for."""
    if not auth.token_env:
        return None
    token = os.environ.get(auth.token_env)
    if not token:
        raise ConfigError(f"auth.token_env names {auth.token_env}, which is unset or empty where the ingress runs: set it on every node "
                          "(or leave auth.token_env unset for an open server)")  # fmt: skip
    return token_digest(token)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is over {max_bytes / 2**20:g} MB (limits.max_upload_mb)")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 before it is parsed, by its
    Content-Length or, for a chunked upload, as soon as the bytes read pass the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyTooLarge(self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(413, "upload_too_large", too_large.detail)(scope, receive, send)
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large  # inside a route's form parsing, FastAPI passes an HTTPException on as it is
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await error_response(413, "upload_too_large", too_large.detail)(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"] if part not in ("body", "query", "path", "header"))
        parts.append(f"{location or 'request'}: {error['msg']}")
    return "; ".join(parts)


def _page(settings: ServeAppArgs) -> str:
    page = (importlib.resources.files("avsync_ray.serve") / "static" / "index.html").read_text()
    # "<\/" keeps any "</script>" inside a category name from closing the page's script.
    return page.replace("/*SERVER_SETTINGS*/null", json.dumps(public_settings(settings)).replace("</", "<\\/"))


def public_settings(settings: ServeAppArgs) -> dict:
    """What a client may know of the configuration: output format, request defaults and bounds."""
    g = settings.sampling
    return {
        # height and width None: each model's own (GET /v1/models shows it per model).
        "generation": {"height": g.height, "width": g.width, "num_frames": g.num_frames, "fps": g.fps, "num_inference_steps": g.num_inference_steps,
                       "scheduler": g.scheduler, "audio_guidance_scale": g.audio_guidance_scale, "guidance_scale": g.guidance_scale, "seed": g.seed,
                       "dtype": settings.dtype},  # fmt: skip
        "categories": list(settings.categories),
        "limits": settings.limits.model_dump(),
        "auth_required": settings.auth.token_env is not None,
        "sync_score": settings.sync_score,
    }


def build_api(settings: ServeAppArgs, backend: Backend, token_sha256: str | None) -> FastAPI:
    """The app's FastAPI routes over ``backend``; ``token_sha256`` (None: no auth) guards all but the health
    check, the page and the docs (the page asks for the token and sends it with every call)."""
    limits, defaults = settings.limits, settings.sampling
    app = FastAPI(
        title="AVSyncD",
        version="1",
        description="Animate an image in sync with a sound (AVSyncD, ECCV 2024). Submit a job, poll its progress, fetch the mp4; "
        "or score how well a sound matches a video. Every error is JSON: {error, message}.",
    )
    app.add_middleware(BodyLimit, max_bytes=int(limits.max_upload_mb * 2**20))
    bearer = HTTPBearer(auto_error=False, description="the token in the environment variable named by auth.token_env")

    async def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if token_sha256 is None:
            return
        if credentials is None:
            raise ApiError(401, "unauthorized", "this server needs a bearer token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token_digest(credentials.credentials), token_sha256):
            raise ApiError(403, "forbidden", "the bearer token is not valid for this server")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = "upload_too_large" if exc.status_code == 413 else HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        message = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase else f"{request.method} {request.url.path}: {code.replace('_', ' ')}"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"the server failed on this request ({type(exc).__name__}); see the replica's log")

    # ---------------------------------------------------------------------------------- open routes

    page = _page(settings)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Health, summary="Liveness: the ingress answers")
    async def healthz() -> Health:
        return Health()

    # ---------------------------------------------------------------------------------- guarded routes

    api = APIRouter(dependencies=[Depends(authorize)], responses={401: ERRORS[401], 403: ERRORS[403]})
    category_type = Literal[tuple(settings.categories)] if settings.categories else str  # type: ignore[valid-type]

    # FastAPI keeps per-parameter state in these, so every route gets its own.
    def category_form():
        bounds = {} if settings.categories else {"min_length": 1, "max_length": limits.max_category_chars}
        return Form(description="the class prompt, e.g. 'lions roaring'", **bounds)

    def guidance_form():
        return Form(ge=limits.min_audio_guidance, le=limits.max_audio_guidance, description=f"audio guidance (default {defaults.audio_guidance_scale:g})")

    def seed_form():
        return Form(ge=0, le=MAX_SEED, description=f"noise seed (default {defaults.seed})")

    def scheduler_form():
        return Form(description=f"sampler (default {defaults.scheduler})")

    def steps_form(most: int, where: str):
        return Form(ge=1, le=most, description=f"denoising steps (default {defaults.num_inference_steps}; at most {most} {where})")

    def upload():
        return File(description="image: PNG, JPEG, ...; audio: any format FFmpeg reads; video: its centred clip gives what is missing")

    def animation_form(most_steps: int, where: str):
        """The multipart fields of an animation request, as a dependency: the probed, decoded inputs and the
        job's settings (request values over the configured defaults)."""

        async def inputs(
            category: Annotated[category_type, category_form()],
            image: Annotated[UploadFile | None, upload()] = None,
            audio: Annotated[UploadFile | None, upload()] = None,
            video: Annotated[UploadFile | None, upload()] = None,
            audio_guidance_scale: Annotated[float | None, guidance_form()] = None,
            num_inference_steps: Annotated[int | None, steps_form(most_steps, where)] = None,
            seed: Annotated[int | None, seed_form()] = None,
            scheduler: Annotated[SchedulerName | None, scheduler_form()] = None,
        ) -> tuple[Conditioning, dict]:
            data = [await file.read() if file is not None else None for file in (image, audio, video)]
            height, width = await backend.frame_size()
            sized = defaults.model_copy(update={"height": height, "width": width})
            conditioning = await asyncio.to_thread(prepare_animation_inputs, sized, limits, *data)
            return conditioning, {
                "category": category,
                "num_inference_steps": num_inference_steps or defaults.num_inference_steps,
                "scheduler": scheduler or defaults.scheduler,
                "audio_guidance_scale": defaults.audio_guidance_scale if audio_guidance_scale is None else audio_guidance_scale,
                "seed": defaults.seed if seed is None else seed,
            }

        return inputs

    job_form = animation_form(limits.max_steps, "(limits.max_steps)")
    sync_form = animation_form(limits.max_sync_steps, "here (limits.max_sync_steps): longer jobs go through POST /v1/animations")

    @api.post("/v1/animations", status_code=202, response_model=JobView, responses={k: ERRORS[k] for k in (413, 415, 422, 503)},
              summary="Submit an animation job (image + audio, or a video)")  # fmt: skip
    async def submit(response: Response, inputs: Annotated[tuple[Conditioning, dict], Depends(job_form)]):
        view = await backend.submit(*inputs)
        response.headers["Location"] = f"/v1/animations/{view['id']}"
        return view

    @api.post("/v1/animations:sync", response_class=Response, responses={**VIDEO_RESPONSE, **{k: ERRORS[k] for k in (413, 415, 422, 503)}},
              summary="Animate and answer with the mp4 (short jobs)")  # fmt: skip
    async def animate_now(inputs: Annotated[tuple[Conditioning, dict], Depends(sync_form)]):
        if inputs[1]["num_inference_steps"] > limits.max_sync_steps:
            raise ApiError(422, "invalid_request", f"num_inference_steps: the default ({defaults.num_inference_steps}) is above limits.max_sync_steps "
                           f"({limits.max_sync_steps}); pass fewer steps or use POST /v1/animations")  # fmt: skip
        return _video_response(*await backend.run_sync(*inputs))

    @api.get("/v1/animations/{job_id}", response_model=JobView, responses={404: ERRORS[404]}, summary="A job's status and progress")
    async def job(job_id: str):
        return await backend.job(job_id)

    @api.get("/v1/animations/{job_id}/video", response_class=Response, responses={**VIDEO_RESPONSE, 404: ERRORS[404], 409: ERRORS[409]},
             summary="A finished job's mp4 (with its audio)")  # fmt: skip
    async def job_video(job_id: str):
        return _video_response(*await backend.video(job_id))

    @api.delete("/v1/animations/{job_id}", response_model=JobView, responses={404: ERRORS[404]},
                summary="Cancel a queued or running job (it stops at its next denoising step); delete a finished one")  # fmt: skip
    async def cancel(job_id: str):
        return await backend.cancel(job_id)

    @api.post("/v1/sync-score", response_model=SyncScoreView, responses={k: ERRORS[k] for k in (404, 413, 415, 422, 503)},
              summary="How well a sound matches a video: the sync classifier's score and P_sync")  # fmt: skip
    async def sync_score(video: Annotated[UploadFile | None, upload()] = None, audio: Annotated[UploadFile | None, upload()] = None):
        if not settings.sync_score:
            raise ApiError(404, "not_found", "this server has no sync classifier (set sync_classifier.source)")
        files = [await file.read() if file is not None else None for file in (audio, video)]
        inputs = await asyncio.to_thread(prepare_sync_inputs, limits, *files)
        return await backend.sync_score(inputs)

    @api.get("/v1/models", response_model=ModelsView, summary="The models served, their registry versions, and the request bounds")
    async def models():
        return {"models": await backend.models(), **public_settings(settings)}

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness: every model is loaded")
    async def readyz():
        ready, message = await backend.ready()
        return JSONResponse({"ready": ready, "message": message}, status_code=200 if ready else 503)

    app.include_router(api)
    return app


def _video_response(mp4: bytes, view: dict) -> Response:
    model = view.get("model") or {}
    headers = {
        "X-AVSync-Job": view["id"],
        "X-AVSync-Seed": str(view["settings"]["seed"]),
        "X-AVSync-Model": str(model.get("name") or ""),
        "X-AVSync-Model-Version": "" if model.get("version") is None else str(model["version"]),
        "Content-Disposition": f'inline; filename="avsyncd-{view["id"]}.mp4"',
    }
    return Response(mp4, media_type="video/mp4", headers=headers)
