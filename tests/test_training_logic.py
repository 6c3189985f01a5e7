"""Training without Ray: objectives against their formulas, shard decoding, the DeepSpeed engine and its
checkpoints in one gloo process, and the driver-side resume rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avsync_ray import examples
from avsync_ray.config.base import load_config
from avsync_ray.config.train import TrainConfig, TrainSyncConfig
from avsync_ray.media.clips import ClipSamplingError, MultiClipSpec
from avsync_ray.metrics.sync_metrics import contrastive_loss
from avsync_ray.shards import read_samples, shard_urls, tar_bytes, write_index
from avsync_ray.training import data as training_data, objectives

# ------------------------------------------------------------------------------------------------ objectives


def test_diffusion_inputs_keep_frame_zero_clean_and_follow_ddpm():
    scheduler = objectives.training_scheduler()
    latents = torch.randn(3, 4, 5, 2, 2)
    inputs = objectives.diffusion_inputs(scheduler, latents, torch.Generator().manual_seed(0))
    assert torch.equal(inputs.noisy_latents[:, :, 0], latents[:, :, 0])
    alphas = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, 0)  # scaled-linear betas
    a = alphas[inputs.timesteps].view(-1, 1, 1, 1, 1)
    expected = a.sqrt() * latents[:, :, 1:] + (1 - a).sqrt() * inputs.target[:, :, 1:]
    torch.testing.assert_close(inputs.noisy_latents[:, :, 1:], expected, rtol=1e-5, atol=1e-5)
    again = objectives.diffusion_inputs(scheduler, latents, torch.Generator().manual_seed(0))
    assert torch.equal(again.noisy_latents, inputs.noisy_latents) and torch.equal(again.timesteps, inputs.timesteps)


def test_frame_mse_ignores_the_given_first_frame():
    target = torch.zeros(2, 4, 3, 2, 2)
    prediction = target.clone()
    prediction[:, :, 0] = 100.0
    assert objectives.frame_mse(prediction, target) == 0
    prediction[:, :, 2] = 1.0
    assert objectives.frame_mse(prediction, target).item() == pytest.approx(0.5)
    assert objectives.frame_mse(prediction, target, include_first_frame=True) > 1000


def test_drop_condition_rate_and_determinism():
    condition, null = torch.ones(4000, 3), torch.zeros(1, 3)
    dropped = objectives.drop_condition(condition, null, 0.2, torch.Generator().manual_seed(1))
    rows_dropped = (dropped.sum(dim=1) == 0).float().mean().item()
    assert rows_dropped == pytest.approx(0.2, abs=0.03)
    assert ((dropped.sum(dim=1) == 0) | (dropped.sum(dim=1) == 3)).all()  # whole samples, never parts
    assert torch.equal(dropped, objectives.drop_condition(condition, null, 0.2, torch.Generator().manual_seed(1)))
    assert objectives.drop_condition(condition, null, 0.0, torch.Generator()) is condition


def test_avsyncd_loss_equals_the_reference_computation(tiny_components):
    """Same generator, same draws: the loss is the MSE of the UNet's noise prediction on frames 1.. only."""
    unet, audio_encoder = tiny_components["unet"], tiny_components["audio_encoder"]
    scheduler = objectives.training_scheduler()
    torch.manual_seed(0)
    latents, text = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 77, 32)
    encoded = audio_encoder(torch.randn(2, 1, 128, 204), num_segments=4)
    null = audio_encoder.null_audio_encodings()
    loss = objectives.avsyncd_loss(
        unet, latents, text, encoded.audio_encodings, encoded.audio_segment_masks, null, scheduler, torch.Generator().manual_seed(7), 0.5
    )
    generator = torch.Generator().manual_seed(7)
    audio = objectives.drop_condition(encoded.audio_encodings, null, 0.5, generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    noisy[:, :, 0] = latents[:, :, 0]
    prediction = unet(noisy, timesteps, encoder_hidden_states=text, audio_encoder_hidden_states=audio, audio_attention_mask=encoded.audio_segment_masks).sample
    torch.testing.assert_close(loss, ((prediction[:, :, 1:] - noise[:, :, 1:]) ** 2).mean())


def test_sync_loss_is_the_contrastive_loss_of_the_score_matrix():
    from avsync_ray.models.sync_classifier import SyncClassifier

    torch.manual_seed(0)
    classifier = SyncClassifier(image_size=32, base_width=4).eval()
    audio, video = torch.randn(2, 3, 1, 128, 204), torch.randn(2, 3, 3, 12, 32, 32)
    out = objectives.sync_loss(classifier.score_matrix, audio, video, tau=0.1)
    reference = contrastive_loss(classifier.score_matrix(audio, video), 0.1)
    torch.testing.assert_close(out.loss, reference.loss)
    assert out.loss.item() == pytest.approx(math.log(3), rel=0.5)


def test_video_latents_are_per_frame_vae_latents(tiny_components):
    vae = tiny_components["vae"]
    video = torch.rand(2, 3, 3, 32, 32)
    latents = objectives.video_latents(vae, video, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 3, 4, 4)
    changed = video.clone()
    changed[1, :, 2] = 1 - changed[1, :, 2]  # one frame of one clip
    again = objectives.video_latents(vae, changed, torch.Generator().manual_seed(0))
    differs = (again != latents).flatten(3).any(-1).any(1)  # (batch, frames)
    assert differs.tolist() == [[False, False, False], [False, False, True]]


# ------------------------------------------------------------------------------------------------ data


def _raw_samples(root, split):

    return [s for url in shard_urls(str(root), split) for s in read_samples(url)]


def test_shard_listing_and_rank_split(synthetic_shards):
    urls = shard_urls(str(synthetic_shards["root"]), "train")
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["train-000000.tar", "train-000001.tar"]
    assert training_data.rank_shards(urls, 0, 2) == urls[:1] and training_data.rank_shards(urls, 1, 2) == urls[1:]
    assert training_data.rank_shards(urls, 2, 3) == urls  # fewer shards than ranks: every rank resamples them all
    with pytest.raises(FileNotFoundError):
        shard_urls(str(synthetic_shards["root"]), "validation")


def test_avsyncd_sample_is_the_official_clip(synthetic_shards):
    raw = _raw_samples(synthetic_shards["root"], "test")[0]
    sample = examples.avsyncd_sample(raw, np.random.default_rng(3), size=(64, 64), randflip=False)
    assert sample["video"].shape == (3, 12, 64, 64) and 0 <= sample["video"].min() and sample["video"].max() <= 1
    assert sample["mel"].shape == (1, 128, 204) and sample["audio"].shape == (32_000,) and sample["prompt"] == "sync"
    again = examples.avsyncd_sample(raw, np.random.default_rng(3), size=(64, 64), randflip=False)
    assert torch.equal(sample["video"], again["video"]) and torch.equal(sample["mel"], again["mel"])
    # The clip's audio is the canonical wav's samples at the clip's start, exactly.
    from avsync_ray.media import load_audio

    wav = load_audio(raw["wav"])
    start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(wav, 64) == sample["audio"][:64].numpy(), axis=1))[0])
    assert torch.equal(sample["audio"], torch.from_numpy(wav[start : start + 32_000]))
    flipped = examples.avsyncd_sample(raw, np.random.default_rng(3), size=(64, 64), randflip=True)
    assert torch.equal(flipped["video"], sample["video"]) or torch.equal(flipped["video"], sample["video"].flip(-1))


