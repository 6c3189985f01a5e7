"""``avsync eval`` on Ray Data end to end (tiny model, tiny feature networks): a sweep writes the tables, plots,
per-clip table and nested MLflow runs; a rerun regenerates and rescores nothing and reuses the real-clip features;
a deleted clip is the only one regenerated; one colocated pool gives the two pools' numbers; other settings in the
same folder and bad weight files are refused up front; a setting whose every clip fails is reported undefined and
the command exits 1 after writing everything; the summary's Ray tasks give the serial numbers; a driver killed
mid-generation on S3 resumes exactly."""

from __future__ import annotations

import json

import mlflow
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.config.base import load_config
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.evaluation.batch import run_eval
from avsync_ray.evaluation.plan import EvalOutputError
from avsync_ray.models.feature_networks import FeatureNetworkError, write_tiny_feature_networks
from avsync_ray.models.sync_classifier import SyncClassifier

METRICS = "[fvd, ia, it, relsync, alignsync]"  # FID's full-size Inception is left to its own tests and the demo (CPU time)


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory, synthetic_shards, tiny_model_dir):
    root = tmp_path_factory.mktemp("eval")
    networks = write_tiny_feature_networks(root / "networks")
    torch.manual_seed(0)
    SyncClassifier(image_size=64, base_width=8).save_pretrained(root / "classifier")
    overrides = [f"features.{k}={v}" for k, v in networks.items() if k != "fid_inception"] + [
        f"features.sync_classifier={root / 'classifier'}", f"metrics={METRICS}", "sampling.height=64", "sampling.width=64",
        "sampling.num_inference_steps=2", "max_videos=2", "baselines=[static]", "bootstrap.samples=20", "frechet=eigen",
        "generate_actor.num_gpus=0", "feature_actor.num_gpus=0", "generate_actor.num_cpus=0.5", "feature_actor.num_cpus=0.5",
        f"cache={root / 'cache'}", f"tracking.uri=sqlite:///{root / 'mlruns.db'}", "ray.progress_bars=false", "ray.in_process=false",
    ]  # fmt: skip
    return {"root": root, "overrides": overrides, "model": str(tiny_model_dir), "shards": str(synthetic_shards["root"])}


@pytest.fixture(scope="module")
def first_run(eval_setup, ray_session):
    out = eval_setup["root"] / "out"
    args = ["eval", eval_setup["model"], eval_setup["shards"], "--out", str(out), "--sweep", "audio_guidance_scale=1,4"]
    result = CliRunner().invoke(app, args + [item for o in eval_setup["overrides"] for item in ("--set", o)])
    assert result.exit_code == 0, result.output
    summary = result.output[result.output.rindex('{\n  "output"') :]  # Ray Data prints its context before the JSON
    return json.loads(summary), out


def _flat(metrics: dict) -> dict:
    return {(setting, name): value for setting, values in metrics.items() for name, value in values.items() if value is not None}


def _config(eval_setup, out, *extra) -> EvalConfig:
    values = {"model": eval_setup["model"], "test": eval_setup["shards"], "output": str(out), "sweep.audio_guidance_scale": [1.0, 4.0]}
    return load_config(EvalConfig, "eval", overrides=[*eval_setup["overrides"], *extra], values=values)


def test_a_sweep_writes_tables_plots_and_the_per_clip_table(first_run):
    summary, out = first_run
    assert summary["settings"] == ["audio_guidance_scale-1.0", "audio_guidance_scale-4.0", "baseline-static", "gt"]
    assert summary["clips"] == 6 and summary["skipped_videos"] == 0  # 2 test videos x 3 clips
    assert summary["generated"] == {"audio_guidance_scale-1.0": 6, "audio_guidance_scale-4.0": 6, "baseline-static": 6}
    for name in ("audio_guidance_scale-1.0", "baseline-static"):
        assert sorted(p.name for p in (out / "generated" / name).glob("*.mp4"))[0].endswith("_clip-00.mp4")
        assert summary["metrics"][name]["fvd"] is not None and summary["metrics"][name]["fid"] is None
    assert summary["metrics"]["gt"]["relsync"] == pytest.approx(50.0)
    report = (out / "report" / "report.md").read_text()
    assert "Tab. 10" in report and "Tab. 6" in report and "protocol `official`" in report
    assert {"overall.csv", "fvd_vs_audio_guidance_scale.png", "relsync_vs_audio_guidance_scale.png"} <= {p.name for p in (out / "report").iterdir()}
    table = pq.read_table(out / "per_clip.parquet").to_pylist()
    assert len(table) == 6 * 4 and {r["variant"] for r in table} == set(summary["settings"])
    assert all(r["relsync"] is not None and 0 < r["relsync"] < 1 for r in table)


