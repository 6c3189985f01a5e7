"""GPU checks (opt-in: ``pytest -m gpu``): the same numbers on CUDA as on the CPU, and the full-size model in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_tiny_pipeline_on_cuda_matches_cpu(tiny_components):
    from avsync_ray.pipelines import AVSyncDPipeline

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    latents = torch.randn(1, 4, 12, 4, 4, generator=torch.Generator().manual_seed(0))
    audio = np.random.default_rng(0).standard_normal(32_000).astype(np.float32) * 0.1
    embeds = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for device in ("cpu", "cuda"):
        pipe = AVSyncDPipeline(**tiny_components).to(device)
        pipe.set_progress_bar_config(disable=True)
        outputs[device] = pipe(audio=audio, latents=latents, prompt_embeds=embeds, num_inference_steps=10, output_type="latent").frames.cpu()
    assert relative_error(outputs["cuda"], outputs["cpu"]) < 1e-4


def test_full_size_unet_bf16_tracks_fp32():
    torch.manual_seed(0)
    model = AVSyncDUNet3DModel().cuda().eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 12, 32, 32, generator=generator).cuda()
    text = torch.randn(1, 77, 768, generator=generator).cuda()
    audio = torch.randn(1, 229, 768, generator=generator).cuda()
    from avsync_ray.models.audio_encoder import segment_token_masks

    masks = segment_token_masks(12, 19, 12).unsqueeze(0).cuda()
    with torch.no_grad():
        reference = model(sample, 500, text, audio, audio_attention_mask=masks).sample
        model.to(torch.bfloat16)
        low = model(sample.bfloat16(), 500, text.bfloat16(), audio.bfloat16(), audio_attention_mask=masks).sample
    assert torch.isfinite(low).all() and low.shape == (1, 4, 12, 32, 32)
    assert relative_error(low.float(), reference) < 5e-2


def test_sync_classifier_on_cuda_matches_cpu():
    from avsync_ray.models.sync_classifier import SyncClassifier

    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = SyncClassifier().eval()
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(2, 3, 1, 128, 204, generator=generator)
    video = torch.randn(2, 3, 3, 12, 224, 224, generator=generator)
    with torch.no_grad():
        cpu = model.score_matrix(audio, video)
        gpu = model.cuda().score_matrix(audio.cuda(), video.cuda()).cpu()
    assert relative_error(gpu, cpu) < 1e-4


def test_precomputed_features_on_cuda_match_cpu(synthetic_shards, tiny_components):
    """Features precomputed on a GPU are the ones a CPU makes, and the training path draws latents from them
    on the GPU."""
    from avsync_ray.config import PrecomputeConfig, load_config
    from avsync_ray.examples import precomputed_sample
    from avsync_ray.shards import read_samples, shard_urls
    from avsync_ray.training.objectives import sample_video_latents
    from avsync_ray.training.features import sample_features

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    config = load_config(PrecomputeConfig, "precompute-tiny", overrides=["input.root=x", "output=y", "height=32", "width=32"])
    raw = read_samples(shard_urls(str(synthetic_shards["root"]), "test")[0])[0]
    features = {}
    for device in ("cpu", "cuda"):
        vae, audio_encoder = tiny_components["vae"].to(device), tiny_components["audio_encoder"].to(device)
        members = sample_features(raw, vae, audio_encoder, config)
        features[device] = precomputed_sample({**raw, **members}, np.random.default_rng(0))
    for name in ("vae_moments", "audio_tokens"):
        assert relative_error(features["cuda"][name], features["cpu"][name]) < 1e-3, name
    latents = sample_video_latents(features["cuda"]["vae_moments"][None].cuda(), 0.18215, torch.Generator("cuda").manual_seed(0))
    assert latents.is_cuda and latents.shape == (1, 4, 12, 4, 4) and torch.isfinite(latents).all()
    for module in (tiny_components["vae"], tiny_components["audio_encoder"]):
        module.to("cpu")  # the components are shared by the session