def test_sync_sample_shapes_and_clip_shift(synthetic_shards):
    raw = _raw_samples(synthetic_shards["root"], "test")[0]
    spec = MultiClipSpec(num_clips=5, shift=0.5, placement="random")
    sample = examples.sync_sample(raw, np.random.default_rng(0), spec=spec, image_size=32, randflip=False)
    assert sample["video"].shape == (5, 3, 12, 32, 32) and sample["mel"].shape == (5, 1, 128, 204)
    assert not torch.equal(sample["mel"][0], sample["mel"][1])
    too_long = MultiClipSpec(num_clips=31, shift=0.2, placement="random")
    with pytest.raises(ClipSamplingError):
        examples.sync_sample(raw, np.random.default_rng(0), spec=too_long, image_size=32)


def test_corrupt_samples_are_skipped_and_counted(synthetic_shards):
    from functools import partial

    urls = shard_urls(str(synthetic_shards["root"]), "train")
    make = partial(examples.avsyncd_sample, size=(32, 32))
    stream = training_data.ShardStream(urls[1:], make, batch_size=3, seed=0, shuffle_buffer=0)  # the corrupt clip's shard
    batches = iter(training_data.make_loader(stream))
    drawn = [next(batches) for _ in range(4)]  # 12 good samples from a resampled 4-clip shard (3 good, 1 corrupt)
    assert sum(b["skipped"] for b in drawn) == 4
    assert all(b["video"].shape == (3, 3, 12, 32, 32) for b in drawn)


