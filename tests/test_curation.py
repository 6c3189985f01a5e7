"""`avsync curate` on Ray Data: ground truth, bad inputs, exactly-once shards, resume, retries, S3, MLflow."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import MEDIA_DIR

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import work
from avsync_ray.curation.pipeline import CurationError, run_curation
from avsync_ray.faults import ENV_VAR as FAULTS_ENV_VAR
from avsync_ray.media import decode, encode_mp4
from avsync_ray.synth import bouncing_ball, synthesize_corpus

pytestmark = pytest.mark.usefixtures("ray_session")
BUNNY = MEDIA_DIR / "av_animation" / "big_buck_bunny_0_30.webm"
BUNNY_CUTS = (283 / 24, 376 / 24, 551 / 24)  # verified hard cuts of big_buck_bunny_0_30.webm (ground truth)


def _vfr_video(path: Path) -> None:
    """A synchronised bouncing ball whose frame intervals alternate 1/15 s and 1/30 s (variable frame rate)."""
    clip = bouncing_ball(duration=4.5, fps=30, size=(96, 128), hit_times=(0.8, 2.0, 3.2), seed=5)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt, video.time_base = 128, 96, "yuv420p", Fraction(1, 30)
        sound = container.add_stream("aac", rate=16_000, layout="mono")
        for index in range(len(clip.frames)):
            if index % 3 == 1:
                continue  # drop every third frame: gaps of 2/30 s between some frames
            frame = av.VideoFrame.from_ndarray(clip.frames[index], format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = av.AudioFrame.from_ndarray(clip.audio.reshape(1, -1), format="flt", layout="mono")
        samples.sample_rate, samples.pts = 16_000, 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode(None))


def _large_video(path: Path) -> None:
    clip = bouncing_ball(duration=3.5, fps=8, size=(1080, 1920), hit_times=(0.6, 1.6, 2.6), seed=6)
    encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(path), crf=40)


BAD_INPUTS = {
    "zero-bytes.mp4": ("failed", "zero_bytes"),
    "truncated.mp4": ("failed", "truncated"),
    "no-audio.mp4": ("failed", "no_audio_stream"),
    "audio-only.mp4": ("failed", "no_video_stream"),
    "not-a-video.mp4": ("failed", "corrupt"),
    "too-short.mp4": ("zero_survivors", "no_window"),
    "variable-frame-rate.mp4": ("done", ""),
    "large-resolution.mp4": ("done", ""),
}


def _bad_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "zero-bytes.mp4").write_bytes(b"")
    good = bouncing_ball(duration=4.0, fps=24, size=(96, 128), seed=7)
    full = encode_mp4(good.frames, good.fps, good.audio, good.sample_rate)
    (folder / "truncated.mp4").write_bytes(full[: len(full) // 2])
    encode_mp4(good.frames, good.fps, None, path=str(folder / "no-audio.mp4"))
    with av.open(str(folder / "audio-only.mp4"), "w") as container:  # an AAC track in an mp4, no video
        stream = container.add_stream("aac", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(good.audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16_000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    (folder / "not-a-video.mp4").write_text("this is a text file with a video extension\n" * 50)
    short = bouncing_ball(duration=2.0, fps=24, size=(96, 128), hit_times=(0.5, 1.5), seed=8)
    encode_mp4(short.frames, short.fps, short.audio, short.sample_rate, str(folder / "too-short.mp4"))
    _vfr_video(folder / "variable-frame-rate.mp4")
    _large_video(folder / "large-resolution.mp4")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Synthetic videos of every category and the bad inputs in one manifest, plus a real film with known cuts
    where the shared media is present (the tests that need the film ask for ``media_dir``)."""
    root = tmp_path_factory.mktemp("corpus")
    truth = synthesize_corpus(root / "synthetic", num_videos=7, seed=0)
    _bad_inputs(root / "bad")
    rows = [{"uri": str(root / "synthetic" / t["uri"]), "label": t["label"], "id": t["video_id"]} for t in truth]
    rows += [{"uri": str(root / "bad" / name), "label": "bad", "id": Path(name).stem} for name in BAD_INPUTS]
    if BUNNY.is_file():
        rows.append({"uri": str(BUNNY), "label": "animation", "id": "big-buck-bunny"})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["uri", "label", "id"])
        writer.writeheader()
        writer.writerows(rows)
    return {"root": root, "manifest": str(root / "manifest.csv"), "truth": {t["video_id"]: t for t in truth}}


