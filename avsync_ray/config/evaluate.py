"""``avsync eval`` (generation, the paper's metrics, sweeps, baselines) and ``avsync eval-sync`` (the classifier)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from avsync_ray.config.base import (
    VIDEO_EXTENSIONS,
    ActorConfig,
    BatchJobRayConfig,
    PathOrURI,
    StrictModel,
    job_tracking,
    missing_input,
)
from avsync_ray.config.sampling import InputLimits, SamplingConfig
from avsync_ray.config.train import ShardsInput

EvalSyncTracking, EVAL_SYNC_TRACKING = job_tracking("avsync/sync-classifier")


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
    ray: BatchJobRayConfig = Field(BatchJobRayConfig(), description="Ray")


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
    min_videos: int = Field(10, ge=2, description="no interval from fewer test videos (the report says so instead)")


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
    limits: InputLimits = Field(InputLimits(), description="bounds on raw test videos (their frame size and length; counted on what is decoded)")
    protocol: Literal["official", "standard"] = Field(
        "official",
        description="official: ASVA's eval.py (229-px FID with train-mode BatchNorm over its batches, 224-px bicubic FVD, its mp4 loader); "
        "standard: pytorch-fid's (eval-mode BatchNorm) and StyleGAN-V's",
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
    colocate: bool = Field(
        False,
        description="one actor pool generates and scores (generate_actor's placement and generate_batch_size, feature_actor's dtype): each actor "
        "holds the pipeline and the feature networks, so no pool idles on the other; for CPUs, and GPUs that hold both",
    )
    tracking: EvalTracking = EVAL_TRACKING
    ray: BatchJobRayConfig = Field(BatchJobRayConfig(), description="Ray")

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
