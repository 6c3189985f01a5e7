"""``avsync precompute``: features equal what training computes from the same clips, shards round-trip with every
original member and a recorded reason for each sample left out, training refuses features made for other
settings, and (on Ray) precomputed shards train."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from avsync_ray import examples
from avsync_ray.config.base import load_config
from avsync_ray.config.train import PrecomputeConfig, TrainConfig
from avsync_ray.media.clips import ClipSamplingError
from avsync_ray.pipelines.presets import tiny_pipeline
from avsync_ray.shards import AUDIO_TOKENS_MEMBER, VAE_MOMENTS_MEMBER, read_index, read_samples, shard_urls
from avsync_ray.training import features as pre, objectives
from avsync_ray.training.precompute import run_precompute


def _precompute_config(root, out, *overrides) -> PrecomputeConfig:
    return load_config(PrecomputeConfig, "precompute-tiny", overrides=[f"input.root={root}", f"output={out}", "height=32", "width=32", *overrides])


@pytest.fixture(scope="module")
def encoders():
    pipe = tiny_pipeline(0)
    return pipe.vae.eval(), pipe.audio_encoder.eval()


def test_window_starts_cover_the_sample():
    assert pre.window_starts(3.0, 2.0, 3) == [0.0, 0.5, 1.0]
    assert pre.window_starts(3.0, 2.0, 1) == [0.5]
    assert pre.window_starts(2.0, 2.0, 2) == [0.0, 0.0]
    with pytest.raises(ClipSamplingError, match="training needs 2.000 s"):
        pre.window_starts(1.5, 2.0, 3)


def test_stored_moments_draw_the_same_latents_as_the_vae(encoders):
    """Training from moments is training from the VAE: same generator, same latents; the moments' mean is each
    frame's posterior mean."""
    vae, _ = encoders
    video = torch.rand(2, 3, 3, 32, 32)
    moments = objectives.vae_moments(vae, video)
    assert moments.shape == (2, 8, 3, 4, 4)
    direct = objectives.video_latents(vae, video, torch.Generator().manual_seed(4))
    stored = objectives.sample_video_latents(moments, vae.config.scaling_factor, torch.Generator().manual_seed(4))
    torch.testing.assert_close(stored, direct)
    with torch.no_grad():
        frame = vae.encode(video[1, :, 2][None] * 2 - 1).latent_dist.mean[0]
    torch.testing.assert_close(moments[1, :4, 2], frame)


def test_sample_features_are_the_training_clips_encoded(synthetic_shards, encoders):
    vae, audio_encoder = encoders
    config = _precompute_config(synthetic_shards["root"], "unused")
    raw = read_samples(shard_urls(str(synthetic_shards["root"]), "test")[0])[0]
    members = pre.sample_features(raw, vae, audio_encoder, config)
    moments = np.load(io.BytesIO(members[VAE_MOMENTS_MEMBER]))
    tokens = np.load(io.BytesIO(members[AUDIO_TOKENS_MEMBER]))
    assert moments.dtype == np.float16 and moments.shape == (3, 2, 8, 12, 4, 4)
    assert tokens.dtype == np.float16 and tokens.shape[0] == 3

    source = examples.clip_source(raw)
    starts = pre.window_starts(source.duration, 2.0, 3)
    for window, flip in ((0, False), (2, True)):
        clip = examples.avsyncd_clip(raw, source, starts[window], size=(32, 32), flip=flip)
        expected = objectives.vae_moments(vae, clip["video"][None])[0]
        torch.testing.assert_close(torch.from_numpy(moments[window, int(flip)].astype(np.float32)), expected, atol=2e-2, rtol=2e-3)
        with torch.no_grad():
            expected_tokens = audio_encoder(clip["mel"][None]).audio_encodings[0]
        torch.testing.assert_close(torch.from_numpy(tokens[window].astype(np.float32)), expected_tokens, atol=2e-2, rtol=2e-3)


