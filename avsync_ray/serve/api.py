"""The HTTP pieces of the ingress that need no Ray: the multipart form of an animation request and its bounds from
the app's settings, the OpenAPI schema those bounds go into, bearer-token checks, the request-body limit, the JSON
errors (every 4xx is ``{error, message}``) and the page. :mod:`avsync_ray.serve.ingress` puts them together."""

# No ``from __future__ import annotations``: FastAPI reads the form's signature.
import functools
import hashlib
import hmac
import importlib.resources
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from avsync_ray.config.base import ConfigError
from avsync_ray.config.sampling import SchedulerName
from avsync_ray.config.serve import AuthConfig, ServeAppArgs
from avsync_ray.serve.schemas import ApiError, ErrorBody

logger = logging.getLogger("ray.serve")
MAX_SEED = 2**32 - 1
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)}
# What a video's headers say about the job and the model that made it (empty: not known, as for a preset or a
# folder without lineage; values that are not plain ASCII are percent-encoded).
RESULT_HEADERS = {
    "X-AVSync-Job": "the job's id",
    "X-AVSync-Seed": "the noise seed",
    "X-AVSync-Model": "the model's registered name, folder name or preset",
    "X-AVSync-Model-Version": "its MLflow registry version",
    "X-AVSync-Model-Id": "its MLflow LoggedModel id (models:/<id>)",
    "X-AVSync-Training-Run": "the id of the MLflow run that trained it",
    "X-AVSync-Training-Step": "the training step of its checkpoint",
    "X-AVSync-Dataset-Digest": "the digest of the MLflow dataset it trained on (the shard index's content id)",
}
VIDEO_RESPONSE = {200: {"content": {"video/mp4": {}}, "description": "the mp4 (H.264 with the AAC audio muxed in)",
                        "headers": {name: {"description": text, "schema": {"type": "string"}} for name, text in RESULT_HEADERS.items()}}}  # fmt: skip
ANIMATIONS, ANIMATIONS_SYNC = "/v1/animations", "/v1/animations:sync"
UPLOAD = "image: PNG, JPEG, ...; audio: any format FFmpeg reads; video: its centred clip gives what is missing"


# ------------------------------------------------------------------------------------------------ the animation form


@dataclass
class AnimationForm:
    """The multipart fields of an animation request as FastAPI parses them (a route dependency). Their bounds
    depend on the app's settings, so :func:`animation_fields` checks them and :func:`openapi_schema` states them."""

    category: Annotated[str, Form()]
    image: Annotated[UploadFile | None, File(description=UPLOAD)] = None
    audio: Annotated[UploadFile | None, File(description=UPLOAD)] = None
    video: Annotated[UploadFile | None, File(description=UPLOAD)] = None
    audio_guidance_scale: Annotated[float | None, Form()] = None
    num_inference_steps: Annotated[int | None, Form()] = None
    seed: Annotated[int | None, Form()] = None
    scheduler: Annotated[SchedulerName | None, Form()] = None

    async def files(self) -> list[bytes | None]:
        """The image, audio and video uploads (None where not given)."""
        return [await upload.read() if upload is not None else None for upload in (self.image, self.audio, self.video)]


def animation_fields(settings: ServeAppArgs, most_steps: int, where: str) -> type[BaseModel]:
    """The non-file fields of an animation request with this app's bounds and defaults (``most_steps`` denoising
    steps at most, ``where`` says which limit that is)."""
    limits, defaults = settings.limits, settings.sampling
    category = Literal[tuple(settings.categories)] if settings.categories else Annotated[str, Field(min_length=1, max_length=limits.max_category_chars)]
    return create_model(
        "AnimationFields",
        category=(category, Field(description="the class prompt, e.g. 'lions roaring'")),
        audio_guidance_scale=(float | None, Field(None, ge=limits.min_audio_guidance, le=limits.max_audio_guidance,
                                                  description=f"audio guidance (default {defaults.audio_guidance_scale:g})")),
        num_inference_steps=(int | None, Field(None, ge=1, le=most_steps,
                                               description=f"denoising steps (default {defaults.num_inference_steps}; at most {most_steps} {where})")),
        seed=(int | None, Field(None, ge=0, le=MAX_SEED, description=f"noise seed (default {defaults.seed})")),
        scheduler=(SchedulerName | None, Field(None, description=f"sampler (default {defaults.scheduler})")),
    )  # fmt: skip


