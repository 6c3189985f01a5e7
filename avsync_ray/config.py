"""Typed configuration: one pydantic tree per job, YAML presets packaged with the code, dotted overrides.

Precedence: schema defaults < packaged preset < user YAML file < ``--set a.b=value`` overrides. Unknown keys
are errors (``extra="forbid"``), and the resolved config is written next to every output.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Sequence, TypeVar, Union, get_args, get_origin

import fsspec
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

T = TypeVar("T", bound="StrictModel")


class ConfigError(ValueError):
    """A config that does not validate; the message lists every bad field by its dotted path, and ``problems``
    holds them as (dotted field, message, pydantic error type)."""

    problems: list[tuple[str, str, str]] = []


def missing_input(message: str) -> PydanticCustomError:
    """A field a job needs before it can run (a weight path, an input) that has no value yet; ``avsync config
    show`` displays a preset without them."""
    return PydanticCustomError("missing_input", message)


# Validation errors that only say a required value is not given yet.
MISSING_KINDS = ("missing", "missing_input")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _multiple_of_eight(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
    return value


PixelSize = Annotated[int, Field(ge=8), AfterValidator(_multiple_of_eight)]  # a frame side the VAE can encode


def resolve_local_path(value):
    """A relative local path means relative to where the command runs: it is made absolute when the config is
    validated, before any Ray worker (whose working folder is elsewhere) sees it. URIs (``s3://``, ``models:/``,
    ...) stay."""
    if value is None or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def resolve_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI with a relative local store (``sqlite:///mlruns.db``, ``mlruns``, ``file:mlruns``)
    made absolute against the caller's working folder, so every process (Ray Train's rank 0, actors) logs to the
    same store; server and absolute URIs stay."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if uri.startswith("file:") and not uri.startswith("file://"):
        return "file:" + os.path.abspath(uri[len("file:") :])
    if "://" not in uri and not uri.startswith(("databricks", "file:", "sqlite:")):
        return os.path.abspath(uri)
    return uri


PathOrURI = Annotated[str, AfterValidator(resolve_local_path)]  # a local path (made absolute) or a URI
TrackingURI = Annotated[str, AfterValidator(resolve_tracking_uri)]
DType = Literal["float32", "bfloat16", "float16"]  # torch dtypes by name (devices.torch_dtype maps them)


SchedulerName = Literal["pndm", "ddim", "dpmpp-2m", "dpmpp-2m-karras", "euler"]  # avsync_ray.pipelines.schedulers
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]  # torch.compile's modes


class SamplingConfig(StrictModel):
    """How a clip is sampled: the fields every generating command shares (and ``avsync eval`` can sweep)."""

    scheduler: SchedulerName = Field("pndm", description="sampler: pndm (the official one), ddim, dpmpp-2m, dpmpp-2m-karras, euler")
    num_inference_steps: int = Field(50, ge=1, description="denoising steps (PNDM 50 = 51 UNet calls, as the official release)")
    guidance_scale: float = Field(1.0, description="text guidance; off at 1.0 as in the official release")
    audio_guidance_scale: float = Field(4.0, description="audio classifier-free guidance (1, 4 or 8 in the paper)")
    seed: int = Field(123, description="noise seed")
    num_frames: int = Field(12, ge=2, description="frames per clip (frame 0 is the input image)")
    fps: float = Field(6.0, gt=0, description="frame rate: clips last num_frames / fps seconds")
    height: PixelSize | None = Field(None, description="output size (None: the model's own, from its training config, else 256)")
    width: PixelSize | None = Field(None, description="output width (None: the model's own, from its training config, else 256)")
    compile: bool = Field(False, description="torch.compile the UNet and VAE decoder (the first call at each shape compiles, for minutes)")
    compile_mode: CompileMode = Field("reduce-overhead", description="torch.compile mode; reduce-overhead adds CUDA graphs on a GPU")
    official_inplace_step: bool = Field(
        False, description="reproduce the official loop's in-place PNDM step exactly (see AVSyncDPipeline.__call__)"
    )


class GenerateConfig(SamplingConfig):
    """``avsync generate``: sampling settings (defaults are the official demo's) and where the model runs."""

    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: DType = "float32"


VIDEO_EXTENSIONS = [".mp4", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".m4v"]  # what a folder input contributes


class RangeRule(StrictModel):
    """Keep a window when ``min <= score <= max`` (either bound may be None)."""

    enabled: bool = Field(True, description="apply this rule")
    min: float | None = Field(None, description="lowest score kept (None: no lower bound)")
    max: float | None = Field(None, description="highest score kept (None: no upper bound)")

    @model_validator(mode="after")
    def _bounds_in_order(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}): the rule would reject every window")
        return self


class ShotsConfig(StrictModel):
    detector: Literal["content", "adaptive", "threshold"] = Field("content", description="PySceneDetect detector")
    threshold: float | None = Field(None, description="detector threshold; None = PySceneDetect's default for the detector")
    min_scene_len_s: float = Field(0.5, ge=0, description="shortest shot PySceneDetect reports")


