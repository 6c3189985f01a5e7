"""``avsync serve``: model sources (swapped in place), deployments, batching, request limits, auth and HTTP."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from avsync_ray.config.base import DType, RayConfig, StrictModel, TrackingURI, count_or_range, nested_default, resolve_local_path
from avsync_ray.config.sampling import InputLimits, SamplingConfig

# The official demo's class list for AVSync15 (reference §7): the prompts the released model was trained on.
AVSYNC15_CATEGORIES = [
    "baby babbling crying", "dog barking", "hammering", "striking bowling", "cap gun shooting", "chicken crowing",
    "frog croaking", "lions roaring", "machine gun shooting", "playing cello", "playing trombone", "playing trumpet",
    "playing violin fiddle", "sharpen knife", "toilet flushing",
]  # fmt: skip


PRESET_PREFIX = "preset:"  # a model built at start from a named preset (preset:tiny), not read from anywhere


def _model_source(value):
    """A model folder relative to the caller made absolute (replicas run elsewhere); URIs and presets stay."""
    return value if value is None or value.startswith(PRESET_PREFIX) else resolve_local_path(value)


ModelSourceURI = Annotated[str, AfterValidator(_model_source)]


class ModelSourceConfig(StrictModel):
    """What a model deployment serves. It is that deployment's Serve ``user_config``: a change swaps the model in
    ``reconfigure`` without restarting replicas."""

    source: ModelSourceURI | None = Field(
        ..., description="a model folder, models:/<name>@<alias> or models:/<name>/<version> (MLflow registry), or preset:tiny (random init, built at start)"
    )
    tracking_uri: TrackingURI = Field("sqlite:///mlruns.db", description="MLflow tracking URI that resolves models:/ sources")
    poll_registry_s: float | None = Field(
        None, gt=0, description="re-read the alias of a models:/<name>@<alias> source this often and swap in the version it points at (None: only on reconfigure)"
    )


class ReplicaSettings(StrictModel):
    """One Serve deployment's replicas: count or autoscaling range, resources and request bounds."""

    replicas: int | tuple[int, int] = Field(1, description="replicas, or [min, max]: Serve autoscales between them on ongoing requests")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share a GPU; > 0 puts the model on it)")
    max_ongoing_requests: int = Field(5, ge=1, description="requests one replica works on at once")
    max_queued_requests: int = Field(16, ge=1, description="requests each caller queues for this deployment before it is refused (Serve's default is unbounded)")
    target_ongoing_requests: float = Field(2.0, gt=0, description="ongoing requests per replica the autoscaler aims at (with a [min, max] range)")

    @field_validator("replicas")
    @classmethod
    def _positive_range(cls, value):
        return count_or_range(value)


IngressReplicas, INGRESS_REPLICAS = nested_default(
    ReplicaSettings(num_cpus=0.25, max_ongoing_requests=64, max_queued_requests=64),
    "HTTP ingress (validation, media decode, mp4 encode): a :sync request holds it while its job runs",
)


ModelReplicas, MODEL_REPLICAS = nested_default(
    ReplicaSettings(num_cpus=1.0, max_ongoing_requests=8, max_queued_requests=16), "the AVSyncD pipeline (one per replica)"
)


ScorerReplicas, SCORER_REPLICAS = nested_default(
    ReplicaSettings(num_cpus=0.25, max_ongoing_requests=4, max_queued_requests=8), "the sync classifier"
)


class ServeDeployments(StrictModel):
    ingress: IngressReplicas = INGRESS_REPLICAS
    model: ModelReplicas = MODEL_REPLICAS
    sync_score: ScorerReplicas = SCORER_REPLICAS


class BatchingConfig(StrictModel):
    max_batch_size: int = Field(4, ge=1, description="requests one pipeline call may hold (same steps, sampler, guidance and audio length); 1 turns batching off")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="how long a model replica waits for a batch to fill")