def animation_forms(settings: ServeAppArgs) -> dict[str, type[BaseModel]]:
    """The fields of each animation route (by path) with this app's bounds: the job route takes up to
    ``limits.max_steps`` steps, the ``:sync`` route ``limits.max_sync_steps``."""
    limits = settings.limits
    return {
        ANIMATIONS: animation_fields(settings, limits.max_steps, "(limits.max_steps)"),
        ANIMATIONS_SYNC: animation_fields(settings, limits.max_sync_steps, "here (limits.max_sync_steps): longer jobs go through POST /v1/animations"),
    }


def job_settings(fields: type[BaseModel], form: AnimationForm, settings: ServeAppArgs) -> dict:
    """A job's settings: the form's values, checked against ``fields`` (a 422 like FastAPI's own), over the defaults."""
    given = {name: getattr(form, name) for name in fields.model_fields if getattr(form, name) is not None}
    try:
        checked = fields.model_validate(given)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    defaults = settings.sampling
    return {
        "category": checked.category,
        "num_inference_steps": checked.num_inference_steps or defaults.num_inference_steps,
        "scheduler": checked.scheduler or defaults.scheduler,
        "audio_guidance_scale": defaults.audio_guidance_scale if checked.audio_guidance_scale is None else checked.audio_guidance_scale,
        "seed": defaults.seed if checked.seed is None else checked.seed,
    }


# ------------------------------------------------------------------------------------------------ the schema


def _body_schema(schema: dict, path: str) -> dict:
    """The component schema of the multipart body of ``POST path``."""
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]


# Which uploads each multipart route takes, as JSON Schema: what the server enforces besides each field's type.
# An animation takes an image and a sound, or a video (with at most one of them, replacing its own).
_ANIMATION_UPLOADS = {"anyOf": [{"required": ["image", "audio"]}, {"required": ["video"]}], "not": {"required": ["image", "audio", "video"]}}
UPLOAD_RULES = {ANIMATIONS: _ANIMATION_UPLOADS, ANIMATIONS_SYNC: _ANIMATION_UPLOADS, "/v1/sync-score": {"required": ["video"]}}


def _drop_null(prop: dict) -> None:
    """A multipart field is sent or left out, never null: drop the null alternative of an optional field's schema."""
    kinds = [kind for kind in prop.pop("anyOf", []) if kind != {"type": "null"}]
    if len(kinds) == 1:
        prop.update(kinds[0])
    elif kinds:
        prop["anyOf"] = kinds