class WindowsConfig(StrictModel):
    length_s: float = Field(3.0, gt=0, description="window length: every score is per window")
    stride_s: float = Field(0.5, gt=0, description="step between window starts, inside each shot")


class ImageBindStageConfig(StrictModel):
    """ImageBind image-audio (IA) and image-text (IT) alignment: min over 3 frames/audios of a window."""

    enabled: bool = Field(True, description="compute IA and IT (off: their columns stay empty and the rules are skipped)")
    checkpoint: PathOrURI | None = Field(None, description="path to imagebind_huge.pth (required when enabled)")
    preset: str = Field("imagebind-huge", description="ImageBind size matching the checkpoint")
    ia: RangeRule = Field(RangeRule(min=0.15), description="image-audio cosine rule")
    it: RangeRule = Field(RangeRule(min=0.22), description="image-text (label) cosine rule")


class SemanticStageConfig(StrictModel):
    """Semantic frame difference: max L2 between consecutive normalised frame embeddings (10 frames)."""

    enabled: bool = Field(True, description="compute the semantic difference")
    model: Literal["clip", "imagebind"] = Field("clip", description="clip: a CLIP vision folder; imagebind: its vision branch")
    checkpoint: PathOrURI | None = Field(None, description="CLIP vision folder (transformers) or imagebind_huge.pth")
    preset: str = Field("imagebind-huge", description="ImageBind size when model=imagebind")
    rule: RangeRule = Field(RangeRule(min=0.17, max=0.55), description="semantic difference rule")


class SyncStageConfig(StrictModel):
    """P_sync from the sync classifier: 3 clips 0.25 s apart from the window's middle, both directions."""

    enabled: bool = Field(True, description="compute P_sync (e.g. off before a classifier is trained)")
    classifier: PathOrURI | None = Field(None, description="SyncClassifier folder or the official modules/ folder")
    a2v: RangeRule = Field(RangeRule(min=0.341), description="audio-to-video P_sync rule")
    v2a: RangeRule = Field(RangeRule(min=0.341), description="video-to-audio P_sync rule")


def _count_or_range(value: int | tuple[int, int]) -> int | tuple[int, int]:
    """A fixed count of actors or replicas, or an autoscaling [min, max] range (both at least 1)."""
    low, high = (value, value) if isinstance(value, int) else value
    if not 1 <= low <= high:
        raise ValueError(f"must be a positive count or [min, max] with 1 <= min <= max, got {value}")
    return value


class ActorConfig(StrictModel):
    """Placement of a Ray Data actor pool (one model copy per actor): every batch job and model stage uses it."""

    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor; leave CPUs for the decode tasks on small machines")
    concurrency: int | tuple[int, int] = Field(
        1, description="actors in the pool, or [min, max]: the pool grows into free resources (nodes joining) and shrinks when idle"
    )
    device: str = Field("auto", description="'auto': cuda when the actor has a GPU, else cpu; or 'cpu', 'cuda', 'cuda:1'")
    dtype: DType = Field("float32", description="model precision")

    @field_validator("concurrency")
    @classmethod
    def _positive_range(cls, value):
        return _count_or_range(value)


class FiltersConfig(StrictModel):
    pixel_diff: RangeRule = Field(RangeRule(min=0.01, max=0.15), description="raw pixel difference rule (10 frames, in [0, 1])")
    audio_peak: RangeRule = Field(RangeRule(min=0.03), description="max |waveform| rule")
    semantic: SemanticStageConfig = Field(SemanticStageConfig(), description="semantic frame difference stage")
    imagebind: ImageBindStageConfig = Field(ImageBindStageConfig(), description="ImageBind IA/IT stage")
    sync: SyncStageConfig = Field(SyncStageConfig(), description="P_sync stage")


class ShardsConfig(StrictModel):
    split: str = Field("train", pattern=r"^[A-Za-z0-9-]+$", description="shard name prefix: <split>-000000.tar")
    target_size_mb: float = Field(512.0, gt=0, description="a shard is closed once it reaches this size")
    max_samples: int = Field(5000, ge=1, description="most clips in one shard")
    short_side: int = Field(256, ge=16, description="clip frames are scaled down so their shorter side is this")
    crf: int = Field(18, ge=0, le=51, description="x264 quality of the clip mp4s (lower is better)")
    x264_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = Field(
        "faster", description="x264 speed/size trade-off of the clip mp4s"
    )
    max_clip_s: float | None = Field(None, gt=0, description="split merged clips longer than this")

    @field_validator("short_side")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (H.264 yuv420p)")
        return value


class TrackingConfig(StrictModel):
    """The MLflow run a job logs (from the driver, or rank 0 of a training run)."""

    enabled: bool = Field(True, description="log an MLflow run")
    uri: TrackingURI = Field("sqlite:///mlruns.db", description="any MLflow tracking URI (a relative SQLite or folder store is relative to where the command runs)")
    experiment: str = Field(..., description="MLflow experiment")
    run_name: str | None = Field(None, description="MLflow run name (None: named after the job's output or run name)")


