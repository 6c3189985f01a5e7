"""Training under Ray Train + DeepSpeed on 2 CPU workers: an injected failure, resume, refusal of an incompatible
resume, export, the registry, evaluation; and (slow) the proof that the tiny models learn."""

from __future__ import annotations

import json
import os

import pytest
import torch
from training_checks import optimizer_steps

from avsync_ray.config.base import load_config
from avsync_ray.config.evaluate import EvalSyncConfig
from avsync_ray.config.train import TrainConfig, TrainSyncConfig
from avsync_ray.faults import ENV_VAR as FAULTS_ENV_VAR
from avsync_ray.training.engine import IncompatibleResumeError, read_checkpoint_meta
from avsync_ray.training.launcher import launch

# A leaked placement group must make the next trainer fail fast, not wait forever (stack_feasibility.md).
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")


def _metric_history(tracking_uri: str, run_id: str, name: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, name)}


@pytest.fixture(scope="module")
def classifier_run(ray_session, synthetic_shards, tmp_path_factory) -> dict:
    """One classifier run whose rank 1 raises after step 3 (the tests' fault hook); Ray Train restarts the worker
    group from the step-2 checkpoint and finishes at step 6. Later fixtures resume it and export it."""
    tmp_path = tmp_path_factory.mktemp("classifier_run")
    tracking = f"sqlite:///{tmp_path}/mlruns.db"  # the default store of a command run in tmp_path
    settings = [
        f"data.root={synthetic_shards['root']}", "run.name=sync",
        "model.base_width=4", "model.image_size=32", "clips.num_clips=5", "checkpoint.every_n_steps=2", "log_every_n_steps=1",
    ]  # fmt: skip
    common = [*settings, f"run.storage_path={tmp_path}/runs", f"tracking.uri={tracking}"]  # the same, from any folder
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # the first run keeps the default store and storage: ./mlruns.db and ./runs
        config = load_config(TrainSyncConfig, "train-sync-tiny", overrides=[*settings, "max_steps=6"])
        patch.setenv(FAULTS_ENV_VAR, json.dumps({"fail_training_at_step": 3, "fail_rank": 1}))
        first = launch(config, "sync-classifier")
    meta = read_checkpoint_meta(first["checkpoint"])
    return {"tmp": tmp_path, "tracking": tracking, "common": common, "first": first, "run_id": meta["mlflow_run_id"]}


@pytest.fixture(scope="module")
def resumed_run(classifier_run) -> dict:
    """``--resume latest`` of the classifier run to 8 steps."""
    config = load_config(TrainSyncConfig, "train-sync-tiny", overrides=[*classifier_run["common"], "max_steps=8", "run.resume=latest"])
    return launch(config, "sync-classifier")


@pytest.fixture(scope="module")
def exported_classifier(resumed_run, classifier_run):
    from avsync_ray.training.export import export_checkpoint

    folder = classifier_run["tmp"] / "classifier"
    return folder, export_checkpoint(resumed_run["checkpoint"], folder)


def _artifact_folder(tracking_uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri.removeprefix("file://")


def test_the_default_store_is_where_the_command_ran_with_the_artifacts_beside_it(classifier_run):
    """With no tracking.uri, rank 0 (working in Ray's session folder) logs to ./mlruns.db where the run was launched,
    and every experiment keeps its runs' artifacts in ./mlruns beside it (MLflow's layout, mlruns/<experiment id>),
    not in a Ray temp folder that vanishes."""
    from mlflow.tracking import MlflowClient

    tmp_path = classifier_run["tmp"]
    experiments = MlflowClient(classifier_run["tracking"]).search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "avsync/sync-classifier"]
    assert all(e.artifact_location.removeprefix("file://") == str(tmp_path / "mlruns" / e.experiment_id) for e in experiments)
    artifacts = _artifact_folder(classifier_run["tracking"], classifier_run["run_id"])
    assert os.path.isfile(os.path.join(artifacts, "sync-classifier.config.yaml")) and artifacts.startswith(str(tmp_path / "mlruns"))


def test_an_injected_failure_restarts_from_the_last_checkpoint(classifier_run):
    first = classifier_run["first"]
    assert (classifier_run["tmp"] / "runs" / "sync" / ".injected-failure").read_text() == "step 3\n"
    meta = read_checkpoint_meta(first["checkpoint"])
    assert meta["step"] == 6 and optimizer_steps(first["checkpoint"]) == 6


