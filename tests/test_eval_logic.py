"""``avsync eval`` without Ray: the official clip sampling, seeds, settings and sweeps, refusing a folder made with
other settings, deterministic generation, the per-clip metric formulas, the official FID recipe (train-mode
BatchNorm over the official batches) and the official loader of generated mp4s."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsync_ray.config.base import ConfigError, load_config
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.evaluation.clips import ROW_FIELDS, eval_video_rows, generation_row, video_clips
from avsync_ray.evaluation.generation import ClipGenerator
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
    rows = list(eval_video_rows(EvalInput(shard=url, take=2).to_row(), 12, 6.0, (64, 64), 3))
    assert len(rows) == 2 and set(rows[0]) == set(ROW_FIELDS)  # one row per test video: its clips share a FID forward
    for video_row in rows:
        video, clips = video_row["video"], video_clips(video_row)
        assert [c["clip"] for c in clips] == [0, 1, 2] and [c["key"] for c in clips] == [f"{video}_clip-{k:02d}" for k in range(3)]
        np.testing.assert_allclose([c["start"] for c in clips], np.linspace(0, 6.0 - 2.0, 3))  # synthetic clips last 6 s
        frames, audio = clips[1]["frames"], clips[1]["audio"]
        assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.float32 and 0 <= frames.min() and frames.max() <= 1
        assert audio.shape == (32000,) and video_row["category"] == "sync"
    assert list(eval_video_rows(EvalInput(shard=url, take=2).to_row(), 12, 6.0, (64, 64), 3, wanted=lambda video: video == rows[1]["video"])) == rows[1:]


def test_a_bad_or_short_video_is_one_error_row(synthetic_shards, tmp_path):
    from avsync_ray.synth import synthesize_shards

    corrupt = "sync-s0-00005_0000000_0006000"
    url = [u for u in shard_urls(str(synthetic_shards["root"]), "train") if u.endswith("000001.tar")][0]
    rows = list(eval_video_rows(EvalInput(shard=url).to_row(), 12, 6.0, (64, 64), 3))
    bad = [r for r in rows if r["video"] == corrupt]
    assert len(bad) == 1 and bad[0]["clip"] == -1 and "MediaError" in bad[0]["error"]
    assert len(rows) == 1 + 3 and all(len(video_clips(r)) == 3 for r in rows if not r["error"])  # the other three videos give their clips
    with pytest.raises(ValueError, match="needs 2.000 s"):
        clip_starts(1.5)
    synthesize_shards(tmp_path, "test", 1, seed=0)
    rows = list(eval_video_rows(EvalInput(shard=shard_urls(str(tmp_path), "test")[0]).to_row(), 12, 1.5, (64, 64), 3))  # 8-s clips of 6-s videos
    assert len(rows) == 1 and rows[0]["error"].startswith("ClipTooShortError")


def test_a_raw_test_video_past_the_limits_is_one_error_row_decoded_no_further(tmp_path):
    """A raw video whose header says 2 s but which holds 30 s: its audio is decoded up to limits.max_video_s only."""
    from hostile_media import lying_mkv

    from avsync_ray.config.sampling import InputLimits

    (tmp_path / "lying.mkv").write_bytes(lying_mkv(header_s=2.0, holds_s=30.0))
    item = EvalInput(uri=str(tmp_path / "lying.mkv"), key="lying", label="ball").to_row()
    rows = list(eval_video_rows(item, 12, 6.0, (64, 64), 3, InputLimits(max_video_s=10)))
    assert len(rows) == 1 and "too long" in rows[0]["error"] and "more than 10 s of audio decoded" in rows[0]["error"], rows
    (video,) = eval_video_rows(item, 12, 6.0, (64, 64), 3)  # within the default limits: 30 s of test video, three clips
    assert not video["error"] and len(video_clips(video)) == 3


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


def test_a_rerun_plans_only_what_storage_lacks(synthetic_shards, monkeypatch):
    from avsync_ray.evaluation import clips as clips_module
    from avsync_ray.evaluation.clips import StoredClips, clip_jobs

    item = EvalInput(shard=shard_urls(str(synthetic_shards["root"]), "test")[0], take=2).to_row()
    config = _config(**{"sampling.height": 64, "sampling.width": 64}).model_dump(mode="json")
    seeds = {"model": 0, "baseline-static": 0}
    first, second = [[f"{r['video']}_clip-{k:02d}" for k in range(3)] for r in eval_video_rows(item, 12, 6.0, (64, 64), 3)]
    nothing = StoredClips(frozenset(), {name: frozenset() for name in seeds}, {name: frozenset() for name in seeds})
    jobs = list(clip_jobs(item, config, seeds, nothing))
    assert sum(j["variant"] == "gt" for j in jobs) == 2 and sum(j["generate"] for j in jobs) == 2 * 3 * 2  # a real row per video
    every = frozenset(first + second)
    # The first video is done; of the second, the real features are stored, one model clip has its mp4 but no features, one has neither.
    stored = StoredClips(every, {"model": every - {second[2]}, "baseline-static": every},
                         {"model": frozenset([*first, second[0]]), "baseline-static": every})  # fmt: skip
    decoded, original = [], clips_module.avsyncd_clip

    def counting(raw, source, start, **kwargs):
        decoded.append(start)
        return original(raw, source, start, **kwargs)

    monkeypatch.setattr(clips_module, "avsyncd_clip", counting)
    jobs = list(clip_jobs(item, config, seeds, stored))
    assert [(j["key"], j["variant"], j["generate"]) for j in jobs] == [(second[1], "model", False), (second[2], "model", True)]
    assert len(decoded) == 3 and not jobs[0]["image"] and jobs[1]["image"]  # only the second video is decoded; conditioning only to generate


def test_which_clips_exist_is_listed_afresh_on_s3(s3_server):
    """The driver lists a setting's folder before the job and again after its actors wrote: the second listing must
    not come from the filesystem instance's cache."""
    import boto3

    from avsync_ray.evaluation.plan import folder_state

    folder = f"{s3_server}/fresh/generated/model"
    client = boto3.client("s3")
    client.put_object(Bucket="avsync-test", Key="fresh/generated/model/a_clip-00.mp4", Body=b"mp4")
    assert folder_state(folder).videos == {"a_clip-00"}
    for name in ("a_clip-00.features.npz", "a_clip-01.mp4", "a_clip-01.mp4.tmp-0123abcd"):  # written by other processes
        client.put_object(Bucket="avsync-test", Key=f"fresh/generated/model/{name}", Body=b"x")
    state = folder_state(folder)
    assert state.videos == {"a_clip-00", "a_clip-01"} and state.features == {"a_clip-00": f"{folder}/a_clip-00.features.npz"}


