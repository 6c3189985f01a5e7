"""``avsync eval`` on Ray Data end to end (tiny model, tiny feature networks): a sweep writes the tables, plots,
per-clip table and nested MLflow runs; a rerun regenerates nothing and reuses the real-clip features; a deleted
clip is the only one regenerated; other settings in the same folder and bad weight files are refused up front."""

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
        f"cache={root / 'cache'}", f"tracking.uri=sqlite:///{root / 'mlruns.db'}", "ray.progress_bars=false",
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
    kept = {p: p.stat().st_mtime_ns for p in clips[1:]}
    clips[0].unlink()  # as if the run had been killed before writing it
    again = run_eval(_config(eval_setup, out))
    assert again["generated"] == {"audio_guidance_scale-1.0": 0, "audio_guidance_scale-4.0": 1, "baseline-static": 0}
    assert again["real_features_cached"] and clips[0].exists()
    assert {p: p.stat().st_mtime_ns for p in clips[1:]} == kept
    static, before = again["metrics"]["baseline-static"], summary["metrics"]["baseline-static"]
    assert {k: v for k, v in static.items() if v is not None} == pytest.approx({k: v for k, v in before.items() if v is not None}, rel=1e-5)


def test_other_settings_and_bad_weights_are_refused_before_any_work(first_run, eval_setup, tmp_path):
    _, out = first_run
    with pytest.raises(EvalOutputError, match="audio_guidance_scale-1.0.*sampling"):
        run_eval(_config(eval_setup, out, "sampling.num_inference_steps=3"))
    with pytest.raises(FeatureNetworkError, match="features.i3d"):
        run_eval(_config(eval_setup, tmp_path / "fresh", f"features.i3d={tmp_path / 'missing.pt'}"))
    assert not (tmp_path / "fresh").exists()