def test_precompute_shard_keeps_members_and_records_what_it_leaves_out(synthetic_shards, encoders, tmp_path):
    from functools import partial

    vae, audio_encoder = encoders
    config = _precompute_config(synthetic_shards["root"], tmp_path, "windows_per_clip=2", "flip_variants=false")
    source_url = shard_urls(str(synthetic_shards["root"]), "train")[1]  # holds the corrupt clip
    featurize = partial(pre.sample_features, vae=vae, audio_encoder=audio_encoder, config=config)
    entry = pre.precompute_shard(source_url, f"{tmp_path}/train-000001.tar", featurize, expected=4)

    written = (tmp_path / "train-000001.tar").read_bytes()
    assert entry["filesize"] == len(written) and entry["sha256"] == hashlib.sha256(written).hexdigest()
    assert [item["key"] for item in entry["skipped"]] == [synthetic_shards["corrupt_key"]] and entry["skipped"][0]["reason"]
    source = {s["__key__"]: s for s in read_samples(source_url)}
    output = read_samples(f"{tmp_path}/train-000001.tar")
    assert entry["nsamples"] == len(output) == 3
    for sample in output:
        assert all(sample[name] == source[sample["__key__"]][name] for name in ("mp4", "wav", "json"))
        example = examples.precomputed_sample(sample, np.random.default_rng(0))
        assert example["vae_moments"].shape == (8, 12, 4, 4) and example["vae_moments"].dtype == torch.float32
        assert example["audio_tokens"].shape[0] > 1 and example["prompt"] == "sync"
    # A tar that lost samples to damage is reported against the input index's count.
    assert pre.precompute_shard(source_url, f"{tmp_path}/again.tar", featurize, expected=6)["skipped"][-1]["reason"].startswith("unreadable: 2")