def _jobs(synthetic_shards, settings, count=2, generate=lambda key: True):
    url = shard_urls(str(synthetic_shards["root"]), "test")[0]
    video_row = next(eval_video_rows(EvalInput(shard=url, take=1).to_row(), 12, 6.0, (64, 64), 3))
    clips = video_clips(video_row)[:count]
    jobs = [generation_row(c, video_row, name, clip_seed(0, video_row["video"], c["clip"]), generate(c["key"]))
            for c in clips for name in settings]  # fmt: skip
    return {k: [j[k] for j in jobs] for k in ROW_FIELDS}


def test_generation_is_deterministic_and_a_clip_regenerates_alone(synthetic_shards, tiny_model_dir, tmp_path):
    config = _config(**{"sampling.height": 64, "sampling.width": 64, "sampling.num_inference_steps": 2}, baselines="[static]")
    settings = {s.name: {"kind": s.kind, "sampling": s.sampling.model_dump()} for s in plan_settings(config)}

    def run(folder, batch_size, count=2, generate=lambda key: True):
        paths = {name: str(tmp_path / folder / name) for name in settings}
        out = ClipGenerator(str(tiny_model_dir), "sqlite:///unused.db", config.generate_actor.model_copy(update={"num_gpus": 0}), settings,
                            batch_size, paths)(_jobs(synthetic_shards, settings, count, generate))  # fmt: skip
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
    missing = first.rsplit("/", 1)[1].removesuffix(".mp4")
    regenerated = run("a", batch_size=2, generate=lambda key: key == missing)  # only the clip marked missing is made again
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


# ------------------------------------------------------------------------------------------------ the official recipe