def test_the_sweeps_nested_runs_come_back_as_comparable_rows(first_run, eval_setup):
    summary, _ = first_run
    mlflow.set_tracking_uri(f"sqlite:///{eval_setup['root'] / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["avsync/eval"], filter_string=f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}'")
    assert sorted(runs["tags.avsync.setting"]) == sorted(summary["settings"])
    model_runs = runs[runs["tags.avsync.variant"] == "model"].sort_values("params.audio_guidance_scale")
    assert model_runs["params.audio_guidance_scale"].tolist() == ["1.0", "4.0"]
    assert model_runs["params.protocol"].tolist() == ["official", "official"]
    assert model_runs["metrics.fvd"].notna().all() and model_runs["metrics.relsync"].notna().all()
    assert model_runs["metrics.sync/relsync"].notna().all()  # per category
    assert model_runs["metrics.fvd"].tolist() == [summary["metrics"][n]["fvd"] for n in ("audio_guidance_scale-1.0", "audio_guidance_scale-4.0")]


def test_every_run_has_the_test_set_as_its_dataset_and_the_parent_holds_the_models_metrics(first_run, eval_setup):
    from avsync_ray.lineage import EVALUATION_CONTEXT, run_dataset, shard_dataset

    summary, _ = first_run
    digest = shard_dataset(eval_setup["shards"], "test", take=2).digest  # max_videos=2 of the 4 test clips
    assert summary["test_set"]["digest"] == digest
    mlflow.set_tracking_uri(f"sqlite:///{eval_setup['root'] / 'mlruns.db'}")
    query = f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}' and dataset.digest = '{digest}'"
    assert len(mlflow.search_runs(experiment_names=["avsync/eval"], filter_string=query)) == len(summary["settings"])
    parent = mlflow.get_run(summary["mlflow_run_id"])
    assert run_dataset(parent, EVALUATION_CONTEXT).digest == digest and parent.data.params["model_ref"].startswith(f"{eval_setup['model']}@")
    for setting in ("audio_guidance_scale-1.0", "audio_guidance_scale-4.0"):  # the model's own settings, not the baselines
        assert parent.data.metrics[f"{setting}/fvd"] == summary["metrics"][setting]["fvd"]
    assert not any(key.startswith(("baseline-static/", "gt/")) for key in parent.data.metrics)


def test_a_rerun_regenerates_only_missing_clips_and_reuses_real_features(first_run, eval_setup):
    summary, out = first_run
    clips = sorted((out / "generated" / "audio_guidance_scale-4.0").glob("*.mp4"))
    written = {p: p.stat().st_mtime_ns for p in (out / "generated").glob("*/*") if p.suffix in (".mp4", ".npz")}
    assert len(written) == 2 * 18  # an mp4 and a feature file per clip and setting
    clips[0].unlink()  # as if the run had been killed before writing it
    again = run_eval(_config(eval_setup, out))
    assert again["generated"] == {"audio_guidance_scale-1.0": 0, "audio_guidance_scale-4.0": 1, "baseline-static": 0}
    assert again["real_features_cached"] and clips[0].exists()
    redone = {clips[0], clips[0].with_name(clips[0].name.replace(".mp4", ".features.npz"))}
    assert {p: p.stat().st_mtime_ns for p in written if p not in redone} == {p: t for p, t in written.items() if p not in redone}
    once_more = run_eval(_config(eval_setup, out))  # nothing to make or score: only the summary again
    assert once_more["generated"] == {name: 0 for name in again["generated"]} and once_more["real_features_cached"]
    assert _flat(once_more["metrics"]) == pytest.approx(_flat(again["metrics"]), rel=1e-9)
    static = {k: v for k, v in _flat(again["metrics"]).items() if k[0] == "baseline-static"}
    assert static == pytest.approx({k: v for k, v in _flat(summary["metrics"]).items() if k[0] == "baseline-static"}, rel=1e-5)


