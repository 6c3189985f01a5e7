"""Shared fixtures: tiny random-init components (diffusers-style dummies), real media, env for offline runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "manifests"
MEDIA_DIR = Path(os.environ.get("AVSYNC_TEST_MEDIA", Path(__file__).resolve().parents[2] / "shared" / "media"))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The shared real-media folder (../shared/media); tests that need it skip where it is absent."""
    if not MEDIA_DIR.is_dir():
        pytest.skip(f"real test media not found at {MEDIA_DIR} (set AVSYNC_TEST_MEDIA to its path)")
    return MEDIA_DIR


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"official state-dict manifests not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_components():
    from avsync_ray.models.presets import tiny_components

    return tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_components):
    from avsync_ray.pipelines import AVSyncDPipeline

    pipe = AVSyncDPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from avsync_ray.models.presets import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_imagebind_checkpoint(tmp_path_factory):
    """A file in imagebind_huge.pth's format (modality_{preprocessors,trunks,heads,postprocessors}.<m>.*), made by
    the `imagebind` package's own ImageBindModel at the tiny sizes; returns (path, that model)."""
    from imagebind.models.imagebind_model import ImageBindModel

    from avsync_ray.models.imagebind import IMAGEBIND_PRESETS

    c = IMAGEBIND_PRESETS["imagebind-tiny"]
    torch.manual_seed(0)
    official = ImageBindModel(
        out_embed_dim=c.out_embed_dim, vision_embed_dim=c.vision_embed_dim, vision_num_blocks=c.vision_num_blocks,
        vision_num_heads=c.vision_num_heads, text_embed_dim=c.text_embed_dim, text_num_blocks=c.text_num_blocks,
        text_num_heads=c.text_num_heads, audio_embed_dim=c.audio_embed_dim, audio_num_blocks=c.audio_num_blocks,
        audio_num_heads=c.audio_num_heads, audio_drop_path=c.audio_drop_path, depth_embed_dim=16, depth_num_blocks=1,
        depth_num_heads=2, thermal_embed_dim=16, thermal_num_blocks=1, thermal_num_heads=2, imu_embed_dim=16,
        imu_num_blocks=1, imu_num_heads=2,
    ).eval()  # fmt: skip
    with torch.no_grad():  # move every weight away from its init so a wrong mapping cannot pass
        for parameter in official.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    path = tmp_path_factory.mktemp("imagebind") / "imagebind_tiny.pth"
    torch.save(official.state_dict(), path)
    return path, official