def job_tracking(experiment: str, description: str = "MLflow"):
    """A job's ``tracking`` field: a :class:`TrackingConfig` whose ``experiment`` defaults to the job's own,
    also when a file or ``--set`` gives only some of its fields (``tracking: {uri: ...}``)."""

    def with_experiment(value):
        return {"experiment": experiment, **value} if isinstance(value, dict) else value

    kind = Annotated[TrackingConfig, BeforeValidator(with_experiment)]
    return kind, Field(TrackingConfig(experiment=experiment), description=description)


CurationTracking, CURATION_TRACKING = job_tracking("avsync/curation")
SyncClassifierTracking, SYNC_CLASSIFIER_TRACKING = job_tracking("avsync/sync-classifier", "MLflow (rank 0 of training logs)")
AVSyncDTracking, AVSYNCD_TRACKING = job_tracking("avsync/avsyncd", "MLflow (rank 0 logs)")
PrecomputeTracking, PRECOMPUTE_TRACKING = job_tracking("avsync/precompute")
EvalSyncTracking, EVAL_SYNC_TRACKING = job_tracking("avsync/sync-classifier")


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None starts a local Ray for this command; 'auto' or ray://... joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started by this command")
    progress_bars: bool | None = Field(None, description="Ray Data progress bars (None: when the output is a terminal)")
    verbose: bool = Field(False, description="also show Ray's own internal logs (off: only this job's progress and warnings)")


class CurateConfig(StrictModel):
    """``avsync curate``: raw audio-video -> filtered WebDataset shards (paper §5.2 recipe and thresholds)."""

    input: PathOrURI | list[PathOrURI] = Field(..., description="folder, glob, list of URIs, or a CSV/Parquet manifest (uri, label[, id])")
    output: PathOrURI = Field(..., description="output folder, any fsspec URI")
    video_extensions: list[str] = Field(VIDEO_EXTENSIONS, description="files a folder input contributes")
    max_duration_s: float | None = Field(
        None, gt=0, description="longer videos are recorded as failed ('too_long'); None: any length (memory does not grow with it)"
    )
    shots: ShotsConfig = Field(ShotsConfig(), description="shot detection")
    windows: WindowsConfig = Field(WindowsConfig(), description="windows inside shots")
    filters: FiltersConfig = Field(FiltersConfig(), description="scores and their rules")
    imagebind_actor: ActorConfig = Field(ActorConfig(), description="actor pool of the semantic/ImageBind stage")
    sync_actor: ActorConfig = Field(ActorConfig(), description="actor pool of the P_sync stage")
    shards: ShardsConfig = Field(ShardsConfig(), description="clip encoding and WebDataset shards")
    tracking: CurationTracking = CURATION_TRACKING
    ray: RayConfig = Field(RayConfig(), description="Ray")

    @model_validator(mode="after")
    def _models_have_weights(self):
        stages = self.filters
        if stages.imagebind.enabled and not stages.imagebind.checkpoint:
            raise missing_input("filters.imagebind.enabled needs filters.imagebind.checkpoint (or set it to false)")
        if stages.semantic.enabled and not stages.semantic.checkpoint:
            raise missing_input("filters.semantic.enabled needs filters.semantic.checkpoint (or set it to false)")
        if stages.sync.enabled and not stages.sync.classifier:
            raise missing_input("filters.sync.enabled needs filters.sync.classifier (or set it to false)")
        return self


class DemoLearningChecks(StrictModel):
    """How far each model of ``avsync demo`` must have learned before it reports success (it fails otherwise)."""

    min_heldout_accuracy: float = Field(
        0.5, ge=0, le=1, description="the sync classifier's held-out a2v and v2a accuracy, each (chance: 11/31 = 0.35 at 31 clips, +-5)"
    )
    min_psync_margin: float = Field(
        0.3, ge=0, le=1, description="share of the in-sync windows P_sync keeps minus the share of the shifted windows it keeps"
    )
    max_avsyncd_loss_ratio: float = Field(0.8, gt=0, description="AVSyncD's last logged training loss over its first one")


class DemoConfig(StrictModel):
    """``avsync demo``: the embedded end-to-end run on a fresh machine."""

    output_dir: PathOrURI = Field("demo_out", description="everything the demo writes (its runs/ are replaced on each run)")
    model_preset: Literal["tiny"] = Field("tiny", description="model sizes (tiny: CPU-fast, random init)")
    seed: int = Field(0, description="corpora, initial weights and data order")
    corpus_videos: int = Field(14, ge=1, description="synthetic videos of every category in the main corpus")
    classifier_videos: int = Field(16, ge=1, description="in-sync synthetic videos the classifier trains on")
    classifier_test_videos: int = Field(16, ge=1, description="held-out in-sync videos it is evaluated on")
    sync_training_steps: int = Field(400, ge=1, description="classifier optimizer steps")
    avsyncd_training_steps: int = Field(40, ge=1, description="AVSyncD optimizer steps")
    tracking_uri: TrackingURI = Field("sqlite:///mlruns.db", description="MLflow store of every run")
    ray_num_cpus: int | None = Field(2, ge=1, description="CPUs of the local Ray the demo starts")
    generate: GenerateConfig = Field(GenerateConfig(), description="sampling of the final video (and of the evaluation)")
    eval_videos: int = Field(2, ge=1, description="held-out videos the final `avsync eval` step evaluates (3 clips each)")
    checks: DemoLearningChecks = Field(DemoLearningChecks(), description="how far each model must have learned")