def test_one_colocated_pool_gives_the_two_pools_numbers(first_run, eval_setup, tmp_path):
    """``colocate``: two actors that each generate and score (with a fresh real-feature cache, so they score the
    real clips too) make every clip and give the two pools' metrics."""
    summary, _ = first_run
    config = _config(eval_setup, tmp_path / "out", "colocate=true", "generate_actor.concurrency=2", f"cache={tmp_path / 'cache'}", "tracking.enabled=false")
    colocated = run_eval(config)
    assert colocated["generated"] == summary["generated"] and colocated["clips"] == summary["clips"] and not colocated["real_features_cached"]
    assert _flat(colocated["metrics"]) == pytest.approx(_flat(summary["metrics"]), rel=1e-4)


def test_the_job_run_in_process_makes_the_same_clips_and_numbers(first_run, eval_setup, tmp_path):
    """``ray.in_process`` (what a job this small gets by default on one machine): two threads that each generate
    and score make every clip of the Ray Data run and give its metrics and every clip's scores (to the round-off
    of other batches: a pipeline call batches the clips it is given)."""
    summary, first_out = first_run
    out = tmp_path / "out"
    in_process = run_eval(_config(eval_setup, out, "ray.in_process=true", "colocate=true", "generate_actor.concurrency=2", f"cache={tmp_path / 'cache'}",
                                  "tracking.enabled=false"))  # fmt: skip
    assert in_process["generated"] == summary["generated"] and in_process["clips"] == summary["clips"] and not in_process["real_features_cached"]
    assert _flat(in_process["metrics"]) == pytest.approx(_flat(summary["metrics"]), rel=1e-4)
    assert sorted(p.relative_to(out) for p in out.rglob("*.mp4")) == sorted(p.relative_to(first_out) for p in first_out.rglob("*.mp4"))
    scores = [{(r["variant"], r["key"]): [r[m] for m in ("ia", "it", "relsync", "alignsync", "sync_score")] for r in pq.read_table(folder / "per_clip.parquet").to_pylist()}
              for folder in (out, first_out)]  # fmt: skip
    assert scores[0].keys() == scores[1].keys() and all(v == pytest.approx(scores[1][k], rel=1e-3, abs=1e-5) for k, v in scores[0].items())


def test_other_settings_and_bad_weights_are_refused_before_any_work(first_run, eval_setup, tmp_path):
    _, out = first_run
    with pytest.raises(EvalOutputError, match="audio_guidance_scale-1.0.*sampling"):
        run_eval(_config(eval_setup, out, "sampling.num_inference_steps=3"))
    with pytest.raises(FeatureNetworkError, match="features.i3d"):
        run_eval(_config(eval_setup, tmp_path / "fresh", f"features.i3d={tmp_path / 'missing.pt'}"))
    assert not (tmp_path / "fresh").exists()