def _official_fid_features(video_tensors: torch.Tensor, net) -> torch.Tensor:
    """One forward of ASVA's ``eval.py`` (6587938): ``compute_fid_image_features(rearrange(video, "b f c h w ->
    (b f) c h w"), iv3_fid)`` with its ``preprocess_images``, then ``rearrange(features, "(b f) c -> b f c")``."""
    from torchvision import transforms

    b, f = video_tensors.shape[:2]
    images = video_tensors.flatten(0, 1).contiguous()
    transform = transforms.Compose([transforms.Resize((229, 229), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
                                    transforms.CenterCrop(229)])  # fmt: skip
    images = (transform(images) * 2 - 1).contiguous()
    return net(images)[0].flatten(1).reshape(b, f, -1)


def _scorer_rows(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in ROW_FIELDS}


@torch.no_grad()
def test_official_fid_features_equal_the_official_recipe_at_any_batching(synthetic_shards, tmp_path):
    """A test video's real clips share one train-mode BatchNorm forward, a generated mp4 has its own: the features
    the scorer writes equal ASVA's on the same (random) weights, whatever rows share a Ray batch."""
    from test_feature_networks import pytorch_fid_inception_v3

    from avsync_ray.config.base import ActorConfig
    from avsync_ray.evaluation.clips import row
    from avsync_ray.evaluation.scoring import ClipScorer, read_generated
    from avsync_ray.media import encode_mp4
    from avsync_ray.metrics.protocol import float_frames
    from avsync_ray.models.feature_networks import random_fid_inception_state_dict

    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception_state_dict(seed=0), weights)
    frames, fps = 3, 6.0  # 2 test videos x 2 clips x 3 frames, and 2 generated mp4s: the FID Inception is full size
    url = shard_urls(str(synthetic_shards["root"]), "test")[0]
    videos = list(eval_video_rows(EvalInput(shard=url, take=2).to_row(), frames, fps, (64, 64), 2))
    rng = np.random.default_rng(0)
    generated = []
    for index in range(2):
        path = tmp_path / "generated" / f"clip-{index}.mp4"
        path.parent.mkdir(exist_ok=True)
        encode_mp4(rng.integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8), fps, rng.normal(0, 0.1, 8000).astype(np.float32), path=str(path))
        generated.append(row(key=f"clip-{index}", video=videos[index]["video"], clip=0, category="sync", variant="model", path=str(path)))

    def score(batches: list[list[dict]]) -> dict[str, np.ndarray]:
        scorer = ClipScorer({"fid_inception": str(weights)}, ["fid"], "official", ActorConfig(num_gpus=0), frames, fps, str(tmp_path / "real"))
        uris = [uri for batch in batches for uri in scorer(_scorer_rows(batch))["features"]]
        return {features.key: features.fid for features in (ClipFeatures.from_bytes(open(uri, "rb").read()) for uri in uris)}

    together = score([[generated[0], videos[0], generated[1], videos[1]]])
    alone = score([[r] for r in (videos[1], generated[1], videos[0], generated[0])])
    assert sorted(together) == sorted(alone) == sorted([f"{v['video']}_clip-0{k}" for v in videos for k in range(2)] + ["clip-0", "clip-1"])
    for key in together:
        torch.testing.assert_close(torch.from_numpy(alone[key]), torch.from_numpy(together[key]), rtol=1e-6, atol=1e-7)

    official = pytorch_fid_inception_v3(weights, resize_input=False, normalize_input=False)  # never .eval(), as eval.py
    for video in videos:
        clips = video_clips(video)
        tensors = torch.stack([float_frames(c["frames"]) for c in clips])  # (b, f, c, h, w), the real clips of one video
        expected = _official_fid_features(tensors, official)[:, 1:]
        for clip, features in zip(clips, expected):
            assert together[clip["key"]].shape == (frames - 1, 2048)
            torch.testing.assert_close(torch.from_numpy(together[clip["key"]]), features, rtol=1e-4, atol=1e-4 * float(features.abs().max()))
    for clip in generated:
        loaded, _ = read_generated(clip["path"], frames, fps, "official")
        expected = _official_fid_features(float_frames(loaded)[None], official)[0, 1:]
        torch.testing.assert_close(torch.from_numpy(together[clip["key"]]), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _official_loader(frame_pts_us: list[int], start: float, fps: float, num_frames: int) -> list[int]:
    """ASVA's ``load_video_clip_from_videoreader`` (``avgen/data/utils.py`` at 6587938), written out over what
    torchvision 0.16's video_reader yields: the frames after ``seek(max(start, 0.))`` (exact seek: a frame before
    the offset, in whole microseconds, is dropped), each with ``pts`` = its timestamp in whole microseconds x 1e-6.
    Returns the indices of the frames it stacks."""
    import itertools

    offset = int(max(start, 0.0) * 1e6)
    av_reader = [{"pts": float(us) * 1e-6, "data": index} for index, us in enumerate(frame_pts_us) if us >= offset]
    clip_start_timestamp, clip_duration, video_fps, video_num_frame = start, num_frames / fps, fps, num_frames
    keyframe_coverage = 1.0 / video_fps
    video_frames = []
    frame_timestamp = clip_start_timestamp
    for _, frame in enumerate(itertools.takewhile(lambda x: x["pts"] <= clip_start_timestamp + clip_duration + keyframe_coverage / 2.0, av_reader)):
        if frame["pts"] >= frame_timestamp:
            video_frames.append(frame["data"])
            frame_timestamp += keyframe_coverage
        if len(video_frames) == video_num_frame:
            break
    if len(video_frames) < video_num_frame:
        for _ in range(video_num_frame - len(video_frames)):
            video_frames.append(video_frames[-1])
    return video_frames


def test_the_official_frame_loader_is_followed_to_the_microsecond():
    from fractions import Fraction

    from avsync_ray.metrics.protocol import official_frame_indices

    def pts_us(count: int, step: Fraction) -> list[int]:  # av_rescale_q to microseconds: nearest, halves up
        return [int(k * step * 1_000_000 + Fraction(1, 2)) for k in range(count)]

    six_fps = pts_us(12, Fraction(2048, 12288))  # our encoder's 6-fps mp4 (time base 1/12288)
    assert six_fps[2] == 333333 and six_fps[11] == 1833333
    # 0.333333 s < 1/6 + 1/6 (no tolerance): frame 3 is taken for frame 2, and the last frame is repeated
    assert official_frame_indices(six_fps, 0.0, 6.0, 12) == _official_loader(six_fps, 0.0, 6.0, 12) == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11]
    cases = [(pts_us(90, Fraction(1, 25)), 0.0), (pts_us(90, Fraction(1, 30)), 0.0), (pts_us(90, Fraction(1, 30)), 0.4),
             (pts_us(90, Fraction(1001, 30000)), 1.3333333333333333), (six_fps, -0.01), (six_fps, 0.05), (pts_us(8, Fraction(1, 6)), 0.0)]  # fmt: skip
    for frames, start in cases:
        assert official_frame_indices(frames, start, 6.0, 12) == _official_loader(frames, start, 6.0, 12), (frames[:3], start)


