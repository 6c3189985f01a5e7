"""What crosses the serving app's boundaries: the generation request a model replica batches, its result, the
HTTP response bodies (their pydantic models are the OpenAPI schema) and the errors that become 4xx/503."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field


class ApiError(Exception):
    """An expected failure: its HTTP status, a stable machine-readable ``code`` and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def __reduce__(self):  # raised in one replica, answered by another
        return (type(self), (self.status, self.code, self.message, self.headers))


def overloaded(message: str, retry_after_s: float) -> ApiError:
    """503 with ``Retry-After``: the app holds as many jobs as it may; the client should come back later."""
    return ApiError(503, "overloaded", message, {"Retry-After": str(max(0, round(retry_after_s)))})


# ------------------------------------------------------------------------------------------------ model calls


@dataclass
class GenerationRequest:
    """One animation as the model deployment receives it: inputs already probed, decoded and bounded."""

    job_id: str
    image: np.ndarray  # (H, W, 3) uint8 at the output size
    audio: np.ndarray  # 16 kHz mono float32: the centred clip the model hears
    prompt: str
    seed: int
    num_inference_steps: int
    scheduler: str
    audio_guidance_scale: float

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call: the sampler, its step count and the guidance
        scale are per call, and a batch's audio clips must have one length."""
        return (self.num_inference_steps, self.scheduler, self.audio_guidance_scale, self.audio.shape, self.image.shape)


def group_compatible(items: Sequence, key: Callable[[object], Hashable]) -> list[list[int]]:
    """Indices of ``items`` grouped by ``key``, groups in order of first appearance, each in arrival order."""
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    return list(groups.values())


@dataclass
class GenerationResult:
    job_id: str
    frames: np.ndarray | None  # (T, H, W, 3) uint8; None when the job was cancelled
    audio: np.ndarray | None  # the 16 kHz clip to mux
    model: dict = field(default_factory=dict)  # the model that made it (ModelView fields)

    @property
    def cancelled(self) -> bool:
        return self.frames is None


# ------------------------------------------------------------------------------------------------ HTTP bodies


class ErrorBody(BaseModel):
    error: str = Field(..., description="stable code, e.g. upload_too_large, unsupported_media, invalid_request, not_found")
    message: str = Field(..., description="what was wrong, naming the field or file")


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = (JobStatus.queued, JobStatus.running)


class Progress(BaseModel):
    step: int = Field(..., description="denoising steps done")
    total_steps: int
    fraction: float


class JobSettings(BaseModel):
    category: str
    num_inference_steps: int
    scheduler: str
    audio_guidance_scale: float
    seed: int


class JobView(BaseModel):
    id: str
    status: JobStatus
    progress: Progress
    queue_position: int | None = Field(None, description="queued jobs ahead of this one (queued jobs only)")
    settings: JobSettings
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    model: dict | None = Field(None, description="name, source, version and alias of the model that made the video")
    video_url: str | None = Field(None, description="where the mp4 is, once the job succeeded")


class ModelView(BaseModel):
    role: Literal["animation", "sync-score"]
    name: str | None = Field(None, description="registered model name, folder name or preset")
    source: str | None = Field(None, description="what the config names: a folder, a models:/ URI or a preset")
    version: int | None = Field(None, description="MLflow registry version (None for a folder or preset)")
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None
    device: str | None = None
    dtype: str | None = None
    replica: str | None = Field(None, description="the Serve replica that answered")
    loaded_at: str | None = None
    gpu_memory_allocated_mb: float | None = None
    gpu_memory_peak_mb: float | None = None
    config: dict = Field(default_factory=dict, description="the model's own configuration (component classes, sizes)")
    stats: dict | None = Field(None, description="what this replica ran: batches, pipeline calls, the last call's steps")


class ModelsView(BaseModel):
    models: list[ModelView]
    generation: dict = Field(..., description="output size, frames, fps and the defaults of each request field")
    categories: list[str] = Field(..., description="allowed category prompts (empty: any text)")
    limits: dict = Field(..., description="upload, duration, step and guidance bounds")
    auth_required: bool
    sync_score: bool = Field(..., description="whether POST /v1/sync-score is served")


class PSync(BaseModel):
    a2v: float
    v2a: float


class SyncScoreView(BaseModel):
    score: float = Field(..., description="the classifier's raw score of the first 2 s of audio against the first 12 frames at 6 fps")
    psync: PSync | None = Field(None, description="P_sync of three clips 0.25 s apart from the video's middle (curation's rule)")
    psync_error: str | None = Field(None, description="why P_sync is missing (the video is too short for the three clips)")
    model: dict


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    message: str
