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


class DatasetRef(BaseModel):
    name: str = Field(..., description="the MLflow dataset's name: <shard folder>/<split>")
    digest: str = Field(..., description="its digest: the shard index's content id, the same in the curation, training and evaluation runs")
    source: str | None = Field(None, description="where it is (its <split>.index.json); known from the MLflow store only")


class RunRef(BaseModel):
    run_id: str
    run_name: str | None = None


class ModelLineage(BaseModel):
    """Where a served model comes from in MLflow (avsync_ray.lineage.served_lineage), read once when it was loaded."""

    model_id: str | None = Field(None, description="its MLflow LoggedModel (models:/<model_id>)")
    model_name: str | None = Field(None, description="the LoggedModel's name (<training run>-step-<step>)")
    training_run_id: str | None = Field(None, description="the MLflow run that trained it")
    training_run_name: str | None = None
    step: int | None = Field(None, description="the training step of the exported checkpoint")
    dataset: DatasetRef | None = Field(None, description="what that run trained on")
    curation_runs: list[RunRef] = Field(default_factory=list, description="the curation runs that wrote that dataset, newest first")
    recorded_in: Literal["mlflow", "lineage.json"] | None = Field(
        None, description="mlflow: the registry version's LoggedModel in the store; lineage.json: what the exported folder records; null: nothing")
    missing: str | None = Field(None, description="why a link is unknown (a preset, a folder no export wrote, a run that logged no dataset); null: none is")


class ResultModel(BaseModel):
    """The model that made a result, with its lineage."""

    role: Literal["animation", "sync-score"] | None = None
    name: str | None = Field(None, description="registered model name, folder name or preset")
    source: str | None = Field(None, description="what the config names: a folder, a models:/ URI or a preset")
    version: int | None = Field(None, description="MLflow registry version (None for a folder or preset)")
    alias: str | None = None
    replica: str | None = Field(None, description="the Serve replica that answered")
    lineage: ModelLineage | None = Field(None, description="training run, step and dataset of the model (set once it is loaded)")


RESULT_MODEL_FIELDS = tuple(ResultModel.model_fields)  # what the model deployments tell about the model of each result


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
    model: ResultModel | None = Field(None, description="the model that made the video (set once the job started)")
    video_url: str | None = Field(None, description="where the mp4 is, once the job succeeded")


class ModelView(ResultModel):
    role: Literal["animation", "sync-score"]
    run_id: str | None = Field(None, description="the run of the registry version (its training run, for a version avsync export registered)")
    path: str | None = None
    device: str | None = None
    dtype: str | None = None
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
    model: ResultModel


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    message: str