def test_generated_mp4s_are_read_as_the_official_loader_reads_them(tmp_path):
    from avsync_ray.evaluation.scoring import read_generated
    from avsync_ray.media import encode_mp4, microsecond_timestamps

    levels = np.arange(12) * 20 + 15  # frame k is a flat grey that survives H.264
    frames = np.broadcast_to(levels[:, None, None, None], (12, 32, 48, 3)).astype(np.uint8)
    path = str(tmp_path / "clip.mp4")
    encode_mp4(frames, 6.0, np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), path=path)
    timing = microsecond_timestamps(path)
    assert timing.video_pts_us == [round(k * 1e6 / 6) for k in range(12)] and timing.video_duration_us == timing.audio_duration_us == 2_000_000

    def shown(loaded: np.ndarray) -> list[int]:
        return [int(np.abs(levels - frame.mean()).argmin()) for frame in loaded]

    official, audio = read_generated(path, 12, 6.0, "official")
    assert shown(official) == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11] and audio.shape == (32000,)
    standard, audio = read_generated(path, 12, 6.0, "standard")
    assert shown(standard) == list(range(12)) and audio.shape == (32000,)


def test_a_clips_feature_file_round_trips():
    rng = np.random.default_rng(0)
    clip = ClipFeatures("v_clip-01", "v", "dog barking", rng.normal(size=(11, 8)).astype(np.float32), rng.normal(size=400).astype(np.float32),
                        rng.normal(size=12).astype(np.float32), None, 0.25, 1, 2.5)  # fmt: skip
    back = ClipFeatures.from_bytes(clip.to_bytes())
    assert (back.key, back.video, back.category, back.sync, back.clip, back.start, back.it) == ("v_clip-01", "v", "dog barking", 0.25, 1, 2.5, None)
    for name in ("fid", "fvd", "ia"):
        assert np.array_equal(getattr(back, name), getattr(clip, name)) and getattr(back, name).dtype == np.float32
    assert ClipFeatures.from_bytes(ClipFeatures("k", "v", "c", None, None, None, None, None).to_bytes()).sync is None


# ------------------------------------------------------------------------------------------------ the summary