# ------------------------------------------------------------------------------------------------ training


class ShardsInput(StrictModel):
    """Curated WebDataset shards: ``<root>/<split>.index.json`` lists them (see shards/README.md)."""

    root: PathOrURI = Field(..., description="shard folder (any fsspec URI) holding <split>.index.json")
    split: str = Field("train", description="which split's index to read")


class LoaderConfig(StrictModel):
    batch_size: int = Field(4, ge=1, description="micro-batch per worker (the paper: 4 per GPU)")
    num_workers: int = Field(0, ge=0, description="decode processes per Ray Train worker (torch DataLoader workers)")
    shuffle_buffer: int = Field(64, ge=0, description="samples mixed in each worker's shuffle buffer")
    randflip: bool = Field(True, description="random horizontal flip")


class OptimizerConfig(StrictModel):
    """torch.optim.AdamW (the client optimizer DeepSpeed wraps) and its learning-rate schedule."""

    lr: float = Field(1e-4, gt=0, description="learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up over this many optimizer steps, then constant")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping (global L2 norm)")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="AdamW kernels: fused (one kernel), foreach (multi-tensor) or for-loop; auto: fused on CUDA, foreach on CPU"
    )


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="engine precision (fp16 is not offered: CPUs lack it)")
    bucket_size: int = Field(5_000_000, ge=1, description="ZeRO reduce/allgather bucket elements (small buckets cap the peak)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    compile: bool = Field(False, description="torch.compile the trained UNet's forward and backward inside the engine (AVSyncD)")


class CheckpointSettings(StrictModel):
    every_n_steps: int = Field(1000, ge=1, description="save a DeepSpeed checkpoint every this many optimizer steps (and at the end)")
    num_to_keep: int | None = Field(2, ge=1, description="checkpoints Ray Train keeps (None: all)")


class ScalingSettings(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU when use_gpu)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL; CPU workers use gloo")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")


class RunSettings(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="run name: checkpoints go to <storage_path>/<name>")
    storage_path: PathOrURI = Field("runs", description="Ray Train storage (a local folder or s3://...)")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint before the run fails")
    resume: str | None = Field(
        None, description="'latest' continues this run from its newest checkpoint; a checkpoint URI starts from that one"
    )

    @field_validator("resume")
    @classmethod
    def _checkpoint_path(cls, value: str | None) -> str | None:
        return value if value == "latest" else resolve_local_path(value)


class TrainCommonConfig(StrictModel):
    max_steps: int = Field(..., ge=1, description="optimizer steps")
    seed: int = Field(123, description="initial weights (the same on every rank), data order and noise (distinct per rank and per resume)")
    data: ShardsInput = Field(..., description="training shards")
    loader: LoaderConfig = Field(LoaderConfig(), description="data loading inside each worker")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="AdamW and schedule")
    deepspeed: DeepSpeedSettings = Field(DeepSpeedSettings(), description="DeepSpeed engine")
    checkpoint: CheckpointSettings = Field(CheckpointSettings(), description="checkpoint policy")
    scaling: ScalingSettings = Field(ScalingSettings(), description="Ray Train workers")
    run: RunSettings = Field(..., description="run name, storage and resume")
    tracking: TrackingConfig = Field(..., description="MLflow (rank 0 logs); each task's config sets its experiment")
    log_every_n_steps: int = Field(10, ge=1, description="average and log the metrics every this many optimizer steps")
    ray: RayConfig = Field(RayConfig(), description="Ray")


class SyncModelSettings(StrictModel):
    base_width: int = Field(64, ge=1, description="encoder width: 64 is the official network, smaller ones are tiny presets")
    image_size: int = Field(224, ge=16, description="video frames are resized and centre-cropped to this")
    init: Literal["random", "avid_cma", "pretrained"] = Field("avid_cma", description="initial weights")
    avid_cma: PathOrURI | None = Field(None, description="AVID-CMA checkpoint (init=avid_cma)")
    pretrained: PathOrURI | None = Field(None, description="SyncClassifier folder or official modules/ folder (init=pretrained)")


class SyncClipsSettings(StrictModel):
    num_clips: int = Field(21, ge=2, description="clips per video; each is a negative of the others")
    shift_s: float = Field(0.2, gt=0, description="seconds between consecutive clip starts")
    tau: float = Field(0.1, gt=0, description="contrastive temperature")