def make_config(corpus_or_input, output, **overrides) -> CurateConfig:
    data = {
        "input": corpus_or_input,
        "output": str(output),
        "filters": {"semantic": {"enabled": False}, "imagebind": {"enabled": False}, "sync": {"enabled": False}},
        "shards": {"short_side": 128, "target_size_mb": 1.0, "crf": 30},
        "tracking": {"uri": f"sqlite:///{output}.mlflow.db"},
        "ray": {"progress_bars": False},
    }
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return CurateConfig.model_validate(data)


def shard_digests(output: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(output.glob("train-*.tar"))}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("reference") / "out"
    summary = run_curation(make_config(corpus["manifest"], output))
    return {"output": output, "summary": summary, "digests": shard_digests(output)}


def ledger(output: Path) -> dict[str, dict]:
    return {row["source_id"]: row for row in pq.read_table(output / "ledger.parquet").to_pylist()}


def recorded(output: Path | str) -> list[dict]:
    """The stored video records (the ledger entries written so far), as a run in progress leaves them."""
    return work.read_records(str(output), "videos", ["source_id", "status", "reason", "detail", "windows", "kept", "clips", "generation"]).to_pylist()


def test_synthetic_corpus_is_kept_or_rejected_as_the_ground_truth_says(corpus, reference):
    scores = pq.read_table(reference["output"] / "scores.parquet").to_pylist()
    expected_reason = {"pass": "", "too_static": "too_static", "too_sharp": "too_sharp"}
    for video_id, truth in corpus["truth"].items():
        rows = [r for r in scores if r["source_id"] == video_id]
        assert rows, f"{video_id} has no windows"
        want = expected_reason[truth["expected"]["pixel_rule"]]
        if not want and truth["expected"]["audio_rule"] == "too_quiet":
            want = "too_quiet"
        assert {r["reason"] for r in rows} == {want}, (video_id, truth["category"])
        for row in rows:  # no window crosses a shot cut
            assert not any(row["start"] < cut < row["end"] for cut in truth["shot_cuts"]), (video_id, row)
        assert all(r["skipped_rules"] == "semantic_diff,ia,it,psync_a2v,psync_v2a" for r in rows)
        assert all(np.isnan(r["ia"]) for r in rows)
    entries = ledger(reference["output"])
    for video_id, truth in corpus["truth"].items():
        kept = truth["expected"]["pixel_rule"] == "pass" and truth["expected"]["audio_rule"] == "pass"
        assert entries[video_id]["status"] == ("done" if kept else "zero_survivors"), video_id


def test_real_film_windows_never_cross_its_cuts(reference, media_dir):
    rows = [r for r in pq.read_table(reference["output"] / "scores.parquet").to_pylist() if r["source_id"] == "big-buck-bunny"]
    assert len({r["shot"] for r in rows}) == 4
    for row in rows:
        assert not any(row["start"] + 1e-3 < cut < row["end"] - 1e-3 for cut in BUNNY_CUTS), row
    assert ledger(reference["output"])["big-buck-bunny"]["status"] in ("done", "zero_survivors")


def test_bad_inputs_end_in_the_ledger_with_a_reason(reference):
    entries = ledger(reference["output"])
    for name, (status, reason) in BAD_INPUTS.items():
        entry = entries[Path(name).stem]
        assert (entry["status"], entry["reason"]) == (status, reason), (name, entry)
    assert sum(e["status"] == "done" for e in entries.values()) >= 5