def test_streams_are_seeded_per_rank(synthetic_shards):
    from functools import partial

    urls = shard_urls(str(synthetic_shards["root"]), "train")
    make = partial(examples.avsyncd_sample, size=(32, 32))

    def first_batch(seed, rank):
        return next(iter(training_data.make_loader(training_data.ShardStream(urls, make, 2, seed=seed, rank=rank, shuffle_buffer=4))))

    a, b, other_rank = first_batch(5, 0), first_batch(5, 0), first_batch(5, 1)
    assert torch.equal(a["video"], b["video"])
    assert not torch.equal(a["video"], other_rank["video"])


def test_a_stream_of_only_bad_samples_fails_loudly(tmp_path):

    bad = [{"__key__": f"bad-{i}", "json": b"{}", "mp4": b"x", "wav": b"y"} for i in range(3)]
    (tmp_path / "train-000000.tar").write_bytes(tar_bytes(bad))
    write_index(str(tmp_path), "train", [{"url": "train-000000.tar", "nsamples": 3}], {})
    stream = training_data.ShardStream(shard_urls(str(tmp_path), "train"), examples.avsyncd_sample, 1, seed=0, shuffle_buffer=0)
    with pytest.raises(RuntimeError, match="in a row could not be decoded"):
        next(iter(training_data.make_loader(stream)))


# ------------------------------------------------------------------------------------------------ engine


def _sync_config(tmp_path, *overrides) -> TrainSyncConfig:
    return load_config(TrainSyncConfig, "train-sync-tiny", overrides=[f"data.root={tmp_path}", f"run.storage_path={tmp_path}/runs", *overrides])


