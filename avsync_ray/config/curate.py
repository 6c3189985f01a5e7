"""``avsync curate``: inputs, shots, windows, the scores and their rules, model stages and shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from avsync_ray.config.base import VIDEO_EXTENSIONS, ActorConfig, PathOrURI, RayConfig, StrictModel, job_tracking, missing_input


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
    order: Literal["hash", "key"] = Field(
        "hash", description="hash: clips ordered across shards by the SHA-1 of their key (mixes labels and sources); key: by key (a video's clips together)"
    )

    @field_validator("short_side")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (H.264 yuv420p)")
        return value


CurationTracking, CURATION_TRACKING = job_tracking("avsync/curation")


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
    keep_staged_clips: bool = Field(
        False, description="keep each video's clip bundle under _work/clips/ after the shards commit (off: the shards are the only copy)"
    )
    tracking: CurationTracking = CURATION_TRACKING
    ray: RayConfig = Field(RayConfig(), description="Ray")

    @model_validator(mode="after")
    def _models_have_weights(self):
        stages = self.filters
        weights = {"semantic": (stages.semantic, "checkpoint"), "imagebind": (stages.imagebind, "checkpoint"), "sync": (stages.sync, "classifier")}
        missing = [f"filters.{name}.{field}" for name, (stage, field) in weights.items() if stage.enabled and not getattr(stage, field)]
        if missing:
            raise missing_input(f"{', '.join(missing)} (the weights of the enabled model stages; or set filters.<stage>.enabled=false)")
        return self
