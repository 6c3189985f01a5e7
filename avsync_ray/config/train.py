"""``avsync train-sync``, ``avsync train`` and ``avsync precompute``: shards, loader, optimizer, DeepSpeed,
checkpoints, Ray Train scaling and each model's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from avsync_ray.config.base import (
    ActorConfig,
    BatchJobRayConfig,
    PathOrURI,
    PixelSize,
    RayConfig,
    StrictModel,
    TrackingConfig,
    job_tracking,
    missing_input,
    resolve_local_path,
)

SyncClassifierTracking, SYNC_CLASSIFIER_TRACKING = job_tracking("avsync/sync-classifier", "MLflow (rank 0 of training logs)")


AVSyncDTracking, AVSYNCD_TRACKING = job_tracking("avsync/avsyncd", "MLflow (rank 0 logs)")


PrecomputeTracking, PRECOMPUTE_TRACKING = job_tracking("avsync/precompute")


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
    ray: BatchJobRayConfig = Field(BatchJobRayConfig(), description="Ray")

    @model_validator(mode="after")
    def _encoders_in_training_precision(self):
        if self.actor.dtype != self.model.frozen_dtype:
            raise ValueError(
                f"actor.dtype ({self.actor.dtype}) must equal model.frozen_dtype ({self.model.frozen_dtype}): "
                "features are only valid for the encoders at the training run's precision"
            )
        return self