def test_shards_index_stats_and_members(reference):
    output = reference["output"]
    index = json.loads((output / "train.index.json").read_text())
    stats = json.loads((output / "train.stats.json").read_text())
    assert [e["url"] for e in index["shardlist"]] == sorted(shard_digests(output))
    # A shard closes once it reaches the 1 MB target (tar headers aside); with the shared media's film the corpus
    # spans several shards.
    assert all(entry["filesize"] >= 0.99 * 2**20 for entry in index["shardlist"][:-1])
    assert len(index["shardlist"]) >= (2 if BUNNY.is_file() else 1)
    samples = [s for e in index["shardlist"] for s in wds.WebDataset(str(output / e["url"]), shardshuffle=False)]
    assert len(samples) == index["nsamples"] == stats["clips"] == reference["summary"]["clips"] > 0
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
    for entry in index["shardlist"]:
        assert entry["sha256"] == hashlib.sha256((output / entry["url"]).read_bytes()).hexdigest()
    # Shards mix the corpus: clips follow the SHA-1 of their key across the shards.
    assert keys == sorted(keys, key=lambda key: hashlib.sha1(key.encode()).hexdigest())
    # A clip lists the windows it was made of: each passes every rule, so its scores' minima do too.
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["windows"] and all(abs(w["end"] - w["start"] - 3.0) < 1e-6 and meta["span"]["start"] <= w["start"] for w in meta["windows"])
        for name, rule in meta["thresholds"].items():
            if rule["enabled"] and rule["min"] is not None:
                assert all(w[name] >= rule["min"] for w in meta["windows"]) and meta["scores"][name]["min"] >= rule["min"], (sample["__key__"], name)
            if rule["enabled"] and rule["max"] is not None:
                assert all(w[name] <= rule["max"] for w in meta["windows"]), (sample["__key__"], name)
    sample = samples[0]
    meta = json.loads(sample["json"])
    assert meta["key"] == sample["__key__"] and meta["schema_version"] == 1 and meta["thresholds"]["pixel_diff"]["min"] == 0.01
    assert set(meta["scores"]) >= {"pixel_diff", "audio_peak"} and meta["span"]["end"] - meta["span"]["start"] >= 3.0
    (output / "probe.mp4").write_bytes(sample["mp4"])
    clip = decode(str(output / "probe.mp4"), fps=None)
    assert min(clip.frames.shape[1:3]) <= 128 and len(clip.audio) / 16_000 == pytest.approx(meta["span"]["end"] - meta["span"]["start"], abs=0.1)
    (output / "probe.wav").write_bytes(sample["wav"])
    wav = decode(str(output / "probe.wav"), video=False)
    assert wav.info.audio.sample_rate == 16_000 and wav.info.audio.channels == 1
    report = json.loads((output / "report" / "report.json").read_text())
    assert report["funnel"]["windows"] == len(pq.read_table(output / "scores.parquet"))
    assert (output / "report" / "hist_pixel_diff.png").read_bytes()[:4] == b"\x89PNG"


def test_mlflow_run_records_the_curation(reference):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{reference['output']}.mlflow.db")
    run = mlflow.get_run(reference["summary"]["mlflow_run_id"])
    assert mlflow.get_experiment(run.info.experiment_id).name == "avsync/curation"
    assert run.data.params["filters.pixel_diff.min"] == "0.01"
    assert run.data.metrics["funnel.windows"] == reference["summary"]["windows"]
    assert run.info.run_name == "curate-out" and "funnel.removed_by_pixel_diff" in run.data.metrics
    assert not {f"funnel.removed_by_{name}" for name in ("semantic_diff", "ia", "it", "psync_a2v", "psync_v2a")} & set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"curate.config.yaml", "train.index.json", "stats.json", "report"} <= artifacts
    # Lineage: the manifest's videos as the input dataset, the shards as the output one (the dataset training reads).
    from avsync_ray.lineage import CORPUS_CONTEXT, CURATED_CONTEXT, run_dataset, shard_dataset

    corpus, curated = run_dataset(run, CORPUS_CONTEXT), run_dataset(run, CURATED_CONTEXT)
    assert json.loads(corpus.source)["uri"].endswith("manifest.csv") and json.loads(corpus.profile)["videos"] == reference["summary"]["videos"]
    assert curated.digest == shard_dataset(str(reference["output"]), "train").digest
    assert json.loads(curated.profile)["clips"] == reference["summary"]["clips"]