def openapi_schema(app: FastAPI, settings: ServeAppArgs) -> dict:
    """The OpenAPI schema of ``app`` as a deployment with ``settings`` serves it: FastAPI's schema of the routes,
    with the fields of each animation form (:func:`animation_forms`) bounded and described by ``settings``, the
    upload rules of each multipart route (:data:`UPLOAD_RULES`), and bearer auth only where the server asks for it."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path, fields in animation_forms(settings).items():
        properties = fields.model_json_schema()["properties"]
        for prop in properties.values():
            prop.pop("default", None)  # a missing field takes the server's default, which the description states
        _body_schema(schema, path)["properties"].update(properties)
    for path, rule in UPLOAD_RULES.items():
        body = _body_schema(schema, path)
        for prop in body["properties"].values():
            _drop_null(prop)
        body["required"] = sorted(set(body.get("required", [])) | set(rule.get("required", [])))
        body.update({key: value for key, value in rule.items() if key != "required"})
    if settings.auth.token_env is None:  # an open server: no route asks for a token, none answers 401 or 403
        schema["components"].pop("securitySchemes", None)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
                for status in ("401", "403"):
                    operation.get("responses", {}).pop(status, None)
    return schema


# ------------------------------------------------------------------------------------------------ auth


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


def check_bearer(token_sha256: str | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    """401 without a bearer token, 403 with a wrong one (``token_sha256`` None: no auth)."""
    if token_sha256 is None:
        return
    if credentials is None:
        raise ApiError(401, "unauthorized", "this server needs a bearer token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token_digest(credentials.credentials), token_sha256):
        raise ApiError(403, "forbidden", "the bearer token is not valid for this server")


# ------------------------------------------------------------------------------------------------ errors


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is over {max_bytes / 2**20:g} MB (limits.max_upload_mb)")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes()`` is refused with 413 before it is parsed, by its
    Content-Length or, for a chunked upload, as soon as the bytes read pass the limit."""

    def __init__(self, app, max_bytes: Callable[[], int]):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = self.max_bytes()
        too_large = BodyTooLarge(max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return await error_response(413, "upload_too_large", too_large.detail)(scope, receive, send)
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
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


async def _api_error(request: Request, exc: ApiError):
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _invalid(request: Request, exc: RequestValidationError):
    return error_response(422, "invalid_request", _validation_message(exc))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at the request's path (Starlette's own 405 names only those of
    the first route whose path matches)."""
    routes = request.app.router.routes
    return [m for m in _METHODS if any(route.matches({**request.scope, "method": m})[0] is Match.FULL for route in routes)]


async def _http_error(request: Request, exc: StarletteHTTPException):
    code = "upload_too_large" if exc.status_code == 413 else HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase else f"{request.method} {request.url.path}: {code.replace('_', ' ')}"
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        headers, message = {"Allow": ", ".join(allowed)}, f"{message}; {request.url.path} answers {', '.join(allowed)}"
    return error_response(exc.status_code, code, message, headers)


async def _unexpected(request: Request, exc: Exception):
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", f"the server failed on this request ({type(exc).__name__}); see the replica's log")


# What the app answers each kind of failure with: every error is JSON {error, message}.
ERROR_HANDLERS = {ApiError: _api_error, RequestValidationError: _invalid, StarletteHTTPException: _http_error, Exception: _unexpected}


# ------------------------------------------------------------------------------------------------ page and bodies


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


@functools.cache
def _page_template() -> str:
    return (importlib.resources.files("avsync_ray.serve") / "static" / "index.html").read_text()


def page(settings: ServeAppArgs, random_init_model: bool = False) -> str:
    """The web page with this app's settings in it; ``random_init_model``: the model served is a preset with
    random weights (the page says its clips are noise)."""
    settings_json = json.dumps({**public_settings(settings), "random_init_model": random_init_model})
    # "<\/" keeps any "</script>" inside a category name from closing the page's script.
    return _page_template().replace("/*SERVER_SETTINGS*/null", settings_json.replace("</", "<\\/"))


# Swagger UI's files, served by the app itself (from the pinned fastapi-offline package): /docs works with no
# network, as on an air-gapped cluster.
DOCS_ASSETS = "/docs/assets"


def docs_assets() -> StaticFiles:
    return StaticFiles(directory=str(importlib.resources.files("fastapi_offline") / "static"))


def docs_page(title: str) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, every file of it from :data:`DOCS_ASSETS`."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title} - Swagger UI", swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})  # fmt: skip  (no badge from the online validator)


# Printable ASCII stays as it is, but for "%" itself: a header value then always reads back with one unquote.
_HEADER_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")


def result_headers(view: dict) -> dict[str, str]:
    """The :data:`RESULT_HEADERS` of a finished job (``view``: its JobView)."""
    model = view.get("model") or {}
    lineage = model.get("lineage") or {}
    values = {
        "X-AVSync-Job": view["id"],
        "X-AVSync-Seed": view["settings"]["seed"],
        "X-AVSync-Model": model.get("name"),
        "X-AVSync-Model-Version": model.get("version"),
        "X-AVSync-Model-Id": lineage.get("model_id"),
        "X-AVSync-Training-Run": lineage.get("training_run_id"),
        "X-AVSync-Training-Step": lineage.get("step"),
        "X-AVSync-Dataset-Digest": (lineage.get("dataset") or {}).get("digest"),
    }
    return {name: "" if value is None else quote(str(value), safe=_HEADER_SAFE) for name, value in values.items()}


def video_response(mp4: bytes, view: dict) -> Response:
    headers = {**result_headers(view), "Content-Disposition": f'inline; filename="avsyncd-{view["id"]}.mp4"'}
    return Response(mp4, media_type="video/mp4", headers=headers)
