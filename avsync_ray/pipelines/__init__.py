"""Inference pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from avsync_ray.pipelines.pipeline_avsyncd import AVSyncDPipeline, AVSyncDPipelineOutput

__all__ = ["AVSyncDPipeline", "AVSyncDPipelineOutput"]