def test_rerun_skips_recorded_videos_and_changes_nothing(corpus, reference):
    ledger_before = (reference["output"] / "ledger.parquet").read_bytes()
    summary = run_curation(make_config(corpus["manifest"], reference["output"]))
    assert shard_digests(reference["output"]) == reference["digests"]
    assert (reference["output"] / "ledger.parquet").read_bytes() == ledger_before
    assert summary["clips"] == reference["summary"]["clips"]


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(corpus, reference, tmp_path, monkeypatch):
    victim = next(iter(corpus["truth"]))
    monkeypatch.setenv(FAULTS_ENV_VAR, json.dumps({"kill_worker_on_source": victim}))
    run_curation(make_config(corpus["manifest"], tmp_path / "out"))
    assert (tmp_path / "out" / "_work" / f"killed-{victim}").exists()
    assert shard_digests(tmp_path / "out") == reference["digests"]


def test_fault_injection_is_not_reachable_from_a_config(corpus, tmp_path):
    with pytest.raises(ValueError, match="debug"):
        make_config(corpus["manifest"], tmp_path / "out", debug__kill_worker_once_on="x")


def test_a_driver_killed_from_outside_resumes_to_the_same_shards(corpus, reference, tmp_path):
    """SIGKILL the driver process once three videos are recorded, as a crash or a lost head would; the rerun of
    the same command skips what is recorded and ends with the uninterrupted run's bytes."""
    import signal
    import time

    import ray

    output = tmp_path / "out"
    config = make_config(corpus["manifest"], output, ray__address=ray.get_runtime_context().gcs_address)
    (tmp_path / "curate.yaml").write_text(json.dumps(config.model_dump(mode="json")))
    command = [sys.executable, "-m", "avsync_ray", "curate", corpus["manifest"], str(output), "--config", str(tmp_path / "curate.yaml")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    total = len(BAD_INPUTS) + len(corpus["truth"]) + BUNNY.is_file()
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(recorded(output)) < 3 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    before = recorded(output)
    assert 3 <= len(before) < total and not (output / "train.index.json").exists()
    resumed = subprocess.run(command, env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert shard_digests(output) == reference["digests"]
    assert len(ledger(output)) == total
    assert all(ledger(output)[entry["source_id"]][k] == entry[k] for entry in before for k in ("status", "reason", "clips"))


def test_rethreshold_reselects_from_the_score_table_without_scoring(corpus, reference, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(reference["output"], output)
    before = pq.read_table(output / "scores.parquet")
    hidden = corpus["root"].with_name(corpus["root"].name + "-hidden")
    corpus["root"].rename(hidden)  # no video can be read: nothing may be decoded or scored
    try:
        strict = run_curation(make_config(corpus["manifest"].replace(str(corpus["root"]), str(hidden)), output, filters__audio_peak={"min": 5.0}), rethreshold=True)
    finally:
        hidden.rename(corpus["root"])
    after = pq.read_table(output / "scores.parquet")
    assert strict["clips"] == 0 and not any(after.column("keep").to_pylist())
    assert set(after.column("reason").to_pylist()) <= {"too_quiet", "too_static", "too_sharp"}
    for name in ("pixel_diff", "audio_peak"):
        assert after.column(name).to_pylist() == before.column(name).to_pylist()
    restored = run_curation(make_config(corpus["manifest"], output), rethreshold=True)
    assert restored["clips"] == reference["summary"]["clips"]
    assert shard_digests(output) == reference["digests"]


def test_other_scoring_settings_cannot_resume_the_same_output(corpus, reference):
    with pytest.raises(CurationError, match="other settings"):
        run_curation(make_config(corpus["manifest"], reference["output"], windows={"length_s": 2.0}))


def test_model_stages_score_every_window(corpus, tmp_path, tiny_imagebind_checkpoint, tiny_clip_vision_dir, tiny_classifier_dir):
    synthetic = corpus["root"] / "synthetic"
    videos = sorted(synthetic.glob("sync/*.mp4"))[:1] + sorted(synthetic.glob("cuts/*.mp4"))[:1]
    folder = tmp_path / "in" / "sync"
    folder.mkdir(parents=True)
    for video in videos:
        shutil.copy(video, folder / video.name)
    config = make_config(
        str(tmp_path / "in"), tmp_path / "out",
        filters__semantic={"enabled": True, "model": "clip", "checkpoint": str(tiny_clip_vision_dir), "rule": {"min": None, "max": None}},
        filters__imagebind={"enabled": True, "checkpoint": str(tiny_imagebind_checkpoint[0]), "preset": "imagebind-tiny", "ia": {"min": -1.0}, "it": {"min": 2.0}},
        filters__sync={"enabled": True, "classifier": str(tiny_classifier_dir), "a2v": {"min": 0.0}, "v2a": {"min": 0.0}},
        imagebind_actor={"num_cpus": 0.5}, sync_actor={"num_cpus": 0.5},  # two CPUs: leave room for the tasks
    )  # fmt: skip
    summary = run_curation(config)
    rows = pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()
    assert len(rows) == summary["windows"] > 0
    for row in rows:
        assert 0.0 <= row["semantic_diff"] <= 2.0 and -1.0 <= row["ia"] <= 1.0 and -1.0 <= row["it"] <= 1.0
        assert 0.0 < row["psync_a2v"] < 1.0 and 0.0 < row["psync_v2a"] < 1.0
        assert row["reason"] == "image_text_misaligned" and row["skipped_rules"] == ""  # IT >= 2 is impossible
    assert summary["clips"] == 0


def test_s3_input_and_output(s3_server, corpus, tmp_path):
    import fsspec

    fs = fsspec.filesystem("s3")
    synthetic = corpus["root"] / "synthetic"
    for video in [*synthetic.glob("sync/*.mp4"), *synthetic.glob("shifted/*.mp4")]:
        fs.put(str(video), f"{s3_server}/in/{video.parent.name}/{video.name}")
    output = f"{s3_server}/out"
    summary = run_curation(make_config(f"{s3_server}/in", output, tracking__uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert summary["videos"] == 2 and summary["clips"] > 0
    index = json.loads(fs.cat(f"{output}/train.index.json"))
    assert index["nsamples"] == summary["clips"]
    local = tmp_path / "shard.tar"
    fs.get(f"{output}/{index['shardlist'][0]['url']}", str(local))
    keys = [s["__key__"] for s in wds.WebDataset(str(local), shardshuffle=False)]
    assert len(keys) == index["shardlist"][0]["nsamples"]
    assert fs.exists(f"{output}/scores.parquet") and fs.exists(f"{output}/report/report.json")


def test_a_video_shorter_than_a_window_beside_a_long_one_keeps_the_score_table_typed(tmp_path):
    """A zero-window video whose id sorts first used to write a null-typed score table that the run then read
    as the schema of every table (ArrowNotImplementedError: cast from string to null); nothing was recorded."""
    folder = tmp_path / "in" / "ball"
    folder.mkdir(parents=True)
    short = bouncing_ball(duration=2.0, fps=24, size=(64, 96), hit_times=(0.5, 1.5), seed=11)
    encode_mp4(short.frames, short.fps, short.audio, short.sample_rate, str(folder / "a-short.mp4"))
    long = bouncing_ball(duration=4.0, fps=24, size=(64, 96), hit_times=(0.5, 1.5, 2.5, 3.5), seed=12)
    encode_mp4(long.frames, long.fps, long.audio, long.sample_rate, str(folder / "b-long.mp4"))
    summary = run_curation(make_config(str(tmp_path / "in"), tmp_path / "out"))
    entries = ledger(tmp_path / "out")
    assert sorted(e["reason"] for e in entries.values()) == ["", "no_window"] and summary["videos"] == 2
    table = pq.read_table(tmp_path / "out" / "scores.parquet")
    assert table.schema.field("reason").type == "string" and table.num_rows == summary["windows"] > 0


def test_every_shared_media_file_and_every_bad_file_is_accounted_for(media_dir, tmp_path):
    """Real folders: short GRID clips, long films, video without sound, sound without video, and the bad files a
    user's folder holds; the run finishes and every entry is in the ledger or among the skipped inputs, once."""
    folder = tmp_path / "in"
    for path in sorted(p for p in media_dir.rglob("*") if p.is_file() and p.parent.name != "LICENSES"):
        link = folder / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)  # the media stay where they are
    bad = folder / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("not a video\n" * 40)
    (bad / "truncated.mp4").write_bytes((media_dir / "video_scene_cuts" / "tears_of_steel_clip01.mp4").read_bytes()[:50_000])
    import PIL.Image

    PIL.Image.new("RGB", (32, 32), (9, 90, 200)).save(bad / "picture.png", format="PNG")
    (bad / "picture.png").rename(bad / "picture.mp4")
    PIL.Image.new("RGB", (32, 32), (200, 90, 9)).save(bad / "picture.webm", format="PNG")
    (bad / "folder.mp4").mkdir()
    (bad / "broken-link.mp4").symlink_to(tmp_path / "nowhere.mp4")
    summary = run_curation(make_config(str(folder), tmp_path / "out"))
    entries = ledger(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    listed = [e["uri"] for e in entries.values()] + [s["uri"] for s in report["skipped_inputs"]]
    every = sorted(str(p) for p in folder.rglob("*") if p.is_file() or p.is_symlink() or p.name.endswith(".mp4"))
    assert sorted(listed) == every and len(set(listed)) == len(listed)
    reasons = {Path(e["uri"]).name: e["reason"] for e in entries.values()}
    assert reasons["bbaf2n.mpg"] == "no_window" and reasons["zero.mp4"] == "zero_bytes" and reasons["broken-link.mp4"] == "not_found"
    assert reasons["tears_of_steel_clip01.mp4"] == "no_audio_stream" and reasons["text.mp4"] == "corrupt"
    assert reasons["picture.mp4"] == reasons["picture.webm"] == "not_a_video"  # a still image, whatever its name says
    statuses = {Path(e["uri"]).name: e["status"] for e in entries.values()}
    assert statuses["truncated.mp4"] == "failed"  # the cut film has no audio stream
    # GRID's 2.98-s clips hold no 3-s window, and say so; the report breaks down why videos have no clip.
    details = {Path(e["uri"]).name: e["detail"] for e in entries.values()}
    assert re.fullmatch(r"2\.9\d s long, shorter than one 3-s window", details["bbaf2n.mpg"]), details["bbaf2n.mpg"]
    no_clip = [e for e in entries.values() if e["status"] == "zero_survivors"]
    assert report["zero_survivor_reasons"] == dict(sorted(Counter(e["reason"] for e in no_clip).items())) and report["zero_survivor_reasons"]["no_window"] >= 1
    assert "Why videos have no clip:" in (tmp_path / "out" / "report" / "report.md").read_text()
    assert statuses["big_buck_bunny_0_30.webm"] in ("done", "zero_survivors") and summary["failed"] >= 8
    assert summary["skipped_inputs"] == {"not_a_video": sum(1 for s in report["skipped_inputs"] if s["reason"] == "not_a_video"), "folder_with_video_suffix": 1}


def test_a_run_in_a_separate_process_writes_the_reference_shard_bytes(corpus, reference, tmp_path):
    """The command in a fresh process starting its own local Ray (fresh worker processes), as another user's run
    would, writes the bytes of the reference run made in this session's Ray."""
    output = tmp_path / "out"
    config = make_config(corpus["manifest"], output)
    data = {**config.model_dump(mode="json"), "ray": {"num_cpus": 2, "progress_bars": False}}
    (tmp_path / "config.yaml").write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "avsync_ray", "curate", corpus["manifest"], str(output), "--config", str(tmp_path / "config.yaml")],
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert shard_digests(output) == reference["digests"]


def test_a_resume_with_other_encoding_settings_is_refused_with_the_differences(corpus, reference):
    with pytest.raises(CurationError, match=r"shards.crf: the output has 30, this run 18") as error:
        run_curation(make_config(corpus["manifest"], reference["output"], shards__crf=18))
    assert "another output folder" in str(error.value)
    with pytest.raises(CurationError, match=r"filters.audio_peak.min: the output has 0.03, this run 0.05"):
        run_curation(make_config(corpus["manifest"], reference["output"], filters__audio_peak={"min": 0.05}))
