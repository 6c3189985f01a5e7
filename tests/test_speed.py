"""The speed switches compute what the eager model computes: the compiled pipeline, the compiled UNet inside the
DeepSpeed engine, and the AdamW kernels. Tracing checks run in the fast suite (torch.compile's ``eager`` backend
captures the same graph inductor compiles, without generating code); inductor itself is slow on a CPU (minutes
per graph) and runs under ``-m slow``; CUDA graphs and bf16 are in ``tests/test_gpu.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsync_ray.config import ConfigError, GenerateConfig, load_config
from avsync_ray.generate import configure_pipeline
from avsync_ray.pipelines.presets import tiny_pipeline

SIZE = 32


def pipeline_inputs(batch: int = 2, steps: int = 3, seed: int = 0, **overrides) -> dict:
    """Given latents and prompt embeddings: the loop and the decoder only (batch 2 with audio guidance: 4 branches)."""
    generator = torch.Generator().manual_seed(seed)
    audio = [np.random.default_rng(seed + i).standard_normal(32_000).astype(np.float32) * 0.1 for i in range(batch)]
    return dict(
        audio=audio,
        latents=torch.randn(batch, 4, 12, SIZE // 8, SIZE // 8, generator=generator),
        prompt_embeds=torch.randn(batch, 77, 32, generator=generator),
        num_inference_steps=steps,
        output_type="np",
        **overrides,
    )


@pytest.fixture(scope="module")
def own_pipe():
    """A pipeline of this module's own (compilation state must not leak into the session's tiny_pipe)."""
    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_configure_pipeline_switches_compilation_lazily(own_pipe):
    assert own_pipe.torch_compile_mode is None
    assert configure_pipeline(own_pipe, GenerateConfig(compile=True)).torch_compile_mode == "reduce-overhead"
    assert configure_pipeline(own_pipe, GenerateConfig(compile=True, compile_mode="max-autotune")).torch_compile_mode == "max-autotune"
    assert configure_pipeline(own_pipe, GenerateConfig()).torch_compile_mode is None
    with pytest.raises(ConfigError, match="compile_mode"):
        load_config(GenerateConfig, "generate", overrides=["compile_mode=fast"])


def test_compiled_pipeline_is_one_graph_and_computes_the_eager_output(own_pipe):
    """fullgraph=True: a graph break anywhere in the UNet or the VAE decoder is an error (CUDA graphs need one
    graph); the traced graph gives the eager output exactly."""
    eager = own_pipe(**pipeline_inputs()).frames
    own_pipe.enable_torch_compile(backend="eager")
    try:
        compiled = own_pipe(**pipeline_inputs()).frames
        with_text_guidance = own_pipe(**pipeline_inputs(guidance_scale=3.0)).frames  # 6 branches: a new shape
    finally:
        own_pipe.disable_torch_compile()
    np.testing.assert_array_equal(compiled, eager)
    np.testing.assert_array_equal(with_text_guidance, own_pipe(**pipeline_inputs(guidance_scale=3.0)).frames)
    np.testing.assert_array_equal(own_pipe(**pipeline_inputs()).frames, eager)  # off again: the eager modules


def test_replacing_a_module_after_enabling_compilation_is_an_error():
    pipe = tiny_pipeline(seed=0)
    pipe.enable_torch_compile(backend="eager")
    pipe.unet = tiny_pipeline(seed=1).unet
    with pytest.raises(RuntimeError, match="enable_torch_compile"):
        pipe(**pipeline_inputs(batch=1, steps=1))


@pytest.mark.slow
def test_inductor_compiled_pipeline_matches_eager(own_pipe):
    """Inductor's generated kernels (CPU C++ here; Triton and CUDA graphs on a GPU) reorder float arithmetic:
    equal within float32 rounding over 3 steps and the decoder."""
    eager = own_pipe(**pipeline_inputs()).frames
    own_pipe.enable_torch_compile(mode="reduce-overhead")
    try:
        compiled = own_pipe(**pipeline_inputs()).frames
        again = own_pipe(**pipeline_inputs(seed=1)).frames  # same shapes: no second compile
    finally:
        own_pipe.disable_torch_compile()
    np.testing.assert_allclose(compiled, eager, atol=2e-4)
    np.testing.assert_allclose(again, own_pipe(**pipeline_inputs(seed=1)).frames, atol=2e-4)