class TrainSyncConfig(TrainCommonConfig):
    """``avsync train-sync``: the contrastive sync classifier (paper §1.2, reference §7.3)."""

    model: SyncModelSettings = Field(SyncModelSettings(), description="classifier size and initial weights")
    clips: SyncClipsSettings = Field(SyncClipsSettings(), description="time-shifted clips of one video")
    tracking: SyncClassifierTracking = SYNC_CLASSIFIER_TRACKING

    @model_validator(mode="after")
    def _init_has_weights(self):
        for setting in ("gradient_checkpointing", "compile"):
            if getattr(self.deepspeed, setting):
                raise ValueError(f"deepspeed.{setting} applies to AVSyncD's UNet; the classifier does not support it")
        if self.model.init == "avid_cma" and not self.model.avid_cma:
            raise missing_input("model.init=avid_cma needs model.avid_cma (the AVID-CMA checkpoint), or set model.init=random")
        if self.model.init == "pretrained" and not self.model.pretrained:
            raise missing_input("model.init=pretrained needs model.pretrained (a classifier folder)")
        return self


class AVSyncDModelSettings(StrictModel):
    init: Literal["tiny", "sd15", "pipeline"] = Field(
        "sd15", description="tiny: random-init toy sizes; sd15: inflate SD1.5 + ImageBind; pipeline: an AVSyncD pipeline folder"
    )
    sd15: PathOrURI | None = Field(None, description="Stable Diffusion 1.5 diffusers folder (init=sd15)")
    imagebind: PathOrURI | None = Field(None, description="imagebind_huge.pth (init=sd15)")
    imagebind_preset: str = Field("imagebind-huge", description="ImageBind size matching model.imagebind")
    pipeline: PathOrURI | None = Field(None, description="AVSyncD pipeline folder: convert-official output or an export (init=pipeline)")
    frozen_dtype: Literal["float32", "bfloat16"] = Field("float32", description="VAE, text and audio encoders (bfloat16 on GPU)")
    train_image_layers: bool = Field(
        False, description="also train the Stable Diffusion layers (only sensible for random-init tiny models; the paper freezes them)"
    )


class AVSyncDInputs(StrictModel):
    """What the frozen encoders see: the model they come from and the clip geometry (``train`` and
    ``precompute`` share these, and a run on precomputed shards must match them)."""

    model: AVSyncDModelSettings = Field(AVSyncDModelSettings(), description="where the model starts")
    num_frames: int = Field(12, ge=2, description="frames per clip (frame 0 is the image condition)")
    fps: float = Field(6.0, gt=0, description="clip frame rate: clips last num_frames / fps seconds")
    height: PixelSize = Field(256, description="clip height (128 for The Greatest Hits)")
    width: PixelSize = Field(256, description="clip width")

    @model_validator(mode="after")
    def _init_has_weights(self):
        needs = {"sd15": ("sd15", "imagebind"), "pipeline": ("pipeline",), "tiny": ()}[self.model.init]
        missing = [f"model.{name}" for name in needs if not getattr(self.model, name)]
        if missing:
            raise missing_input(f"model.init={self.model.init} needs {', '.join(missing)}")
        return self


class TrainConfig(AVSyncDInputs, TrainCommonConfig):
    """``avsync train``: AVSyncD's temporal and audio modules on curated clips (paper §3.1-3.3, reference §4)."""

    precomputed: bool = Field(
        False, description="read VAE moments and ImageBind tokens from shards written by `avsync precompute` instead of encoding every clip"
    )
    audio_drop_prob: float = Field(0.2, ge=0, le=1, description="probability a sample's audio becomes the null audio")
    text_drop_prob: float = Field(0.0, ge=0, le=1, description="probability a sample's prompt becomes the empty prompt")
    preview_every_n_steps: int | None = Field(None, ge=1, description="log a generated sample video to MLflow this often (None: never)")
    preview_inference_steps: int = Field(25, ge=1, description="sampling steps of the preview videos")
    tracking: AVSyncDTracking = AVSYNCD_TRACKING


class PrecomputeConfig(AVSyncDInputs):
    """``avsync precompute``: a copy of training shards with the frozen encoders' outputs of fixed windows added,
    so ``avsync train --set precomputed=true`` skips the VAE and ImageBind."""

    input: ShardsInput = Field(..., description="shards to read (curation output)")
    output: PathOrURI = Field(..., description="folder of the new shards and their index (any fsspec URI)")
    seed: int = Field(123, description="the training run's seed (model.init=tiny draws its random encoders from it)")
    windows_per_clip: int = Field(3, ge=1, description="training windows per sample, evenly spread over it (1: the middle one)")
    flip_variants: bool = Field(True, description="also encode each window mirrored, so training keeps its random flip")
    batch_size: int = Field(8, ge=1, description="windows per encoder call")
    actor: ActorConfig = Field(ActorConfig(), description="the encoding actors (one shard at a time each)")
    tracking: PrecomputeTracking = PRECOMPUTE_TRACKING
    ray: RayConfig = Field(RayConfig(), description="Ray")

    @model_validator(mode="after")
    def _encoders_in_training_precision(self):
        if self.actor.dtype != self.model.frozen_dtype:
            raise ValueError(
                f"actor.dtype ({self.actor.dtype}) must equal model.frozen_dtype ({self.model.frozen_dtype}): "
                "features are only valid for the encoders at the training run's precision"
            )
        return self