def test_deepspeed_config_from_the_typed_config(tmp_path):
    from avsync_ray.training.engine import deepspeed_config

    config = _sync_config(tmp_path, "deepspeed.zero_stage=3", "deepspeed.precision=bf16", "optimizer.grad_accum_steps=4", "loader.batch_size=2")
    ds = deepspeed_config(config, world_size=8)
    assert ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 1.0
    assert "fp16" not in ds


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_checkpoint_round_trip_and_export_weights(tmp_path, gloo_world_of_one, zero_stage):
    """Save after 3 AdamW steps, load into a fresh engine: same weights, optimizer moments and schedule; the
    consolidated fp32 state dict (what export writes) equals the module's weights, buffers included."""
    from avsync_ray.training import engine as ds
    from avsync_ray.training.components import build_sync_classifier
    from avsync_ray.training.loops import PairwiseScores

    config = _sync_config(tmp_path, f"deepspeed.zero_stage={zero_stage}", "model.base_width=4", "model.image_size=32", "optimizer.warmup_steps=5")

    def fresh_engine():
        torch.manual_seed(0)
        return ds.initialize(PairwiseScores(build_sync_classifier(config.model)), config, world_size=1)

    engine = fresh_engine()
    audio, video = torch.randn(2, 3, 1, 128, 204), torch.randn(2, 3, 3, 12, 32, 32)
    for _ in range(3):
        engine.backward(contrastive_loss(engine(audio, video), 0.1).loss)
        engine.step()
    meta = {"task": "sync-classifier", "signature": ds.resume_signature(config, "sync-classifier"), "config": config.model_dump(mode="json")}
    ds.save_checkpoint(engine, tmp_path / "ckpt", 3, meta)
    restored = fresh_engine()
    assert ds.load_checkpoint(restored, tmp_path / "ckpt")["step"] == 3
    assert restored.global_steps == 3 and restored.get_lr() == engine.get_lr()
    with torch.no_grad():
        expected = {k: v.clone() for k, v in engine.module.state_dict().items()}
        if zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                expected = {k: v.clone() for k, v in engine.module.state_dict().items()}
    exported = ds.consolidated_state_dict(tmp_path / "ckpt")
    assert set(exported) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(exported[name], value.float() if value.is_floating_point() else value)
    # The next step from the restored engine equals the next step of the original one.
    for each in (engine, restored):
        each.backward(contrastive_loss(each(audio, video), 0.1).loss)
        each.step()
    if zero_stage < 3:
        for (name, a), b in zip(engine.module.state_dict().items(), restored.module.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)


def test_resume_signature_rejects_incompatible_changes(tmp_path):
    from avsync_ray.training.engine import IncompatibleResumeError, check_resume, resume_signature

    config = _sync_config(tmp_path)
    meta = {"step": 40, "signature": resume_signature(config, "sync-classifier")}
    check_resume(meta, _sync_config(tmp_path, "optimizer.lr=0.01", "max_steps=500"), "sync-classifier")  # fine to change
    with pytest.raises(IncompatibleResumeError) as error:
        check_resume(meta, _sync_config(tmp_path, "deepspeed.zero_stage=3", "model.base_width=16"), "sync-classifier")
    message = str(error.value)
    assert "deepspeed.zero_stage: checkpoint has 2, config has 3" in message and "base_width" in message and "step 40" in message
    # Another worker count is not a refusal: the ZeRO checkpoint must become a universal one first ...
    assert check_resume(meta, _sync_config(tmp_path, "scaling.num_workers=4"), "sync-classifier") is True
    assert check_resume(meta, _sync_config(tmp_path), "sync-classifier") is False
    # ... which then loads on any count, and still refuses other changes.
    assert check_resume({**meta, "universal": True}, _sync_config(tmp_path, "scaling.num_workers=1"), "sync-classifier") is False
    with pytest.raises(IncompatibleResumeError, match="deepspeed.zero_stage"):
        check_resume({**meta, "universal": True}, _sync_config(tmp_path, "deepspeed.zero_stage=1", "scaling.num_workers=1"), "sync-classifier")


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_a_universal_conversion_resumes_exactly(tmp_path, gloo_world_of_one, zero_stage):
    """A ZeRO checkpoint converted to DeepSpeed's universal format and loaded by a universal engine gives the
    weights, the Adam moments and the schedule back: the next step equals the original engine's next step (the
    loss curve goes on where it was). The launcher converts once and reuses the conversion."""
    from avsync_ray.training import engine as ds
    from avsync_ray.training.components import build_sync_classifier
    from avsync_ray.training.launcher import resolve_resume
    from avsync_ray.training.loops import PairwiseScores

    config = _sync_config(tmp_path, f"deepspeed.zero_stage={zero_stage}", "model.base_width=4", "model.image_size=32", "optimizer.warmup_steps=5",
                          "scaling.num_workers=1")  # fmt: skip

    def fresh_engine(load_universal: bool):
        torch.manual_seed(0)
        return ds.initialize(PairwiseScores(build_sync_classifier(config.model)), config, world_size=1, load_universal=load_universal)

    engine = fresh_engine(False)
    audio, video = torch.randn(2, 3, 1, 128, 204), torch.randn(2, 3, 3, 12, 32, 32)
    for _ in range(3):
        engine.backward(contrastive_loss(engine(audio, video), 0.1).loss)
        engine.step()
    # Written by two workers: its signature says so, and a resume on this one-worker config converts it.
    two_workers = _sync_config(tmp_path, f"deepspeed.zero_stage={zero_stage}", "model.base_width=4", "model.image_size=32", "scaling.num_workers=2")
    run_dir = tmp_path / "runs" / config.run.name
    checkpoint = run_dir / "checkpoint_2026-01-01_00-00-00.000000"
    ds.save_checkpoint(engine, checkpoint, 3, {"task": "sync-classifier", "signature": ds.resume_signature(two_workers, "sync-classifier")})
    universal = resolve_resume(_sync_config(tmp_path, f"deepspeed.zero_stage={zero_stage}", "model.base_width=4", "model.image_size=32",
                                            "scaling.num_workers=1", "run.resume=latest"), "sync-classifier", str(run_dir))  # fmt: skip
    assert universal == str(run_dir / "universal-step_00000003")
    meta = ds.read_checkpoint_meta(universal)
    assert meta["universal"] and meta["step"] == 3 and meta["tag"] == "step_00000003_universal" and meta["converted_from"] == str(checkpoint)
    assert ds.to_universal(str(checkpoint), universal) == universal  # reused, not converted again

    restored = fresh_engine(True)
    assert ds.load_checkpoint(restored, universal)["step"] == 3
    assert restored.global_steps == 3 and restored.get_lr() == engine.get_lr()
    for each in (engine, restored):
        each.backward(contrastive_loss(each(audio, video), 0.1).loss)
        each.step()
    for (name, a), b in zip(engine.module.state_dict().items(), restored.module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)


