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
    from avsync_ray.config.base import load_config
    from avsync_ray.config.train import PrecomputeConfig
    from avsync_ray.examples import precomputed_sample
    from avsync_ray.shards import read_samples, shard_urls
    from avsync_ray.training.features import sample_features
    from avsync_ray.training.objectives import sample_video_latents

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


# ------------------------------------------------------------------------------------------------ compiled (issue 14)


def _cuda_tiny_pipeline(dtype=torch.float32):
    """A tiny pipeline of its own on the GPU (the session's components stay where other tests expect them)."""
    from avsync_ray.pipelines.presets import tiny_pipeline

    pipe = tiny_pipeline(seed=0).to("cuda", dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latent_call(pipe, steps: int = 10, seed: int = 0, **overrides):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 12, 4, 4, generator=generator)
    embeds = torch.randn(2, 77, 32, generator=generator)
    audio = [np.random.default_rng(seed + i).standard_normal(32_000).astype(np.float32) * 0.1 for i in range(2)]
    return pipe(audio=audio, latents=latents, prompt_embeds=embeds, num_inference_steps=steps, output_type="latent", **overrides).frames


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-3), (torch.bfloat16, 3e-2)])
def test_compiled_tiny_pipeline_with_cuda_graphs_matches_eager(dtype, tolerance):
    """torch.compile (Triton kernels, CUDA graphs) against the eager pipeline, 10 steps, TF32 off: within float32
    rounding in float32 and within bf16 rounding in bf16, also when a second call at the same shapes replays the graphs."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pipe = _cuda_tiny_pipeline(dtype)
    eager = _latent_call(pipe).float().cpu()
    pipe.enable_torch_compile("reduce-overhead")
    compiled = _latent_call(pipe).float().cpu()
    replayed = _latent_call(pipe).float().cpu()
    assert relative_error(compiled, eager) < tolerance and relative_error(replayed, eager) < tolerance


def test_compiled_full_size_unet_bf16_matches_eager():
    """The full-size UNet at the pipeline's shapes (two guidance branches, 12 frames, 32x32 latents) in bf16:
    compiled with CUDA graphs within bf16 rounding of eager (the same shapes bench_generate compiles, so its
    compile is in inductor's cache afterwards)."""
    from avsync_ray.models.audio_encoder import segment_token_masks

    torch.manual_seed(0)
    model = AVSyncDUNet3DModel(sample_size=32).cuda().to(torch.bfloat16).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 12, 32, 32, generator=generator).cuda().bfloat16()
    text = torch.randn(2, 77, 768, generator=generator).cuda().bfloat16()
    audio = torch.randn(2, 229, 768, generator=generator).cuda().bfloat16()
    masks = segment_token_masks(12, 19, 12).unsqueeze(0).repeat(2, 1, 1).cuda()
    timestep = torch.tensor(981, device="cuda")
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True, dynamic=False)
    with torch.no_grad():
        eager = model(sample, timestep, text, audio, audio_attention_mask=masks).sample.float()
        for _ in range(3):  # warm-up, CUDA-graph recording, replay
            out = compiled(sample, timestep, text, audio, audio_attention_mask=masks).sample.float().clone()
    assert torch.isfinite(out).all() and relative_error(out, eager) < 2e-2


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_denoising_loop_never_waits_for_the_gpu(compiled):
    """Every sampler: from the second step on, no operation in the loop (UNet, guidance, scheduler step)
    synchronises the host with the GPU (CUDA's sync debug mode turns any such sync into an error)."""
    from avsync_ray.pipelines.schedulers import SCHEDULERS, make_scheduler

    pipe = _cuda_tiny_pipeline()
    base = pipe.scheduler.config
    if compiled:
        pipe.enable_torch_compile("reduce-overhead")

    def watch_from_step_one(pipe, step, timestep, tensors):
        if step == 0:
            torch.cuda.set_sync_debug_mode("error")
        return {}

    for name in SCHEDULERS:
        pipe.scheduler = make_scheduler(name, base)
        if compiled:
            _latent_call(pipe, steps=6)  # compile and record first: that may synchronise
        try:
            _latent_call(pipe, steps=6, callback_on_step_end=watch_from_step_one)
        finally:
            torch.cuda.set_sync_debug_mode("default")
