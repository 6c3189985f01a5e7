"""AVSyncDPipeline: diffusers contracts, first-frame invariant, scheduler swap, official sampling-loop parity."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.utils.torch_utils import randn_tensor

from avsync_ray.pipelines import AVSyncDPipeline, AVSyncDPipelineOutput

SIZE = 32


def dummy_inputs(seed: int = 0, batch: int = 1, steps: int = 2, **overrides) -> dict:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(batch)]
    audios = [(rng.standard_normal(36_000) * 0.1).astype(np.float32) for _ in range(batch)]
    generator = [torch.Generator().manual_seed(seed + i) for i in range(batch)] if batch > 1 else torch.Generator().manual_seed(seed)
    inputs = dict(
        image=images if batch > 1 else images[0],
        audio=audios if batch > 1 else audios[0],
        prompt="dog barking",
        num_inference_steps=steps,
        generator=generator,
        output_type="np",
    )
    inputs.update(overrides)
    return inputs


def test_call_signature_has_the_diffusers_names():
    parameters = inspect.signature(AVSyncDPipeline.__call__).parameters
    for name in ("image", "audio", "audio_sample_rate", "prompt", "prompt_embeds", "num_frames", "height", "width",
                 "num_inference_steps", "guidance_scale", "audio_guidance_scale", "generator", "latents",
                 "output_type", "return_dict", "callback_on_step_end"):  # fmt: skip
        assert name in parameters, name
    assert parameters["num_inference_steps"].default == 50
    assert parameters["guidance_scale"].default == 1.0 and parameters["audio_guidance_scale"].default == 4.0


def test_call_docstring_carries_the_usage_example():
    assert ">>> pipe = AVSyncDPipeline.from_pretrained" in AVSyncDPipeline.__call__.__doc__


def test_default_scheduler_is_sd15_pndm(tiny_pipe):
    assert isinstance(tiny_pipe.scheduler, PNDMScheduler) and tiny_pipe.scheduler.config.skip_prk_steps
    tiny_pipe.scheduler.set_timesteps(50)
    assert len(tiny_pipe.scheduler.timesteps) == 51 and tiny_pipe.scheduler.timesteps[:4].tolist() == [981, 961, 961, 941]


def test_same_seed_same_video(tiny_pipe):
    first = tiny_pipe(**dummy_inputs()).frames
    second = tiny_pipe(**dummy_inputs()).frames
    assert first.shape == (1, 12, SIZE, SIZE, 3) and np.array_equal(first, second)
    assert not np.array_equal(first, tiny_pipe(**dummy_inputs(seed=0, generator=torch.Generator().manual_seed(7))).frames)


def test_batch_of_two_equals_two_single_runs(tiny_pipe):
    batched = tiny_pipe(**dummy_inputs(batch=2))
    singles = []
    for i in range(2):
        rng_inputs = dummy_inputs(batch=2)
        single = dict(rng_inputs, image=rng_inputs["image"][i], audio=rng_inputs["audio"][i], generator=rng_inputs["generator"][i])
        singles.append(tiny_pipe(**single).frames[0])
    np.testing.assert_allclose(batched.frames, np.stack(singles), atol=1e-4)
    assert batched.audio.shape == (2, 32_000)


def test_first_frame_is_the_vae_round_trip_of_the_image(tiny_pipe):
    inputs = dummy_inputs(output_type="latent")
    latents = tiny_pipe(**inputs).frames
    # Replay the generator: the noise for frames 1.. is drawn first, then the image's posterior sample.
    generator = torch.Generator().manual_seed(0)
    randn_tensor((1, 4, 11, SIZE // 8, SIZE // 8), generator=generator)
    image = tiny_pipe.image_processor.preprocess(inputs["image"], height=SIZE, width=SIZE)
    clean = tiny_pipe.encode_image(image, generator, torch.device("cpu"))
    assert torch.equal(latents[:, :, 0], clean)
    frames = tiny_pipe(**dummy_inputs()).frames
    with torch.no_grad():
        decoded = tiny_pipe.decode_latents(clean.unsqueeze(2), 8)
    round_trip = tiny_pipe.video_processor.postprocess_video(decoded, output_type="np")
    np.testing.assert_allclose(frames[:, 0], round_trip[:, 0], atol=1e-5)


@pytest.mark.parametrize(
    "scheduler_cls, extra",
    [(DDIMScheduler, {}), (EulerDiscreteScheduler, {}), (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"})],
)
def test_other_schedulers_keep_frame_zero_clean(tiny_components, scheduler_cls, extra):
    components = dict(tiny_components, scheduler=scheduler_cls.from_config(tiny_components["scheduler"].config, **extra))
    pipe = AVSyncDPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    reference = AVSyncDPipeline(**tiny_components)
    reference.set_progress_bar_config(disable=True)
    latents = pipe(**dummy_inputs(steps=3, output_type="latent")).frames
    pndm_latents = reference(**dummy_inputs(steps=3, output_type="latent")).frames
    assert torch.isfinite(latents).all()
    # Frame 0 never passes through the scheduler (Euler's init_noise_sigma would otherwise scale it).
    if scheduler_cls is not EulerDiscreteScheduler:
        assert torch.equal(latents[:, :, 0], pndm_latents[:, :, 0])
    else:
        generator = torch.Generator().manual_seed(0)
        randn_tensor((1, 4, 11, SIZE // 8, SIZE // 8), generator=generator)
        image = pipe.image_processor.preprocess(dummy_inputs()["image"], height=SIZE, width=SIZE)
        assert torch.equal(latents[:, :, 0], pipe.encode_image(image, generator, torch.device("cpu")))


def test_output_types_agree(tiny_pipe):
    as_np = tiny_pipe(**dummy_inputs(output_type="np")).frames
    as_pt = tiny_pipe(**dummy_inputs(output_type="pt")).frames
    as_pil = tiny_pipe(**dummy_inputs(output_type="pil")).frames
    assert as_pt.shape == (1, 12, 3, SIZE, SIZE)
    np.testing.assert_allclose(as_pt.permute(0, 1, 3, 4, 2).numpy(), as_np, atol=1e-6)
    assert len(as_pil) == 1 and len(as_pil[0]) == 12 and as_pil[0][0].size == (SIZE, SIZE)
    np.testing.assert_allclose(np.asarray(as_pil[0][3]) / 255.0, as_np[0, 3], atol=1 / 255 + 1e-6)
    as_tuple = tiny_pipe(**dummy_inputs(return_dict=False))
    assert isinstance(as_tuple, tuple) and np.allclose(as_tuple[0], as_np)


def test_save_load_round_trip(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    loaded = AVSyncDPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(loaded(**dummy_inputs()).frames, tiny_pipe(**dummy_inputs()).frames, atol=5e-4)


def test_callback_can_replace_the_latents(tiny_pipe):
    def zero_on_last_step(pipe, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == pipe.num_timesteps - 1 else {}

    latents = tiny_pipe(**dummy_inputs(output_type="latent", callback_on_step_end=zero_on_last_step)).frames
    assert not latents.any()


@pytest.mark.parametrize(("text_scale", "audio_scale", "branches"), [(1.0, 1.0, 1), (1.0, 4.0, 2), (3.0, 1.0, 2), (3.0, 4.0, 3)])
def test_guidance_branches_run_as_one_batched_call(tiny_pipe, text_scale, audio_scale, branches):
    batch_sizes = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        tiny_pipe(**dummy_inputs(batch=2, guidance_scale=text_scale, audio_guidance_scale=audio_scale))
    finally:
        hook.remove()
    assert batch_sizes and set(batch_sizes) == {2 * branches}


def official_sampling_loop(pipe, latents, text, audio_tokens, audio_masks, steps, audio_scale, aliased=True):
    """The official AudioCondAnimationPipeline loop (reference §5.2) transcribed for audio-only guidance:
    latents times init_noise_sigma (frame 0 included), scale_model_input on everything, one UNet call on
    [null audio, audio], then the scheduler steps frames 1.. in place. PNDM keeps a reference to the sample
    it is given; the official in-place write overwrites it (``aliased``); ``aliased=False`` hands the
    scheduler a copy, which is textbook PNDM."""
    scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    video = latents.clone() * scheduler.init_noise_sigma
    frames = video.shape[2]
    null = pipe.audio_encoder.null_audio_encodings().expand_as(audio_tokens)
    text_in = torch.cat([text, text]).unsqueeze(1).repeat(1, frames, 1, 1)
    audio_in = torch.cat([null, audio_tokens]).unsqueeze(1).repeat(1, frames, 1, 1)
    masks_in = torch.cat([audio_masks, audio_masks])
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([video, video]), t)
        noise = pipe.unet(model_input, t, encoder_hidden_states=text_in, audio_encoder_hidden_states=audio_in, audio_attention_mask=masks_in).sample
        uncond, cond = noise.chunk(2)
        noise = uncond + audio_scale * (cond - uncond)
        sample = video[:, :, 1:] if aliased else video[:, :, 1:].clone()
        video[:, :, 1:] = scheduler.step(noise[:, :, 1:], t, sample).prev_sample
    return video


@pytest.mark.parametrize("official_inplace_step", [True, False])
def test_given_latents_reproduce_the_official_sampling_loop(tiny_pipe, official_inplace_step):
    """Bit for bit: with ``official_inplace_step`` the official loop itself; by default the same loop with
    PNDM's sample reference left intact (the two differ from PNDM's second step on)."""
    generator = torch.Generator().manual_seed(11)
    latents = torch.randn(2, 4, 12, SIZE // 8, SIZE // 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    audio = [np.random.default_rng(i).standard_normal(32_000).astype(np.float32) * 0.1 for i in range(2)]
    with torch.no_grad():
        tokens, masks = tiny_pipe.encode_audio(tiny_pipe.prepare_audio(audio, 16_000, 2), 12, "cpu", torch.float32)
        expected = official_sampling_loop(tiny_pipe, latents, text, tokens, masks, 4, 4.0, aliased=official_inplace_step)
        other = official_sampling_loop(tiny_pipe, latents, text, tokens, masks, 4, 4.0, aliased=not official_inplace_step)
    out = tiny_pipe(
        audio=audio, latents=latents, prompt_embeds=text, num_inference_steps=4, output_type="latent",
        official_inplace_step=official_inplace_step,
    )  # fmt: skip
    assert isinstance(out, AVSyncDPipelineOutput)
    torch.testing.assert_close(out.frames, expected, atol=0, rtol=0)
    assert not torch.allclose(out.frames, other)


def test_bad_inputs_are_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="audio is required"):
        tiny_pipe(**dict(dummy_inputs(), audio=None))
    with pytest.raises(ValueError, match="prompt"):
        tiny_pipe(**dict(dummy_inputs(), prompt=None))
    with pytest.raises(ValueError, match="audio clips"):
        tiny_pipe(**dict(dummy_inputs(batch=2), audio=[np.zeros(32_000, dtype=np.float32)] * 3))
    with pytest.raises(ValueError, match="latents have"):
        tiny_pipe(**dict(dummy_inputs(), latents=torch.zeros(1, 4, 5, 4, 4)))


def test_schedulers_by_name_keep_the_pipelines_noise_schedule(tiny_pipe):
    from avsync_ray.config.sampling import GenerateConfig
    from avsync_ray.pipelines.sampling import configure_pipeline
    from avsync_ray.pipelines.schedulers import SCHEDULERS, scheduler_name

    original = tiny_pipe.scheduler
    try:
        for name in SCHEDULERS:
            scheduler = configure_pipeline(tiny_pipe, GenerateConfig(scheduler=name)).scheduler
            assert scheduler_name(scheduler) == name
            assert (scheduler.config.beta_start, scheduler.config.beta_end, scheduler.config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
            assert scheduler.config.steps_offset == 1 and scheduler.config.timestep_spacing == "leading"
        assert configure_pipeline(tiny_pipe, GenerateConfig(scheduler="dpmpp-2m-karras")).scheduler.config.use_karras_sigmas
    finally:
        tiny_pipe.scheduler = original


def test_initial_noise_is_scaled_for_the_timesteps_it_samples(tiny_components):
    """Euler's initial sigma depends on the step count; the noise the pipeline draws is scaled by the sigma of the
    timesteps it then samples, exactly as when the same noise is passed in scaled by hand (scaling it by the
    full 1000-step schedule's sigma, 14.6 instead of 3.1 at 3 steps, would start far off the first step's level)."""
    config = tiny_components["scheduler"].config
    pipe = AVSyncDPipeline(**dict(tiny_components, scheduler=EulerDiscreteScheduler.from_config(config)))
    pipe.set_progress_bar_config(disable=True)
    drawn = pipe(**dummy_inputs(steps=3, output_type="latent")).frames
    generator = torch.Generator().manual_seed(0)  # the pipeline's draws: the noise first, then the image latent
    noise = randn_tensor((1, 4, 11, SIZE // 8, SIZE // 8), generator=generator)
    image = pipe.image_processor.preprocess(dummy_inputs()["image"], height=SIZE, width=SIZE)
    first = pipe.encode_image(image, generator, torch.device("cpu")).unsqueeze(2)
    probe = EulerDiscreteScheduler.from_config(config)
    probe.set_timesteps(3)
    given = torch.cat([first, noise * probe.init_noise_sigma], dim=2)
    torch.testing.assert_close(drawn, pipe(**dummy_inputs(steps=3, output_type="latent", latents=given)).frames, rtol=0, atol=0)


def test_ddim_by_name_never_clips_the_latents(tiny_pipe):
    """DDIM's default clips its clean-sample estimate to [-1, 1], which latents exceed; by name it never clips, also
    on a base config that does not say so (the presets', unlike SD1.5's scheduler_config.json)."""
    from avsync_ray.pipelines.schedulers import make_scheduler, scheduler_name

    assert "clip_sample" not in tiny_pipe.scheduler.config
    ddim = make_scheduler("ddim", tiny_pipe.scheduler.config)
    assert ddim.config.clip_sample is False and scheduler_name(ddim) == "ddim"
    assert scheduler_name(DDIMScheduler.from_config(tiny_pipe.scheduler.config)) is None  # clipping: not the named one