def test_launcher_refuses_to_continue_a_run_silently(tmp_path):
    from avsync_ray.training.engine import CHECKPOINT_META, resume_signature
    from avsync_ray.training.launcher import RunExistsError, resolve_resume

    config = _sync_config(tmp_path)
    run_dir = tmp_path / "runs" / config.run.name
    assert resolve_resume(config, "sync-classifier", str(run_dir)) is None  # a new run
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        resolve_resume(_sync_config(tmp_path, "run.resume=latest"), "sync-classifier", str(run_dir))
    checkpoint = run_dir / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / CHECKPOINT_META).write_text(json.dumps({"step": 20, "tag": "step_00000020", "signature": resume_signature(config, "sync-classifier")}))
    with pytest.raises(RunExistsError, match="--resume latest"):
        resolve_resume(config, "sync-classifier", str(run_dir))
    assert resolve_resume(_sync_config(tmp_path, "run.resume=latest"), "sync-classifier", str(run_dir)) is None
    assert resolve_resume(_sync_config(tmp_path, f"run.resume={checkpoint}", "run.name=other"), "sync-classifier", str(run_dir)) == str(checkpoint)


def test_training_configs_validate_their_weights(tmp_path):
    from avsync_ray.config.base import ConfigError

    with pytest.raises(ConfigError, match="model.avid_cma"):
        load_config(TrainSyncConfig, "train-sync", overrides=[f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="model.sd15, model.imagebind"):
        load_config(TrainConfig, "train", overrides=[f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config(TrainConfig, "train-tiny", overrides=[f"data.root={tmp_path}", "height=60"])
    with pytest.raises(ConfigError, match="fp16|precision"):
        load_config(TrainConfig, "train-tiny", overrides=[f"data.root={tmp_path}", "deepspeed.precision=fp16"])


def test_grad_norm_is_known_for_every_zero_stage(tmp_path, gloo_world_of_one):
    """ZeRO-0 in fp32 clips without keeping the norm; the loop measures it itself, before clipping."""
    from avsync_ray.training import engine as ds
    from avsync_ray.training.components import build_sync_classifier
    from avsync_ray.training.loops import PairwiseScores, _unclipped_grad_norm

    audio, video = torch.randn(2, 3, 1, 128, 204), torch.randn(2, 3, 3, 12, 32, 32)
    for stage in (0, 2):
        config = _sync_config(tmp_path, f"deepspeed.zero_stage={stage}", "model.base_width=4", "model.image_size=32", "optimizer.max_grad_norm=1e-6")
        torch.manual_seed(0)
        engine = ds.initialize(PairwiseScores(build_sync_classifier(config.model)), config, world_size=1)
        engine.backward(contrastive_loss(engine(audio, video), 0.1).loss)
        measured = _unclipped_grad_norm(engine)
        engine.step()
        norm = engine.get_global_grad_norm() if stage else measured
        assert norm is not None and float(norm) > 1e-3  # the norm before clipping to 1e-6
        assert (measured is None) == (stage > 0)


def test_progress_line_shows_what_a_person_follows_and_leaves_the_rest_to_mlflow():
    from avsync_ray.training.loops import progress_line

    metrics = {"loss": 2.40531, "a2v_accuracy": 0.0989, "v2a_accuracy": 0.1023, "memory/peak_mb": 1248.2, "data/skipped_samples": 0.0,
               "samples_per_s": 7.98, "lr": 0.001, "step": 20, "grad_norm": 1.1448}  # fmt: skip
    assert progress_line(20, 400, metrics) == "step 20/400 loss 2.405 a2v_accuracy 0.0989 v2a_accuracy 0.1023 grad_norm 1.145 lr 0.001 samples_per_s 7.98"
    assert progress_line(5, 40, {"loss": 0.9469}) == "step 5/40 loss 0.9469"


def test_ray_trains_report_narration_is_quieted_under_the_name_it_logs_with():
    import logging

    import ray.train.v2._internal.execution.context as train_context

    from avsync_ray.ray_runtime import quiet_ray_internals

    quiet_ray_internals()
    assert train_context.logger.getEffectiveLevel() == logging.WARNING  # "Reporting training result N: ..." is INFO


def test_a_restart_takes_the_newest_checkpoint_every_rank_uploaded(tmp_path, monkeypatch):
    """A node lost after every rank uploaded the step-4 checkpoint but before Ray Train's controller committed it:
    the restarted group starts from step 4, not from the committed step 2. A checkpoint some rank did not finish
    uploading (step 6), or one of another world size, is never taken; a universal conversion at least as new wins."""
    import ray.train

    from avsync_ray.training import engine as ds
    from avsync_ray.training.loops import _checkpoint_to_restore

    run_dir = tmp_path / "run"

    def checkpoint(step: int, ranks: list[int], world_size: int = 2, name: str | None = None, **extra):
        folder = run_dir / (name or f"checkpoint_2026-01-01_00-00-{step:02d}.000000")
        folder.mkdir(parents=True)
        (folder / ds.CHECKPOINT_META).write_text(json.dumps({"step": step, "tag": ds.checkpoint_tag(step), "world_size": world_size, **extra}))
        for rank in ranks:
            (folder / ds.uploaded_marker(rank)).touch()
        return folder

    committed = checkpoint(2, [0, 1])
    uncommitted = checkpoint(4, [0, 1])
    checkpoint(6, [0])  # rank 1's upload never finished
    checkpoint(8, [0, 1, 2], world_size=3)  # another world size: only a universal conversion loads it here
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(str(committed)))
    chosen, meta = _checkpoint_to_restore({"run_dir": str(run_dir)}, world_size=2)
    assert chosen.path == str(uncommitted) and meta["step"] == 4

    universal = checkpoint(4, [], name="universal-step_00000004", universal=True)
    chosen, meta = _checkpoint_to_restore({"run_dir": str(run_dir), "resume_from": str(universal)}, world_size=2)
    assert chosen.path == str(universal) and meta["universal"]
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert _checkpoint_to_restore({"run_dir": str(tmp_path / "new-run")}, world_size=2) == (None, {})
