"""``avsync demo``: the embedded end-to-end run and how far its models must learn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from avsync_ray.config.base import PathOrURI, StrictModel, TrackingURI
from avsync_ray.config.sampling import GenerateConfig


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