def test_precomputed_sample_picks_windows_and_flips():
    moments = np.arange(3 * 2 * 8 * 2 * 1 * 1, dtype=np.float16).reshape(3, 2, 8, 2, 1, 1)
    tokens = np.arange(3 * 4 * 2, dtype=np.float16).reshape(3, 4, 2)
    raw = {"vae_moments.npy": _npy(moments), "audio_tokens.npy": _npy(tokens), "json": json.dumps({"label": "dog"}).encode()}
    rng = np.random.default_rng(0)
    drawn = [examples.precomputed_sample(raw, rng) for _ in range(40)]
    seen = {(int(d["vae_moments"][0, 0, 0, 0]) // 32, int(d["vae_moments"][0, 0, 0, 0]) % 32 // 16) for d in drawn}
    assert seen == {(w, f) for w in range(3) for f in range(2)}  # every window and both flip variants
    for d in drawn:  # the tokens belong to the same window as the moments
        assert int(d["audio_tokens"][0, 0]) // 8 == int(d["vae_moments"][0, 0, 0, 0]) // 32
    unflipped = [examples.precomputed_sample(raw, rng, randflip=False) for _ in range(20)]
    assert all(int(d["vae_moments"][0, 0, 0, 0]) % 32 // 16 == 0 for d in unflipped)
    raw["audio_tokens.npy"] = _npy(tokens[:2])
    with pytest.raises(ValueError, match="do not belong together"):
        examples.precomputed_sample(raw, rng)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_training_refuses_features_made_for_other_settings(encoders, tmp_path):
    vae, audio_encoder = encoders
    fingerprint = pre.encoder_fingerprint(vae, audio_encoder)
    assert fingerprint == pre.encoder_fingerprint(*(lambda p: (p.vae, p.audio_encoder))(tiny_pipeline(0)))
    assert fingerprint != pre.encoder_fingerprint(*(lambda p: (p.vae, p.audio_encoder))(tiny_pipeline(1)))

    descriptor = pre.features_descriptor(_precompute_config(tmp_path, "out"), fingerprint)
    train = load_config(TrainConfig, "train-tiny", overrides=[f"data.root={tmp_path}", "height=32", "width=32", "precomputed=true"])
    index = {"name": "train", pre.FEATURES_KEY: descriptor}
    assert pre.check_features(index, train, fingerprint) == descriptor
    with pytest.raises(pre.PrecomputedFeaturesError, match="run `avsync precompute`"):
        pre.check_features({"name": "train"}, train)
    with pytest.raises(pre.PrecomputedFeaturesError, match="height: shards 32, training 64"):
        pre.check_features(index, train.model_copy(update={"height": 64}))
    with pytest.raises(pre.PrecomputedFeaturesError, match="encoders.*seed"):
        pre.check_features(index, train, "0" * 64)


def test_precompute_and_train_on_ray(ray_session, synthetic_shards, tmp_path):
    """Ray Data writes the featurized shards and commits their index (run in process, the job writes the same
    shards); a run on them trains (on the stored features) and a run with other encoders is refused by its workers."""
    from avsync_ray.training.launcher import launch
    from avsync_ray.training.loops import AVSyncDTask

    out = tmp_path / "precomputed"
    summary = run_precompute(_precompute_config(synthetic_shards["root"], out, f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", "ray.progress_bars=false",
                                                "ray.in_process=false"))  # fmt: skip
    index = read_index(str(out), "train")
    source = read_index(str(synthetic_shards["root"]), "train")
    assert summary["samples"] == index["nsamples"] == source["nsamples"] - 1 and summary["skipped"] == 1
    assert [s["key"] for s in index["skipped_samples"]] == [synthetic_shards["corrupt_key"]]
    assert [e["url"] for e in index["shardlist"]] == [e["url"] for e in source["shardlist"]]
    assert index[pre.FEATURES_KEY]["height"] == 32 and summary["mlflow_run_id"]
    run_precompute(_precompute_config(synthetic_shards["root"], tmp_path / "in-process", "tracking.enabled=false", "ray.in_process=true"))
    assert [e["sha256"] for e in read_index(str(tmp_path / "in-process"), "train")["shardlist"]] == [e["sha256"] for e in index["shardlist"]]

    overrides = [f"data.root={out}", f"run.storage_path={tmp_path}/runs", "tracking.enabled=false", "height=32", "width=32", "precomputed=true"]
    config = load_config(TrainConfig, "train-tiny", overrides=[*overrides, "max_steps=2", "scaling.num_workers=1", "deepspeed.zero_stage=0"])
    result = launch(config, "avsyncd")
    assert result["metrics"]["step"] == 2 and np.isfinite(result["metrics"]["loss"])

    # The task draws its inputs from the stored features: the frozen encoders do not run.
    task = AVSyncDTask(config, torch.device("cpu"))
    assert task.make_sample.func is examples.precomputed_sample
    samples = [task.make_sample(raw, np.random.default_rng(0)) for raw in read_samples(f"{out}/train-000000.tar")[:2]]
    batch = {**{k: torch.stack([s[k] for s in samples]) for k in ("vae_moments", "audio_tokens")}, "prompt": [s["prompt"] for s in samples]}
    encoder = task.pipe.audio_encoder
    encoder.null_audio_encodings(torch.device("cpu"), encoder.dtype)  # cached once per run, as in training
    task.pipe.vae.encode = encoder.forward = None  # calling either would raise
    loss, _ = task.loss(task.model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)

    other_seed = load_config(TrainConfig, "train-tiny", overrides=[*overrides, "seed=1"])
    with pytest.raises(pre.PrecomputedFeaturesError, match="encoders"):
        AVSyncDTask(other_seed, torch.device("cpu"))


def test_train_cli_refuses_shards_without_features_before_starting_ray(synthetic_shards, tmp_path):
    from typer.testing import CliRunner

    from avsync_ray.cli import app

    args = ["train", str(synthetic_shards["root"]), "--preset", "train-tiny", "--set", "precomputed=true", "--set", f"run.storage_path={tmp_path}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "run `avsync precompute`" in result.output