def test_a_setting_whose_clips_all_fail_is_undefined_and_the_command_exits_1(eval_setup, ray_session, tmp_path):
    """A model whose UNet weights file is damaged: every model clip fails, the static baseline (which needs no
    model) is scored; everything is written and logged, the model's metrics are undefined with the reason, and the
    exit code is 1. Without the baseline nothing can be scored: exit 1, no MLflow run."""
    import shutil

    model = tmp_path / "damaged-model"
    shutil.copytree(eval_setup["model"], model)
    for weights in (model / "unet").glob("diffusion_pytorch_model.*"):
        weights.write_bytes(b"not a weights file")
    args = ["eval", str(model), eval_setup["shards"], "--set", "max_videos=1"]
    overrides = [item for o in eval_setup["overrides"] if not o.startswith("max_videos") for item in ("--set", o)]
    tracking = f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}"
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "some"), *overrides, "--set", tracking])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout[result.stdout.rindex('{\n  "output"') :])
    assert summary["metrics"]["baseline-static"]["fvd"] is not None and summary["metrics"]["model"]["fvd"] is None
    assert summary["undefined"]["model"]["fvd"].startswith("FVD undefined: all 3 of its clips failed (3 generation_error; e.g. generation_error:")
    assert "error: eval: undefined metrics (model: FVD, IA, IT, RelSync, AlignSync), e.g. FVD undefined: all 3" in result.stderr
    assert "undefined" in (tmp_path / "some" / "report" / "report.md").read_text() and summary["mlflow_run_id"]
    table = pq.read_table(tmp_path / "some" / "per_clip.parquet").to_pylist()
    assert sum(r["error"].startswith("generation_error") for r in table if r["variant"] == "model") == 3

    alone = [item for o in eval_setup["overrides"] if not o.startswith(("max_videos", "baselines")) for item in ("--set", o)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "none"), *alone, "--set", f"tracking.uri=sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1 and "error: eval: no generated clip could be scored: all 3 generated clips failed (3 generation_error" in result.stderr
    assert '"output"' not in result.stdout and not (tmp_path / "none.db").exists()  # no MLflow run of nothing
    assert len(pq.read_table(tmp_path / "none" / "per_clip.parquet")) == 3


def test_the_summary_tasks_give_the_serial_numbers(ray_session, tmp_path):
    from test_eval_logic import _feature_files

    from avsync_ray.evaluation.batch import RayRunner
    from avsync_ray.evaluation.statistics import SerialRunner, SummaryOptions, summarize_evaluation

    real = _feature_files(tmp_path / "real", 12, 3, 3, fid_scale=1.0, seed=0)
    settings = {name: _feature_files(tmp_path / name, 12, 3, 3, fid_scale=scale, seed=seed) for name, scale, seed in (("a", 1.2, 1), ("b", 0.9, 2))}
    settings["gone"] = [str(tmp_path / "gone.features.npz")]
    options = SummaryOptions(["fid", "fvd", "ia", "relsync"], "sqrtm", bootstrap_samples=20, min_videos=10, block=6)
    serial = summarize_evaluation(real, settings, options, SerialRunner())
    tasks = summarize_evaluation(real, settings, options, RayRunner())
    assert serial.settings["a"]["fid_ci_high"] > serial.settings["a"]["fid_ci_low"] > 0
    assert tasks.settings["gone"]["undefined"] == serial.settings["gone"]["undefined"]  # the task's own error, in one line
    assert serial.settings["gone"]["undefined"]["fid"].startswith("FID undefined: its clips' features could not be read: FileNotFoundError")
    for name in ("a", "b"):
        for ours, theirs in [(tasks.settings[name], serial.settings[name]), *zip(tasks.categories[name].values(), serial.categories[name].values())]:
            assert (ours.pop("undefined"), ours.pop("notes")) == (theirs.pop("undefined"), theirs.pop("notes"))
            assert ours == pytest.approx(theirs, rel=1e-9)


@pytest.mark.slow  # two evaluations, one in a process of its own: about 2 min on 2 CPUs
def test_a_driver_killed_mid_generation_on_s3_resumes_exactly(eval_setup, ray_session, s3_server, tmp_path):
    """SIGKILL the driver (a process of its own, joined to this session's Ray) once some clips are on S3; the rerun
    makes exactly the missing clips, leaves the others' objects alone, and its summary sees every clip and feature
    file the actors wrote (listed afresh after the job, not from a cached listing)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from avsync_ray.faults import ENV_VAR as FAULTS_ENV_VAR
    from avsync_ray.storage import filesystem, list_files

    out = f"{s3_server}/eval-killed"
    folder = f"{out}/generated/model"
    overrides = [o for o in eval_setup["overrides"] if not o.startswith(("baselines", "tracking"))]
    overrides += ["baselines=[]", "generate_batch_size=1", f"ray.address={ray_session.get_runtime_context().gcs_address}",
                  f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}"]  # fmt: skip
    command = [sys.executable, "-m", "avsync_ray", "eval", eval_setup["model"], eval_setup["shards"], "--out", out,
               *(item for o in overrides for item in ("--set", o))]  # fmt: skip
    env = {**os.environ, FAULTS_ENV_VAR: json.dumps({"slow_clip_s": 3.0})}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list_files(folder, ".mp4")) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    # the job's actor processes end with their driver (and may write until then)
    actors = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::MapWorker")]
    _, alive = psutil.wait_procs(actors, timeout=60)
    assert not alive, "the killed job's actors still run"
    fs, _ = filesystem(out)
    kept = {uri: fs.info(uri)["ETag"] for uri in list_files(folder, ".mp4")}
    assert 2 <= len(kept) < 6 and not list_files(f"{out}/report")

    values = {"model": eval_setup["model"], "test": eval_setup["shards"], "output": out}
    resumed = run_eval(load_config(EvalConfig, "eval", overrides=[o for o in overrides if not o.startswith("ray.address")], values=values))
    assert resumed["reused"] == {"model": len(kept)} and resumed["generated"] == {"model": 6 - len(kept)}
    assert {uri: fs.info(uri)["ETag"] for uri in kept} == kept and len(list_files(folder, ".mp4")) == 6
    assert resumed["clips"] == 6 and resumed["metrics"]["model"]["fvd"] is not None
    table = pq.read_table(fs.open(f"{out}/per_clip.parquet")).to_pylist()
    assert sum(r["variant"] == "model" and not r["error"] and r["relsync"] is not None for r in table) == 6