def test_one_mlflow_run_holds_every_step_across_the_restart(classifier_run):
    tracking, run_id = classifier_run["tracking"], classifier_run["run_id"]
    assert sorted(_metric_history(tracking, run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    for name in ("lr", "grad_norm", "samples_per_s", "data_wait_s", "a2v_accuracy"):
        assert _metric_history(tracking, run_id, name), name


def test_a_corrupt_clip_is_skipped_and_counted(classifier_run):
    # The corrupt clip (shard 1, read by rank 1) was skipped and counted, and training went on.
    assert sum(_metric_history(classifier_run["tracking"], classifier_run["run_id"], "data/skipped_samples").values()) >= 1


def test_resume_latest_continues_the_same_run_and_mlflow_run(classifier_run, resumed_run):
    meta = read_checkpoint_meta(resumed_run["checkpoint"])
    assert meta["step"] == 8 and optimizer_steps(resumed_run["checkpoint"]) == 8
    assert meta["mlflow_run_id"] == classifier_run["run_id"]
    assert sorted(_metric_history(classifier_run["tracking"], classifier_run["run_id"], "loss")) == list(range(1, 9))


def test_a_resume_that_changes_the_zero_partitioning_is_refused(classifier_run, resumed_run):
    overrides = [*classifier_run["common"], "max_steps=10", "run.resume=latest", "deepspeed.zero_stage=1"]
    with pytest.raises(IncompatibleResumeError, match="deepspeed.zero_stage"):
        launch(load_config(TrainSyncConfig, "train-sync-tiny", overrides=overrides), "sync-classifier")


def test_export_writes_the_trained_weights(resumed_run, exported_classifier, classifier_run):
    from avsync_ray.models.sync_classifier import SyncClassifier
    from avsync_ray.training.engine import consolidated_state_dict

    folder, exported = exported_classifier
    assert exported["step"] == 8 and exported["mlflow_run_id"] == classifier_run["run_id"]
    # The CLI keeps stdout for its JSON result (DeepSpeed's import-time lines go to stderr).
    from typer.testing import CliRunner

    from avsync_ray.cli import app

    result = CliRunner().invoke(app, ["export", "--checkpoint", resumed_run["checkpoint"], "--out", str(classifier_run["tmp"] / "by-cli")])
    assert result.exit_code == 0 and json.loads(result.stdout)["step"] == 8, result.output
    classifier = SyncClassifier.from_pretrained(folder)
    trained = consolidated_state_dict(resumed_run["checkpoint"])
    for name, value in classifier.state_dict().items():
        torch.testing.assert_close(value.float() if value.is_floating_point() else value, trained[f"classifier.{name}"])


def test_registered_classifier_serves_through_mlflow(resumed_run, classifier_run, synthetic_shards):
    """`avsync export --register` (its output a pipe, as a job's log) prints MLflow's two registration lines and no
    colour codes, progress bar or advice to the model's author; the version leads to its lineage, and its weights
    stay beside the store."""
    import subprocess
    import sys

    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from avsync_ray.lineage import TRAINING_CONTEXT, model_lineage, read_folder_lineage, run_dataset, shard_dataset
    from avsync_ray.shards import read_samples

    tracking, tmp_path = classifier_run["tracking"], classifier_run["tmp"]
    # `avsync export --register` with no --tracking-uri: the training run's store, from the checkpoint's config.
    folder = tmp_path / "registered"
    command = [sys.executable, "-m", "avsync_ray", "export", "--checkpoint", resumed_run["checkpoint"], "--out", str(folder), "--register", "tiny-sync"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines() == ["Successfully registered model 'tiny-sync'.", "Created version '1' of model 'tiny-sync'."], done.stderr[-3000:]
    registered = json.loads(done.stdout)["registered"]
    assert registered["version"] == 1 and registered["model_uri"] == "models:/tiny-sync@candidate"
    weights = MlflowClient(tracking).get_logged_model(registered["model_id"]).artifact_location.removeprefix("file://")
    assert weights.startswith(str(tmp_path / "mlruns")) and os.path.isdir(weights)
    # The version leads to the training run, the step the checkpoint was taken at, and the shards it trained on.
    client = MlflowClient(tracking)
    lineage = model_lineage(client, registered["model_id"])
    assert (lineage["training_run_id"], lineage["step"]) == (classifier_run["run_id"], 8) and registered["run_id"] == classifier_run["run_id"]
    trained_on = run_dataset(client.get_run(classifier_run["run_id"]), TRAINING_CONTEXT)
    assert lineage["dataset"]["digest"] == trained_on.digest == shard_dataset(str(synthetic_shards["root"]), "train").digest
    assert read_folder_lineage(folder)["model_id"] == registered["model_id"]
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(read_samples(str(synthetic_shards["root"] / "test-000000.tar"))[0]["mp4"])
    mlflow.set_tracking_uri(tracking)
    served = mlflow.pyfunc.load_model("models:/tiny-sync@candidate").predict(pd.DataFrame([{"audio": str(clip), "video": str(clip)}]))
    assert list(served.columns) == ["psync_a2v", "psync_v2a", "error"] and 0 < served.iloc[0]["psync_a2v"] < 1 and pd.isna(served.iloc[0]["error"])

    # The registry URI resolves to its version and the exported folder, which loads as the export does.
    from avsync_ray.models.sync_classifier import load_sync_classifier
    from avsync_ray.tracking import resolve_model

    source = resolve_model("models:/tiny-sync@candidate", tracking, download_to=str(tmp_path / "downloaded"))
    assert (source.name, source.version, source.alias, source.run_id) == ("tiny-sync", 1, "candidate", registered["run_id"])
    assert load_sync_classifier(source.path).config.base_width == 4
    assert resolve_model("models:/tiny-sync/1", tracking, download_to=str(tmp_path / "by-version")).version == 1
    with pytest.raises(ValueError, match="not in the model registry"):
        resolve_model("models:/tiny-sync@champion", tracking)


def test_eval_sync_scores_every_held_out_clip_on_ray_and_in_process(exported_classifier, classifier_run, synthetic_shards):
    from avsync_ray.evaluation.batch import run_eval_sync

    runs = {}
    for in_process in (False, True):
        overrides = [f"tracking.uri={classifier_run['tracking']}", "ray.progress_bars=false", f"ray.in_process={in_process}"]
        config = load_config(EvalSyncConfig, "eval-sync", overrides=overrides, values={"classifier": str(exported_classifier[0]), "data.root": str(synthetic_shards["root"])})
        out = classifier_run["tmp"] / f"eval-{in_process}.json"
        runs[in_process] = run_eval_sync(config, out=str(out)), json.loads(out.read_text())["per_clip"]
    evaluation = runs[False][0]
    assert evaluation["clips"] == 4 and evaluation["skipped"] == 0
    assert 0 <= evaluation["a2v_accuracy"] <= 1 and 0 <= evaluation["v2a_accuracy"] <= 1
    assert runs[True][1] == runs[False][1]  # every clip's scores, the same in process


def test_avsyncd_training_zero3_preview_and_export(ray_session, s3_server, synthetic_shards, tmp_path, monkeypatch):
    """ZeRO-3, checkpoints on S3 (every rank's shards gathered there by Ray Train), an MLflow preview video in the
    default store where the command ran, ./mlruns.db with ./mlruns beside it (not in rank 0's working folder), and an
    export from the S3 checkpoint that the pipeline loads."""
    monkeypatch.chdir(tmp_path)
    tracking = f"sqlite:///{tmp_path}/mlruns.db"
    config = load_config(
        TrainConfig,
        "train-tiny",
        overrides=[
            f"data.root={synthetic_shards['root']}", f"run.storage_path={s3_server}/runs",
            "max_steps=4", "checkpoint.every_n_steps=2", "log_every_n_steps=1", "height=32", "width=32",
            "deepspeed.zero_stage=3", "preview_every_n_steps=4", "preview_inference_steps=2",
        ],
    )  # fmt: skip
    result = launch(config, "avsyncd")
    assert result["checkpoint"].startswith(f"{s3_server}/runs/avsyncd-tiny/checkpoint_")
    meta = read_checkpoint_meta(result["checkpoint"])
    assert meta["step"] == 4 and meta["signature"]["deepspeed.zero_stage"] == 3

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["deepspeed.zero_stage"] == "3"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/step_00000004.mp4"]
    assert os.path.isfile(os.path.join(_artifact_folder(tracking, run.info.run_id), "samples", "step_00000004.mp4"))
    assert _artifact_folder(tracking, run.info.run_id).startswith(str(tmp_path / "mlruns"))
    assert len(_metric_history(tracking, run.info.run_id, "loss")) == 4

    # The exported folder is a pipeline that generates, with the trained UNet weights.
    from avsync_ray.pipelines import AVSyncDPipeline
    from avsync_ray.storage import local_folder
    from avsync_ray.training.engine import consolidated_state_dict
    from avsync_ray.training.export import export_checkpoint

    export_checkpoint(result["checkpoint"], tmp_path / "avsyncd")
    pipe = AVSyncDPipeline.from_pretrained(tmp_path / "avsyncd")
    with local_folder(result["checkpoint"]) as folder:
        trained = consolidated_state_dict(folder)
    torch.testing.assert_close(pipe.unet.state_dict()["conv_in.weight"], trained["conv_in.weight"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image=torch.rand(3, 32, 32), audio=torch.randn(32_000).numpy(), prompt="sync", num_frames=12, num_inference_steps=2, output_type="np")
    assert out.frames.shape == (1, 12, 32, 32, 3)


@pytest.mark.slow
def test_tiny_models_learn_on_synthetic_shards(ray_session, tmp_path_factory, tmp_path):
    """The proof on this CPU: the tiny classifier beats chance (about 0.35 with +-5 of 31 clips) on held-out clips,
    and the tiny AVSyncD's loss falls."""
    from avsync_ray.evaluation.batch import run_eval_sync
    from avsync_ray.synth import synthesize_shards
    from avsync_ray.training.export import export_checkpoint

    root = tmp_path_factory.mktemp("learning_shards")
    synthesize_shards(root, "train", 16, seed=0)
    synthesize_shards(root, "test", 16, seed=1)
    tracking = f"sqlite:///{tmp_path}/mlruns.db"
    common = [f"data.root={root}", f"run.storage_path={tmp_path}/runs", f"tracking.uri={tracking}"]
    classifier = launch(load_config(TrainSyncConfig, "train-sync-tiny", overrides=common), "sync-classifier")
    export_checkpoint(classifier["checkpoint"], tmp_path / "classifier")
    evaluation = run_eval_sync(load_config(EvalSyncConfig, "eval-sync", overrides=[f"classifier={tmp_path / 'classifier'}", *common[:1], f"tracking.uri={tracking}"]))
    assert evaluation["clips"] == 16
    assert (evaluation["a2v_accuracy"] + evaluation["v2a_accuracy"]) / 2 >= 0.6, evaluation

    avsyncd = launch(load_config(TrainConfig, "train-tiny", overrides=[*common, "log_every_n_steps=1", "preview_every_n_steps=null"]), "avsyncd")
    losses = _metric_history(tracking, read_checkpoint_meta(avsyncd["checkpoint"])["mlflow_run_id"], "loss")
    first, last = [losses[s] for s in range(1, 11)], [losses[s] for s in range(31, 41)]
    assert sum(last) / 10 < 0.8 * sum(first) / 10, losses


@pytest.mark.slow  # three launches, about 2 min on 2 CPUs; the conversion's exactness is in the fast suite
def test_a_zero_run_continues_on_one_worker_then_on_two_again(ray_session, synthetic_shards, tmp_path):
    """A ZeRO-2 run of 2 workers resumed on 1 (a node lost for good), then on 2 again: each resume converts the
    latest checkpoint to DeepSpeed's universal format, the steps continue (DeepSpeed's own count too) and
    one MLflow run holds steps 1-6."""
    tracking = f"sqlite:///{tmp_path}/mlruns.db"
    common = [
        f"data.root={synthetic_shards['root']}", f"run.storage_path={tmp_path}/runs", f"tracking.uri={tracking}", "run.name=regroup",
        "model.base_width=4", "model.image_size=32", "clips.num_clips=5", "checkpoint.every_n_steps=2", "log_every_n_steps=1",
        "deepspeed.zero_stage=2",
    ]  # fmt: skip
    metas = []
    for workers, steps, resume in ((2, 2, []), (1, 4, ["run.resume=latest"]), (2, 6, ["run.resume=latest"])):
        config = load_config(TrainSyncConfig, "train-sync-tiny", overrides=[*common, f"scaling.num_workers={workers}", f"max_steps={steps}", *resume])
        last = launch(config, "sync-classifier")["checkpoint"]
        metas.append(read_checkpoint_meta(last))  # now: checkpoint.num_to_keep prunes the older ones
    assert [m["step"] for m in metas] == [2, 4, 6] and [m["signature"]["scaling.num_workers"] for m in metas] == [2, 1, 2]
    for step, workers in ((2, 2), (4, 1)):
        universal = read_checkpoint_meta(str(tmp_path / "runs" / "regroup" / f"universal-step_{step:08d}"))
        assert universal["universal"] and universal["step"] == step and universal["signature"]["scaling.num_workers"] == workers
    assert optimizer_steps(last) == 6
    assert len({m["mlflow_run_id"] for m in metas}) == 1
    assert sorted(_metric_history(tracking, metas[0]["mlflow_run_id"], "loss")) == list(range(1, 7))
