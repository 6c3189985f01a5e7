"""The speed switches compute what the eager model computes: the compiled pipeline, the compiled UNet inside the
DeepSpeed engine, and the AdamW kernels. Tracing checks run in the fast suite (torch.compile's ``eager`` backend
captures the same graph inductor compiles, without generating code); inductor itself is slow on a CPU (minutes
per graph) and runs under ``-m slow``; CUDA graphs and bf16 are in ``tests/test_gpu.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsync_ray.config.base import ConfigError, load_config
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.config.train import TrainConfig, TrainSyncConfig
from avsync_ray.pipelines.presets import tiny_pipeline
from avsync_ray.pipelines.sampling import configure_pipeline

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


# ------------------------------------------------------------------------------------------------ training


def _sync_config(tmp_path, *overrides) -> TrainSyncConfig:
    return load_config(TrainSyncConfig, "train-sync-tiny", overrides=[f"data.root={tmp_path}", f"run.storage_path={tmp_path}/runs", *overrides])


def test_adamw_kernels_give_the_same_step_inside_the_engine(tmp_path, gloo_world_of_one):
    """fused, foreach and for-loop AdamW under ZeRO-0 and ZeRO-2, one step from the same weights and gradients:
    the same update up to rounding (Adam's normalised update magnifies the kernels' different rounding where a
    gradient is near zero, so later steps drift apart by more); auto is foreach on a CPU (fused on CUDA)."""
    from avsync_ray.metrics.sync_metrics import contrastive_loss
    from avsync_ray.training import engine as ds
    from avsync_ray.training.components import build_sync_classifier
    from avsync_ray.training.loops import PairwiseScores

    audio, video = torch.randn(2, 3, 1, 128, 204), torch.randn(2, 3, 3, 12, 32, 32)
    expected_flags = {"fused": (True, None), "foreach": (None, True), "auto": (None, True), "for-loop": (False, False)}
    for stage in (0, 2):
        weights = {}
        for implementation, flags in expected_flags.items():
            config = _sync_config(tmp_path, f"deepspeed.zero_stage={stage}", "model.base_width=4", "model.image_size=32",
                                  "optimizer.warmup_steps=0", f"optimizer.implementation={implementation}")  # fmt: skip
            torch.manual_seed(0)
            engine = ds.initialize(PairwiseScores(build_sync_classifier(config.model)), config, world_size=1)
            assert (engine.basic_optimizer.defaults["fused"], engine.basic_optimizer.defaults["foreach"]) == flags
            initial = {k: v.clone() for k, v in engine.module.state_dict().items()}
            engine.backward(contrastive_loss(engine(audio, video), 0.1).loss)
            engine.step()
            weights[implementation] = {k: v.clone() for k, v in engine.module.state_dict().items()}
        moved = max((weights["for-loop"][k] - v).abs().max().item() for k, v in initial.items())
        assert moved > 0.5 * config.optimizer.lr  # a real step was taken
        for implementation in ("foreach", "fused", "auto"):
            for name, value in weights["for-loop"].items():
                torch.testing.assert_close(weights[implementation][name], value, rtol=1e-6, atol=1e-4 * config.optimizer.lr,
                                           msg=lambda m, where=f"ZeRO-{stage} {implementation} {name}": f"{where}: {m}")  # fmt: skip


def _avsyncd_config(tmp_path, *overrides) -> TrainConfig:
    return load_config(
        TrainConfig, "train-tiny",
        overrides=[f"data.root={tmp_path}", f"run.storage_path={tmp_path}/runs", "deepspeed.zero_stage=2", *overrides],
    )  # fmt: skip


def _avsyncd_steps(config: TrainConfig, steps: int, compile_backend: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of ``steps`` training steps of the tiny UNet (a fresh one: compiling works in place) and its weights."""
    from avsync_ray.models.presets import tiny_components
    from avsync_ray.training import engine as ds
    from avsync_ray.training.objectives import avsyncd_loss, training_scheduler

    components = tiny_components(seed=0)
    unet, encoder = components["unet"], components["audio_encoder"]
    if config.deepspeed.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    engine = ds.initialize(unet, config, world_size=1, compile_backend=compile_backend)
    generator = torch.Generator().manual_seed(0)
    data = torch.Generator().manual_seed(1)
    masks = encoder.segment_masks(2, 12)
    null_audio = encoder.null_audio_encodings()
    losses = []
    for _ in range(steps):
        latents = torch.randn(2, 4, 12, 4, 4, generator=data)
        text = torch.randn(2, 77, 32, generator=data)
        audio = torch.randn(2, masks.shape[-1], null_audio.shape[-1], generator=data)
        loss = avsyncd_loss(engine, latents, text, audio, masks, null_audio, training_scheduler(), generator)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in engine.module.state_dict().items()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_unet_trains_exactly_as_eager_inside_the_engine(tmp_path, gloo_world_of_one, checkpointing):
    """``deepspeed.compile``: the UNet's forward traced as one graph (gradient checkpointing included), backward
    through it, ZeRO-2's gradient hooks and AdamW after it: the eager run's losses and weights, exactly."""
    config = _avsyncd_config(tmp_path, f"deepspeed.gradient_checkpointing={str(checkpointing).lower()}")
    eager_losses, eager_weights = _avsyncd_steps(config, 2, "eager")
    compiled = config.model_copy(update={"deepspeed": config.deepspeed.model_copy(update={"compile": True})})
    losses, weights = _avsyncd_steps(compiled, 2, "eager")
    assert losses == eager_losses
    for name, value in eager_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_inductor_compiled_unet_trains_like_eager_inside_the_engine(tmp_path, gloo_world_of_one):
    """Inductor's forward and backward kernels: the same losses, and the same weights within float32 rounding but
    for a few elements whose gradient is at rounding level: AdamW divides each gradient by its own running RMS, so
    such an element takes a step whose size depends on that rounding, and eager and Inductor round differently."""
    config = _avsyncd_config(tmp_path)
    eager_losses, eager_weights = _avsyncd_steps(config, 2, "inductor")
    compiled = config.model_copy(update={"deepspeed": config.deepspeed.model_copy(update={"compile": True})})
    losses, weights = _avsyncd_steps(compiled, 2, "inductor")
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    step = config.optimizer.lr  # about what one AdamW step moves an element
    for name, value in eager_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=step, msg=name)  # 0.08 steps at most here
    beyond_rounding = sum(int((~torch.isclose(weights[name], value, rtol=1e-3, atol=1e-5)).sum()) for name, value in eager_weights.items())
    assert beyond_rounding <= 1e-4 * sum(value.numel() for value in eager_weights.values())  # 11 of 1.07M here


def test_compile_is_an_avsyncd_setting(tmp_path):
    with pytest.raises(ConfigError, match="deepspeed.compile applies to AVSyncD"):
        _sync_config(tmp_path, "deepspeed.compile=true")
    assert _avsyncd_config(tmp_path, "deepspeed.compile=true").deepspeed.compile
    with pytest.raises(ConfigError, match="optimizer.implementation"):
        _sync_config(tmp_path, "optimizer.implementation=apex")