class EvalSyncConfig(StrictModel):
    """``avsync eval-sync``: a2v and v2a accuracy, 31 clips 0.04 s apart, correct within +-5 (reference §7.4)."""

    classifier: PathOrURI = Field(..., description="SyncClassifier folder (an export) or the official modules/ folder")
    data: ShardsInput = Field(..., description="test shards")
    num_clips: int = Field(31, ge=3, description="clips centred in each test clip")
    shift_s: float = Field(0.04, gt=0, description="seconds between clip starts")
    tolerance: int = Field(5, ge=0, description="a prediction within this many clips of the centre is correct")
    batch_size: int = Field(8, ge=1, description="test clips per model call")
    actor: ActorConfig = Field(ActorConfig(), description="the scoring actors")
    tracking: EvalSyncTracking = EVAL_SYNC_TRACKING
    ray: RayConfig = Field(RayConfig(), description="Ray")


EvalTracking, EVAL_TRACKING = job_tracking("avsync/eval", "MLflow: one parent run, a nested run per setting and baseline")
EvalMetric = Literal["fid", "fvd", "ia", "it", "relsync", "alignsync"]
EVAL_METRICS: list[str] = ["fid", "fvd", "ia", "it", "relsync", "alignsync"]
# Sampling fields a sweep may vary; the clip geometry (frames, fps, size) is the test set's and stays fixed.
SWEEPABLE = ("scheduler", "num_inference_steps", "guidance_scale", "audio_guidance_scale", "seed", "official_inplace_step")


class FeatureNetworksConfig(StrictModel):
    """The evaluation's networks, each read from a path (nothing is downloaded)."""

    fid_inception: PathOrURI | None = Field(None, description="pytorch-fid's FID Inception weights, pt_inception-2015-12-05-6726825d.pth (FID)")
    i3d: PathOrURI | None = Field(None, description="StyleGAN-V's TorchScript I3D, i3d_torchscript.pt (FVD)")
    imagebind: PathOrURI | None = Field(None, description="imagebind_huge.pth (IA, IT, AlignSync)")
    imagebind_preset: str = Field("imagebind-huge", description="ImageBind size matching features.imagebind")
    sync_classifier: PathOrURI | None = Field(None, description="SyncClassifier folder or the official modules/ folder (RelSync, AlignSync)")


class BootstrapConfig(StrictModel):
    samples: int = Field(100, ge=0, description="bootstrap replicates over test videos for the FID and FVD intervals (0: none)")
    confidence: float = Field(0.95, gt=0, lt=1, description="interval coverage")
    seed: int = Field(0, description="resampling seed")