def _feature_files(folder, videos: int, clips: int, categories: int, fid_scale: float, seed: int) -> list[str]:
    """Feature files of ``videos`` x ``clips`` clips (2 FID frames of 64 dimensions each, 16-d FVD features)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for v in range(videos):
        for c in range(clips):
            key = f"video{v:02d}_clip-{c:02d}"
            clip = ClipFeatures(key, f"video{v:02d}", f"category{v % categories}", (np.abs(rng.normal(size=(2, 64))) * fid_scale).astype(np.float32),
                                rng.normal(size=16).astype(np.float32), rng.uniform(0, 0.3, 12), rng.uniform(0, 0.3, 12), float(rng.normal()), c, 2.0 * c)  # fmt: skip
            (folder / f"{key}.features.npz").write_bytes(clip.to_bytes())
            uris.append(str(folder / f"{key}.features.npz"))
    return uris


def test_an_undefined_distance_leaves_every_other_metric(tmp_path):
    from avsync_ray.evaluation.statistics import SerialRunner, SummaryOptions, summarize_evaluation

    real = _feature_files(tmp_path / "real", 10, 3, 2, fid_scale=1e3, seed=0)
    generated = _feature_files(tmp_path / "model", 10, 3, 2, fid_scale=1.3e3, seed=1)
    options = SummaryOptions(["fid", "fvd", "ia", "it", "relsync", "alignsync"], "sqrtm", bootstrap_samples=8, min_videos=10)
    summary = summarize_evaluation(real, {"model": generated}, options, SerialRunner())
    model = summary.settings["model"]
    # 30 clips x 2 frames = 60 frame features for 64 dimensions: singular covariances, sqrtm keeps an imaginary part
    assert model["fid"] is None and model["undefined"]["fid"].startswith("FID undefined: 60 frame features for 64 dimensions; the official "
                                                                         "recipe needs more clips (a full-rank covariance needs at least 33 clips)")  # fmt: skip
    assert model["fvd"] > 0 and model["fvd_ci_low"] < model["fvd_ci_high"] and model["fvd_boot_std"] > 0  # 30 clips for 16 dimensions
    assert all(model[m] is not None for m in ("ia", "it", "relsync", "alignsync")) and model["clips"] == 30 and model["videos"] == 10
    assert summary.undefined() == {"model": {"fid": model["undefined"]["fid"]}}
    assert set(summary.categories["model"]) == {"category0", "category1"} and summary.categories["model"]["category0"]["fvd"] > 0
    assert summary.gt["relsync"] == pytest.approx(50.0) and len(summary.per_clip["gt"]) == len(summary.per_clip["model"]) == 30


def test_no_interval_from_fewer_videos_than_the_minimum(tmp_path):
    from avsync_ray.evaluation.statistics import SerialRunner, SummaryOptions, summarize_evaluation

    real = _feature_files(tmp_path / "real", 1, 3, 1, fid_scale=1.0, seed=0)
    generated = _feature_files(tmp_path / "model", 1, 3, 1, fid_scale=1.0, seed=1)
    summary = summarize_evaluation(real, {"model": generated}, SummaryOptions(["fvd"], "eigen", bootstrap_samples=20, min_videos=10), SerialRunner())
    model = summary.settings["model"]
    assert model["fvd"] > 0 and "fvd_ci_low" not in model and not summary.undefined()  # one test video: no [x, x] interval
    assert model["notes"]["fvd"] == "no 95% interval for FVD: a bootstrap over test videos needs at least 10 of them, this set has 1"


def test_a_failing_step_makes_its_metric_undefined_with_the_reason(tmp_path):
    from avsync_ray.evaluation import statistics

    real = _feature_files(tmp_path / "real", 4, 3, 1, fid_scale=1.0, seed=0)
    generated = _feature_files(tmp_path / "model", 4, 3, 1, fid_scale=1.0, seed=1)

    class FlakyStorage(statistics.SerialRunner):  # the distance step loses its connection
        def submit(self, fn, *args, num_returns=1):
            if fn is statistics.distance_step and args[1] == "fvd":
                return statistics._Failed(ConnectionError("connection reset by peer"))
            return super().submit(fn, *args, num_returns=num_returns)

    options = statistics.SummaryOptions(["fid", "fvd", "ia"], "eigen")
    summary = statistics.summarize_evaluation(real, {"model": generated, "empty": []}, options, FlakyStorage(),
                                              no_clips={"empty": "all 12 of its clips failed"})  # fmt: skip
    model, empty = summary.settings["model"], summary.settings["empty"]
    assert model["fid"] > 0 and model["ia"] is not None
    assert model["undefined"] == {"fvd": "FVD undefined: its computation failed: ConnectionError: connection reset by peer"}
    assert empty["clips"] == 0 and empty["undefined"]["fid"] == "FID undefined: all 12 of its clips failed" and set(empty["undefined"]) == {"fid", "fvd", "ia"}
    missing = statistics.summarize_evaluation([str(tmp_path / "gone.features.npz")], {"model": generated}, options, statistics.SerialRunner())
    assert missing.settings["model"]["undefined"]["ia"].startswith("IA undefined: the real clips' features could not be read: FileNotFoundError")