class ServeLimits(InputLimits):
    """Bounds on every request; a request outside them is answered 413, 415 or 422 before any model sees it (the
    input bounds are :class:`InputLimits`, with tighter defaults for a server)."""

    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest image, width x height (413)")
    max_video_pixels: int = Field(4096 * 2160, ge=1, description="largest video frame, width x height (413)")
    min_audio_s: float = Field(0.5, ge=0, description="shortest audio (422)")
    max_audio_s: float = Field(60.0, gt=0, description="longest audio upload (422); the model hears its centred 2 s")
    max_video_s: float = Field(120.0, gt=0, description="longest video upload (422)")
    max_upload_mb: float = Field(20.0, gt=0, description="largest request body (413)")
    max_steps: int = Field(100, ge=1, description="most num_inference_steps of a job (422)")
    max_sync_steps: int = Field(25, ge=1, description="most num_inference_steps on POST /v1/animations:sync (422): longer jobs go through the job API")
    min_audio_guidance: float = Field(1.0, description="lowest audio_guidance_scale (422; 1 turns audio guidance off)")
    max_audio_guidance: float = Field(12.0, description="highest audio_guidance_scale (422)")
    max_category_chars: int = Field(200, ge=1, description="longest free-text category when no category list is set (422)")
    max_active_jobs: int = Field(32, ge=1, description="queued and running jobs the app holds; more are refused with 503 and Retry-After")
    job_timeout_s: float = Field(900.0, gt=0, description="a job that has not finished this long after it was submitted fails")
    result_ttl_s: float = Field(1800.0, gt=0, description="finished jobs (and their videos) are kept this long")
    max_stored_results: int = Field(256, ge=1, description="most finished jobs kept; the oldest go first")
    retry_after_s: float = Field(5.0, ge=0, description="Retry-After of a 503 (app bound and Serve's own max_queued_requests)")

    @model_validator(mode="after")
    def _guidance_range(self):
        if self.min_audio_guidance > self.max_audio_guidance:
            raise ValueError(f"min_audio_guidance ({self.min_audio_guidance}) is above max_audio_guidance ({self.max_audio_guidance})")
        return self


class AuthConfig(StrictModel):
    token_env: str | None = Field(
        None, description="environment variable holding the bearer token every route but /healthz (and the static page and docs) requires (None: no auth)"
    )


class ServeHttp(StrictModel):
    host: str = Field("127.0.0.1", description="address Serve's HTTP proxy binds (0.0.0.0 inside a cluster)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    request_timeout_s: float | None = Field(
        600.0, gt=0, description="Serve answers 408 to a request that takes longer (cluster-wide, fixed when Serve starts)"
    )


class ServeAppSettings(StrictModel):
    """What every replica of the app is built with (the Serve application's ``args``: a change restarts it)."""

    sampling: SamplingConfig = Field(
        SamplingConfig(), description="clip geometry (frames, fps, size: None is the model's own) and the defaults of a request's sampling fields"
    )
    device: str = Field("auto", description="where the animation model runs: 'auto' (cuda when its replica has a GPU), 'cpu', 'cuda', ...")
    dtype: DType = Field("float32", description="the animation model's precision")
    batching: BatchingConfig = Field(BatchingConfig(), description="@serve.batch of the model deployment")
    limits: ServeLimits = Field(ServeLimits(), description="request bounds")
    auth: AuthConfig = Field(AuthConfig(), description="bearer-token auth")
    categories: list[str] = Field(AVSYNC15_CATEGORIES, description="the category prompts a request may use (empty: any text)")


SERVE_BUILDER = "avsync_ray.serve.app:build_app"  # the application builder a Serve config's import_path names


MODEL_DEPLOYMENTS = ("AVSyncDModel", "SyncScorer")  # the deployments whose user_config is a ModelSourceConfig


class ServeAppArgs(ServeAppSettings):
    """The Serve application's ``args`` as ``avsync serve`` writes them (``avsync_ray.serve.app:build_app``)."""

    sync_score: bool = Field(True, description="deploy the sync-score deployment and POST /v1/sync-score")


AnimationSource, ANIMATION_SOURCE = nested_default(
    ModelSourceConfig(source="preset:tiny"), "the animation model: the AVSyncDModel deployment's user_config"
)


ClassifierSource, CLASSIFIER_SOURCE = nested_default(
    ModelSourceConfig(source="preset:tiny"), "the sync classifier: the SyncScorer deployment's user_config (source null: no /v1/sync-score)"
)


class ServeConfig(ServeAppSettings):
    """``avsync serve``: the Serve application, its deployments and the HTTP proxy."""

    name: str = Field("avsyncd", pattern=r"^[A-Za-z0-9_-]+$", description="Serve application name")
    model: AnimationSource = ANIMATION_SOURCE
    sync_classifier: ClassifierSource = CLASSIFIER_SOURCE
    deployments: ServeDeployments = Field(ServeDeployments(), description="replicas of each deployment")
    http: ServeHttp = Field(ServeHttp(), description="Serve's HTTP proxy")
    ray: RayConfig = Field(RayConfig(), description="Ray")

    @model_validator(mode="after")
    def _consistent(self):
        if not self.model.source:
            raise ValueError("model.source is required: a pipeline folder, a models:/ URI or preset:tiny")
        if self.deployments.model.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"deployments.model.max_ongoing_requests ({self.deployments.model.max_ongoing_requests}) must be at least "
                f"batching.max_batch_size ({self.batching.max_batch_size}), or batches never fill"
            )
        return self