class EvalConfig(StrictModel):
    """``avsync eval``: generate the test clips and compute FID, FVD, IA, IT, RelSync and AlignSync (paper §3.4)."""

    model: PathOrURI = Field(..., description="AVSyncD pipeline folder or an MLflow registry URI (models:/name@alias, models:/name/3)")
    test: PathOrURI | list[PathOrURI] = Field(
        ..., description="test shards (a folder with <test_split>.index.json), or raw videos: folder, glob, URI list, CSV/Parquet manifest"
    )
    test_split: str = Field("test", description="split of the test shards")
    output: PathOrURI = Field(..., description="output folder (any fsspec URI): generated/, report/, per-clip table, config")
    video_extensions: list[str] = Field(VIDEO_EXTENSIONS, description="files a folder of raw test videos contributes")
    max_videos: int | None = Field(None, ge=1, description="evaluate only the first N test videos (in shard order, or by URI)")
    clips_per_video: int = Field(3, ge=1, description="clips per test video at linspace(0, duration - 2 s, n): head, centre, tail")
    protocol: Literal["official", "standard"] = Field(
        "official", description="official: ASVA's 229-px FID and 224-px bicubic FVD inputs; standard: pytorch-fid's and StyleGAN-V's"
    )
    metrics: list[EvalMetric] = Field(EVAL_METRICS, description="metrics to compute")
    sampling: SamplingConfig = Field(SamplingConfig(seed=0), description="generation settings (the official evaluation: seed 0)")
    clip_seeds: Literal["derived", "shared"] = Field(
        "derived", description="derived: a seed from (sampling.seed, video, clip); shared: sampling.seed for every clip (as animation_gen.py)"
    )
    sweep: dict[str, list[Any]] = Field({}, description="sampling field -> values; every combination is one setting (--sweep key=v1,v2)")
    baselines: list[Literal["static", "no_audio"]] = Field(
        [], description="static: the first frame repeated; no_audio: the model with the null audio (at the unswept settings)"
    )
    features: FeatureNetworksConfig = Field(FeatureNetworksConfig(), description="feature networks")
    bootstrap: BootstrapConfig = Field(BootstrapConfig(), description="FID/FVD confidence intervals")
    frechet: Literal["sqrtm", "eigen"] = Field(
        "sqrtm", description="sqrtm: the official scipy.linalg.sqrtm with its 1e-6 retry; eigen: the same distance by symmetric eigenproblems (faster)"
    )
    cache: PathOrURI = Field("eval_cache", description="folder (any fsspec URI) of real-clip features, shared by every run on a test set")
    generate_batch_size: int = Field(4, ge=1, description="clips per pipeline call")
    feature_batch_size: int = Field(8, ge=1, description="clips per feature-network call")
    generate_actor: ActorConfig = Field(ActorConfig(num_gpus=1.0), description="the generating actors (one pipeline each)")
    feature_actor: ActorConfig = Field(ActorConfig(num_gpus=1.0), description="the feature actors (every feature network, once each)")
    tracking: EvalTracking = EVAL_TRACKING
    ray: RayConfig = Field(RayConfig(), description="Ray")

    @field_validator("sweep")
    @classmethod
    def _sweepable(cls, sweep: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in sweep.items():
            if key not in SWEEPABLE:
                raise ValueError(f"cannot sweep {key!r}; sweepable sampling fields: {', '.join(SWEEPABLE)}")
            if not values or len(set(map(str, values))) != len(values):
                raise ValueError(f"sweep {key!r} needs distinct values, got {values}")
            for value in values:  # each value must be valid for its field
                SamplingConfig.model_validate({key: value})
        return sweep

    @model_validator(mode="after")
    def _metrics_have_networks(self):
        needs = {"fid": ["fid_inception"], "fvd": ["i3d"], "ia": ["imagebind"], "it": ["imagebind"], "relsync": ["sync_classifier"],
                 "alignsync": ["imagebind", "sync_classifier"]}  # fmt: skip
        missing = sorted({f"features.{n}" for m in self.metrics for n in needs[m] if not getattr(self.features, n)})
        if missing:
            raise missing_input(f"metrics {self.metrics} need {', '.join(missing)} (or leave those metrics out of `metrics`)")
        return self


def nested_default(default: StrictModel, description: str):
    """A nested field whose default instance differs from its class's defaults: when a file or ``--set`` gives only
    some of its keys, the others keep ``default``'s values (not the class's)."""

    def over_default(value):
        return {**default.model_dump(), **value} if isinstance(value, dict) else value

    return Annotated[type(default), BeforeValidator(over_default)], Field(default, description=description)


# ------------------------------------------------------------------------------------------------ serving

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
        return _count_or_range(value)


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


class ServeLimits(StrictModel):
    """Bounds on every request; a request outside them is answered 413, 415 or 422 before any model sees it."""

    max_upload_mb: float = Field(20.0, gt=0, description="largest request body (413)")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest image, width x height (413)")
    max_video_pixels: int = Field(4096 * 2160, ge=1, description="largest video frame, width x height (413)")
    min_audio_s: float = Field(0.5, ge=0, description="shortest audio (422)")
    max_audio_s: float = Field(60.0, gt=0, description="longest audio upload (422); the model hears its centred 2 s")
    max_video_s: float = Field(120.0, gt=0, description="longest video upload (422)")
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
    def _ranges(self):
        if self.min_audio_guidance > self.max_audio_guidance:
            raise ValueError(f"min_audio_guidance ({self.min_audio_guidance}) is above max_audio_guidance ({self.max_audio_guidance})")
        if self.min_audio_s >= self.max_audio_s:
            raise ValueError(f"min_audio_s ({self.min_audio_s}) must be below max_audio_s ({self.max_audio_s})")
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


def preset_schema(name: str) -> type[StrictModel]:
    """The config tree a packaged preset fills (presets named after a verb, optionally with a ``-suffix``)."""
    schemas = {"generate": GenerateConfig, "demo": DemoConfig, "curate": CurateConfig, "train-sync": TrainSyncConfig,
               "train": TrainConfig, "eval-sync": EvalSyncConfig, "precompute": PrecomputeConfig, "eval": EvalConfig,
               "serve": ServeConfig}  # fmt: skip
    for verb in sorted(schemas, key=len, reverse=True):
        if name == verb or name.startswith(f"{verb}-"):
            return schemas[verb]
    raise ConfigError(f"no config schema for preset {name!r}; presets start with one of {sorted(schemas)}")


def _read_yaml(source) -> dict[str, Any]:
    data = yaml.safe_load(source) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config file must hold a mapping at the top level, got {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in (importlib.resources.files("avsync_ray") / "configs").iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    resource = importlib.resources.files("avsync_ray") / "configs" / f"{name}.yaml"
    if not resource.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {preset_names()}")
    return _read_yaml(resource.read_text())


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _leaf_annotation(schema: type[BaseModel], parts: Sequence[str]):
    """The annotation of the field at dotted ``parts`` of ``schema`` (None where the path is not a field)."""
    annotation: Any = schema
    for part in parts:
        models = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models or part not in models[0].model_fields:
            return None
        annotation = models[0].model_fields[part].annotation
    return annotation


def _string_kinds(annotation) -> tuple[bool, bool, bool]:
    """(takes a plain string, also takes None, also takes a list) for a field annotation."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    options = [get_args(a)[0] if get_origin(a) is Annotated else a for a in options]
    text = any(a is str or (get_origin(a) is Literal and all(isinstance(v, str) for v in get_args(a))) for a in options)
    return text, type(None) in options, any(get_origin(a) is list for a in options)


def parse_override_value(raw: str, annotation) -> Any:
    """A ``--set`` value parsed by the type of the field it sets: string fields keep the text as it is (a run
    named ``2024``, a path with `` #`` in it), ``null`` clears an optional field, a string-or-list field takes a
    ``[...]`` YAML list; every other field parses the text as YAML (``1`` -> int, ``true`` -> bool, ``[1, 2]``)."""
    text, optional, listed = _string_kinds(annotation)
    if not text:
        return yaml.safe_load(raw) if raw.strip() else ""
    if optional and raw.strip() in ("null", "Null", "NULL", "~"):
        return None
    if listed and raw.lstrip().startswith("["):
        return yaml.safe_load(raw)
    return raw


def apply_override(data: dict[str, Any], override: str, schema: type[BaseModel] | None = None) -> dict[str, Any]:
    """Apply ``a.b.c=value``, the value parsed by :func:`parse_override_value` for the field of ``schema`` it
    sets (as YAML where there is no schema or no such field: validation then names the bad key)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    parts = key.strip().split(".")
    annotation = _leaf_annotation(schema, parts) if schema is not None else None
    return set_value(data, parts, parse_override_value(raw, annotation))


def set_value(data: dict[str, Any], parts: Sequence[str], value: Any) -> dict[str, Any]:
    """``data`` with ``value`` at the dotted path ``parts`` (as given: no parsing)."""
    node: dict[str, Any] = {}
    leaf = node
    for part in parts[:-1]:
        leaf = leaf.setdefault(part, {})
    leaf[parts[-1]] = value
    return deep_merge(data, node)


def load_config(
    schema: type[T],
    preset: str | None = None,
    path: str | None = None,
    overrides: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> T:
    """Build a validated ``schema`` from a packaged preset, a YAML file (any fsspec URI), ``values`` (dotted
    keys set verbatim, e.g. a command's positional arguments) and ``--set`` overrides, in that order."""
    data: dict[str, Any] = read_preset(preset) if preset else {}
    if path:
        with fsspec.open(path, "r") as handle:
            data = deep_merge(data, _read_yaml(handle))
    for dotted, value in (values or {}).items():
        data = set_value(data, dotted.split("."), value)
    for override in overrides:
        data = apply_override(data, override, schema)
    return validate_config(schema, data)


def validate_config(schema: type[T], data: dict[str, Any]) -> T:
    """``schema.model_validate(data)``, with every problem named by its dotted field in one :class:`ConfigError`."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])) or "<root>", e["msg"], e["type"]) for e in exc.errors()]
        error = ConfigError(f"invalid {schema.__name__}: " + "; ".join(f"{where}: {message}" for where, message, _ in problems))
        error.problems = problems
        raise error from None


def show_config(schema: type[T], preset: str | None = None, path: str | None = None, overrides: Sequence[str] = ()) -> tuple[str, list[str]]:
    """A preset (with a file and overrides) as YAML, and what must still be set before it can run. A preset that
    lacks only its inputs (paths, weights: the job's arguments) is shown with those fields empty; any other
    problem is a :class:`ConfigError`."""
    try:
        return dump_config(load_config(schema, preset, path, overrides)), []
    except ConfigError as error:
        if not error.problems or any(kind not in MISSING_KINDS for _, _, kind in error.problems):
            raise
        missing = [f"{where}: {message}" if kind == "missing_input" else where for where, message, kind in error.problems]
    data: dict[str, Any] = {}
    for name, _, default, _ in describe_fields(schema):
        data = set_value(data, name.split("."), None if default == "(required)" else json.loads(default))
    data = deep_merge(data, read_preset(preset) if preset else {})
    if path:
        with fsspec.open(path, "r") as handle:
            data = deep_merge(data, _read_yaml(handle))
    for override in overrides:
        data = apply_override(data, override, schema)
    return yaml.safe_dump(data, sort_keys=False), missing


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: BaseModel, path: str | Path) -> str:
    """Write the resolved config (the snapshot kept next to an output) and return its path."""
    with fsspec.open(str(path), "w") as handle:
        handle.write(dump_config(config))
    return str(path)


def describe_fields(schema: type[BaseModel], defaults: BaseModel | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) of every leaf field of a config tree, for docs. Nested
    defaults come from the parent's default instance (e.g. ``filters.pixel_diff.min`` is 0.01, not None)."""
    rows = []
    for name, field in schema.model_fields.items():
        dotted = f"{prefix}{name}"
        default = getattr(defaults, name) if defaults is not None else field.default
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            # A required section (e.g. ``run``) has no default instance: its fields show their own defaults.
            rows += describe_fields(field.annotation, default if isinstance(default, BaseModel) else None, f"{dotted}.")
            continue
        shown = "(required)" if field.is_required() and defaults is None else json.dumps(default)
        rows.append((dotted, type_name(field.annotation), shown, field.description or ""))
    return rows


def type_name(annotation) -> str:
    """A field's type as a reader of the docs wants it: ``Annotated`` validators dropped (a path is a ``str``, a
    pixel size an ``int``), unions as "A or B", literals as their values."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
