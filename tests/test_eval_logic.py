"""``avsync eval`` without Ray: the official clip sampling, seeds, settings and sweeps, refusing a folder made with
other settings, deterministic generation, and the per-clip metric formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsync_ray.config.base import ConfigError, load_config
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.evaluation.clips import ROW_FIELDS, eval_clip_rows, from_bytes
from avsync_ray.evaluation.generation import ClipGenerator, generation_row
from avsync_ray.evaluation.plan import (
    EvalInput,
    EvalOutputError,
    claim_setting_folders,
    parse_sweep,
    plan_settings,
    setting_record,
)
from avsync_ray.metrics.protocol import clip_seed, clip_starts
from avsync_ray.metrics.video_metrics import ClipFeatures, clip_scores, gt_scores
from avsync_ray.shards import shard_urls


def _config(**values) -> EvalConfig:
    base = {"model": "m", "test": "t", "output": "o", "metrics": ["ia"], "features.imagebind": "ib.pth"}
    overrides = [f"{k}={v}" for k, v in values.items() if k != "sweep"]
    data = {k: v for k, v in base.items()} | ({"sweep": values["sweep"]} if "sweep" in values else {})
    return load_config(EvalConfig, "eval", overrides=overrides, values={k: v for k, v in data.items()})


def test_three_clips_per_video_at_the_official_starts(synthetic_shards):
    url = shard_urls(str(synthetic_shards["root"]), "test")[0]
    rows = eval_clip_rows(EvalInput(shard=url, take=2).to_row(), 12, 6.0, (64, 64), 3)
    assert len(rows) == 6 and set(rows[0]) == set(ROW_FIELDS)
    for video in {r["video"] for r in rows}:
        clips = [r for r in rows if r["video"] == video]
        assert [r["clip"] for r in clips] == [0, 1, 2] and [r["key"] for r in clips] == [f"{video}_clip-{k:02d}" for k in range(3)]
        np.testing.assert_allclose([r["start"] for r in clips], np.linspace(0, 6.0 - 2.0, 3))  # synthetic clips last 6 s
        frames, audio = from_bytes(clips[1]["frames"]), from_bytes(clips[1]["audio"])
        assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.float32 and 0 <= frames.min() and frames.max() <= 1
        assert audio.shape == (32000,) and clips[1]["category"] == "sync"


def test_a_bad_or_short_video_is_one_error_row(synthetic_shards, tmp_path):
    from avsync_ray.synth import synthesize_shards

    corrupt = "sync-s0-00005_0000000_0006000"
    url = [u for u in shard_urls(str(synthetic_shards["root"]), "train") if u.endswith("000001.tar")][0]
    rows = eval_clip_rows(EvalInput(shard=url).to_row(), 12, 6.0, (64, 64), 3)
    bad = [r for r in rows if r["video"] == corrupt]
    assert len(bad) == 1 and bad[0]["clip"] == -1 and "MediaError" in bad[0]["error"]
    assert len(rows) == 1 + 3 * 3  # the other three videos of that shard give their clips
    with pytest.raises(ValueError, match="needs 2.000 s"):
        clip_starts(1.5)
    synthesize_shards(tmp_path, "test", 1, seed=0)
    rows = eval_clip_rows(EvalInput(shard=shard_urls(str(tmp_path), "test")[0]).to_row(), 12, 1.5, (64, 64), 3)  # 8-s clips of 6-s videos
    assert len(rows) == 1 and rows[0]["error"].startswith("ClipTooShortError")


def test_a_raw_test_video_past_the_limits_is_one_error_row_decoded_no_further(tmp_path):
    """A raw video whose header says 2 s but which holds 30 s: its audio is decoded up to limits.max_video_s only."""
    from hostile_media import lying_mkv

    from avsync_ray.config.sampling import InputLimits

    (tmp_path / "lying.mkv").write_bytes(lying_mkv(header_s=2.0, holds_s=30.0))
    item = EvalInput(uri=str(tmp_path / "lying.mkv"), key="lying", label="ball").to_row()
    rows = eval_clip_rows(item, 12, 6.0, (64, 64), 3, InputLimits(max_video_s=10))
    assert len(rows) == 1 and "too long" in rows[0]["error"] and "more than 10 s of audio decoded" in rows[0]["error"], rows
    assert len(eval_clip_rows(item, 12, 6.0, (64, 64), 3)) == 3  # within the default limits: 30 s of test video, three clips


def test_seeds_depend_on_the_clip_alone():
    assert clip_seed(0, "a", 1) == clip_seed(0, "a", 1)
    assert len({clip_seed(0, "a", 0), clip_seed(0, "a", 1), clip_seed(0, "b", 0), clip_seed(1, "a", 0)}) == 4
    assert 0 <= clip_seed(5, "x", 2) < 2**63


def test_sweeps_are_every_combination_and_parse_by_field_type():
    assert parse_sweep("audio_guidance_scale=1,2.5") == ("audio_guidance_scale", [1, 2.5])
    assert parse_sweep("scheduler=pndm,ddim") == ("scheduler", ["pndm", "ddim"])
    config = _config(sweep={"audio_guidance_scale": [1, 4], "num_inference_steps": [10, 20]}, baselines="[static]")
    settings = plan_settings(config)
    assert [s.name for s in settings] == ["audio_guidance_scale-1.0_num_inference_steps-10", "audio_guidance_scale-1.0_num_inference_steps-20",
                                          "audio_guidance_scale-4.0_num_inference_steps-10", "audio_guidance_scale-4.0_num_inference_steps-20",
                                          "baseline-static"]  # fmt: skip
    assert settings[3].sampling.audio_guidance_scale == 4.0 and settings[3].sampling.num_inference_steps == 20
    assert settings[4].sampling == config.sampling  # baselines run at the unswept settings
    with pytest.raises(ConfigError, match="cannot sweep 'height'"):
        _config(sweep={"height": [64, 128]})
    with pytest.raises(ConfigError, match="scheduler"):
        _config(sweep={"scheduler": ["pndm", "nope"]})
    with pytest.raises(ConfigError, match="features.i3d"):
        load_config(EvalConfig, "eval", values={"model": "m", "test": "t", "output": "o"}, overrides=["metrics=[fvd]"])


def test_a_folder_with_clips_of_other_settings_is_refused(tmp_path):
    config = _config()
    setting = plan_settings(config)[0]
    record = setting_record(setting, config, {"uri": "m", "version": None, "files": "abc"}, "set1")
    claim_setting_folders(str(tmp_path), [record])
    claim_setting_folders(str(tmp_path), [record])  # the same settings resume
    other = setting_record(plan_settings(_config(**{"sampling.seed": 5}))[0], config, {"uri": "m", "version": None, "files": "abc"}, "set1")
    with pytest.raises(EvalOutputError, match="sampling differ"):
        claim_setting_folders(str(tmp_path), [other])
    assert json.loads((tmp_path / "generated" / "model" / "setting.json").read_text()) == record


def _jobs(synthetic_shards, settings, count=2):
    url = shard_urls(str(synthetic_shards["root"]), "test")[0]
    rows = eval_clip_rows(EvalInput(shard=url, take=1).to_row(), 12, 6.0, (64, 64), 3)[:count]
    jobs = [generation_row(r, name, clip_seed(0, r["video"], r["clip"])) for r in rows for name in settings]
    return {k: [j[k] for j in jobs] for k in ROW_FIELDS}


def test_generation_is_deterministic_and_a_clip_regenerates_alone(synthetic_shards, tiny_model_dir, tmp_path):
    config = _config(**{"sampling.height": 64, "sampling.width": 64, "sampling.num_inference_steps": 2}, baselines="[static]")
    settings = {s.name: {"kind": s.kind, "sampling": s.sampling.model_dump()} for s in plan_settings(config)}

    def run(folder, batch_size, count=2):
        paths = {name: str(tmp_path / folder / name) for name in settings}
        out = ClipGenerator(str(tiny_model_dir), "sqlite:///unused.db", config.generate_actor.model_copy(update={"num_gpus": 0}), settings,
                            batch_size, paths)(_jobs(synthetic_shards, settings, count))  # fmt: skip
        assert not any(out["error"]) and not any(out["image"])  # conditioning arrays are dropped after generation
        return {p: open(p, "rb").read() for p in out["path"]}

    batched = run("a", batch_size=2)
    assert len(batched) == 4
    again = run("b", batch_size=2)
    assert list(again.values()) == list(batched.values())  # same seeds and batches, same bytes
    # The first clip by itself: the same noise, so the same video up to the round-off of batched kernels.
    alone = run("c", batch_size=1, count=1)
    first = next(p for p in batched if "/model/" in p)
    difference = np.abs(_frames(next(iter(alone.values()))).astype(int) - _frames(batched[first]).astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 8
    (tmp_path / "a" / "model").joinpath(first.rsplit("/", 1)[1]).unlink()
    regenerated = run("a", batch_size=2)  # only the missing clip is made again; the others keep their bytes
    assert {p: b for p, b in regenerated.items() if p != first} == {p: b for p, b in batched.items() if p != first}
    assert np.abs(_frames(regenerated[first]).astype(int) - _frames(batched[first]).astype(int)).max() <= 8


def _frames(mp4: bytes) -> np.ndarray:
    from avsync_ray.media import decode

    return decode(mp4, audio=False).frames


def _clip(ia, sync, it=None):
    return ClipFeatures("k", "v", "c", None, None, np.asarray(ia, dtype=np.float64), None if it is None else np.asarray(it), sync)


def test_per_clip_scores_follow_the_paper():
    real = _clip([0.3, 0.1, 0.2], sync=1.0)
    generated = _clip([0.9, 0.2, 0.4], sync=2.0, it=[0.5, 0.1, 0.3])
    scores = clip_scores(generated, real)
    sigmoid = torch.sigmoid
    assert scores["relsync"] == pytest.approx(float(sigmoid(torch.tensor(1.0))))
    align = (float(sigmoid(torch.tensor(0.2 - 0.3))) + float(sigmoid(torch.tensor(0.4 - 0.3)))) / 2  # frames 2..b against real frame 1
    assert scores["alignsync"] == pytest.approx(scores["relsync"] * align)
    assert scores["ia"] == pytest.approx(0.3) and scores["it"] == pytest.approx(0.2)  # frames 2..b only
    assert gt_scores(real)["relsync"] == 0.5


def test_the_no_audio_baseline_ignores_the_audio(tiny_pipe):
    from avsync_ray.config.sampling import SamplingConfig
    from avsync_ray.pipelines.sampling import generate_batch

    sampling = SamplingConfig(num_inference_steps=2, height=64, width=64)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    noise, clicks = np.random.default_rng(1).normal(0, 0.3, 32000).astype(np.float32), np.zeros(32000, np.float32)
    clicks[::4000] = 0.9
    null, _ = generate_batch(tiny_pipe, [image, image], [noise, clicks], ["sync", "sync"], [3, 3], sampling, null_audio=True)
    real, _ = generate_batch(tiny_pipe, [image, image], [noise, clicks], ["sync", "sync"], [3, 3], sampling)
    assert np.array_equal(null[0], null[1])  # the audio does not reach the model
    assert not np.array_equal(real[0], real[1])
