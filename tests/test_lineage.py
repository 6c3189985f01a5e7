"""Lineage in one MLflow store, built by the functions each job logs with (no Ray: synthetic shards, the tiny
pipeline): a curation run with its corpus as input and its shards as output, a training run that reads the same
dataset (same digest), two exports of it as LoggedModels at their steps, registered, and three evaluations (both
models on one test set, the first also on a part of it). From a registry version the MLflow client reaches its
training run, step, dataset and curation run; the evaluation metrics sit on each model per test set; the README's
comparison snippet keeps the models and the test sets apart; `avsync runs` prints it all; and the MLflow UI's model
page, in headless Chromium against `mlflow server` on loopback, shows the evaluation metrics."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lineage_support import REGISTERED
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.config.base import load_config
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.evaluation.batch import log_eval_runs
from avsync_ray.lineage import (
    CORPUS_CONTEXT,
    CURATED_CONTEXT,
    EVALUATION_CONTEXT,
    TRAINING_CONTEXT,
    corpus_dataset,
    evaluated_model,
    model_id_of_version,
    model_lineage,
    read_folder_lineage,
    run_dataset,
    shard_dataset,
)
from avsync_ray.mlflow_models import log_export
from avsync_ray.tracking import ModelSource, resolve_model

MODEL = REGISTERED
README = Path(__file__).resolve().parents[1] / "README.md"


def _summary(fvd: float, ia: float) -> dict:
    return {"clips": 4, "videos": 4, "fvd": fvd, "fvd_ci_low": fvd - 0.5, "fvd_ci_high": fvd + 0.5, "ia": ia, "ia_std": 1.0,
            "it": ia / 2, "it_std": 0.5, "relsync": 50.0, "relsync_std": 3.0, "alignsync": 40.0, "alignsync_std": 2.0, "fid": None, "undefined": {}}  # fmt: skip


def _evaluate(uri: str, root: Path, shards: str, model_uri: str, take: int | None, fvd: float) -> dict:
    """The MLflow runs `avsync eval` logs for an audio-guidance sweep and the static baseline, with given numbers."""
    config = load_config(EvalConfig, "eval", values={
        "model": model_uri, "test": shards, "output": str(root / "eval"), "sweep.audio_guidance_scale": [1.0, 4.0], "baselines": ["static"],
        "tracking.uri": uri, **{f"features.{name}": str(root / name) for name in ("fid_inception", "i3d", "imagebind", "sync_classifier")},
        **({"max_videos": take} if take else {}),
    })  # fmt: skip  (the feature networks are never loaded: only the logging runs here)
    source = resolve_model(model_uri, uri, download_to=str(root / f"downloaded-{len(list(root.glob('downloaded-*')))}"))
    entries = [
        {"name": "audio_guidance_scale-1.0", "kind": "model", "swept": {"audio_guidance_scale": 1.0}, "summary": _summary(fvd, 20.0)},
        {"name": "audio_guidance_scale-4.0", "kind": "model", "swept": {"audio_guidance_scale": 4.0}, "summary": _summary(fvd + 1, 21.0)},
        {"name": "baseline-static", "kind": "static", "swept": {}, "summary": _summary(9.0, 5.0)},
        {"name": "gt", "kind": "gt", "swept": {}, "summary": {"clips": 4, "ia": 30.0, "undefined": {}}},
    ]
    provenance = {"test_set": "internal-id", "clips": 4, "networks": {}, "model": {"files": "0123"}, "skipped_videos": 0, "fid_batchnorm": "batch statistics"}
    report = root / "report"
    report.mkdir(exist_ok=True)
    (report / "report.md").write_text("# avsync eval\n")
    test_dataset = shard_dataset(shards, "test", take=take)
    parent, _ = log_eval_runs(config, source, entries, {}, provenance, report, test_dataset)
    return {"parent": parent, "test_set": test_dataset.digest, "source": source}


@pytest.fixture(scope="module")
def store(lineage_registry):
    """The session's store (tests/lineage_support.py: curation, training, exports at steps 2 and 4 registered as
    versions 1 @champion and 2), and three evaluations: both versions on the test set, version 1 on a part of it."""
    uri, root, shards = lineage_registry["uri"], lineage_registry["root"], lineage_registry["shards"]
    evaluations = {
        "v1": _evaluate(uri, root / "eval-1", shards, f"models:/{MODEL}@champion", None, fvd=2.0),
        "v2": _evaluate(uri, root / "eval-2", shards, f"models:/{MODEL}/2", None, fvd=5.0),
        "v1-part": _evaluate(uri, root / "eval-3", shards, f"models:/{MODEL}/1", 2, fvd=11.0),
    }
    return {**lineage_registry, "evaluations": evaluations}


def test_the_same_shards_are_the_same_dataset_and_a_part_of_them_is_another(synthetic_shards, tmp_path):
    root = str(synthetic_shards["root"])
    whole = shard_dataset(root, "test")
    assert whole.digest == shard_dataset(root, "test").digest and whole.name.endswith("/test") and whole.profile["clips"] == 4
    assert shard_dataset(root, "test", take=4).digest == whole.digest  # all of it is the same test set
    part = shard_dataset(root, "test", take=2)
    assert part.digest != whole.digest and part.name == f"{whole.name}[:2]" and part.profile["of"]["digest"] == whole.digest
    assert json.loads(whole.to_dict()["profile"]) == whole.profile and whole.source.to_dict()["uri"].endswith("/test.index.json")

    videos = [("a.mp4", "a", "dog"), ("b.mp4", "b", "cat")]
    corpus = corpus_dataset(["s3://bucket/raw/a.mp4", "s3://bucket/raw/b.mp4"], videos)
    assert corpus.profile == {"videos": 2, "labels": {"cat": 1, "dog": 1}} and corpus.source.to_dict()["uri"] == "s3://bucket/raw"
    assert corpus_dataset("x", videos).digest == corpus.digest != corpus_dataset("x", [videos[0], ("b.mp4", "b", "bird")]).digest
    assert corpus_dataset("memory://raw", videos).source._get_source_type() == "fsspec"  # a storage MLflow has no source for


def test_curation_logs_its_corpus_as_input_and_its_shards_as_output(store):
    run = MlflowClient(store["uri"]).get_run(store["curation"])
    corpus, curated = run_dataset(run, CORPUS_CONTEXT), run_dataset(run, CURATED_CONTEXT)
    assert json.loads(corpus.source)["uri"] == str(store["root"] / "corpus")
    assert json.loads(corpus.profile) == {"videos": 8, "labels": {"sync": 8}, "listing": f"{store['shards']}/ledger.parquet"}
    assert json.loads(curated.source)["uri"] == f"{store['shards']}/train.index.json"
    profile = json.loads(curated.profile)
    assert profile["clips"] == 8 and profile["labels"]["sync"] == {"clips": 8, "sources": 8} and profile["hours"] > 0
    assert curated.digest == shard_dataset(store["shards"], "train").digest


def test_training_reads_the_dataset_the_curation_wrote(store):
    client = MlflowClient(store["uri"])
    trained_on = run_dataset(client.get_run(store["training"]), TRAINING_CONTEXT)
    written = run_dataset(client.get_run(store["curation"]), CURATED_CONTEXT)
    assert (trained_on.name, trained_on.digest) == (written.name, written.digest)


def test_a_registry_version_leads_to_its_training_run_step_dataset_and_curation_run(store):
    client = MlflowClient(store["uri"])
    for version, step in (("1", 2), ("2", 4)):
        found = client.get_model_version(MODEL, version)
        model_id = model_id_of_version(found)
        assert model_id == store["exports"][step]["model_id"] and found.run_id == store["training"]
        lineage = model_lineage(client, model_id)
        assert (lineage["training_run_id"], lineage["training_run_name"], lineage["step"]) == (store["training"], "tiny-run", step)
        assert lineage["dataset"]["digest"] == shard_dataset(store["shards"], "train").digest
        assert [r["run_id"] for r in lineage["curation_runs"]] == [store["curation"]]
        assert found.tags["avsync.dataset.digest"] == lineage["dataset"]["digest"] and found.tags["avsync.step"] == str(step)
    outputs = {o.model_id: o.step for o in client.get_run(store["training"]).outputs.model_outputs}
    assert outputs == {store["exports"][2]["model_id"]: 2, store["exports"][4]["model_id"]: 4}
    # The exported folder names its model, and so do the registered artifacts (written before they were logged).
    assert read_folder_lineage(store["exports"][4]["folder"])["model_id"] == store["exports"][4]["model_id"]
    assert read_folder_lineage(store["evaluations"]["v2"]["source"].path)["model_id"] == store["exports"][4]["model_id"]


def test_an_export_without_register_is_an_external_model_of_its_run_and_step(store, tiny_model_dir, tmp_path):
    folder = tmp_path / "unregistered"
    shutil.copytree(tiny_model_dir, folder)
    logged = log_export({"task": "avsyncd", "step": 3, "out": str(folder), "mlflow_run_id": store["training"]}, store["uri"])
    client = MlflowClient(store["uri"])
    model = client.get_logged_model(logged["model_id"])
    assert model.status == "READY" and model.tags["mlflow.model.isExternal"] == "true" and model.tags["avsync.location"] == str(folder)
    assert model_lineage(client, model.model_id)["step"] == 3 and "registered" not in logged
    # Evaluating the folder finds its model through lineage.json; a store without it gets no link, with a warning.
    assert evaluated_model(ModelSource(path=str(folder), uri=str(folder)), "ab", store["uri"]) == (model.model_id, f"models:/{model.model_id}")
    other = f"sqlite:///{tmp_path}/other.db"
    assert evaluated_model(ModelSource(path=str(folder), uri=str(folder)), "ab", other) == (None, f"{folder}@ab")
    assert log_export({"task": "avsyncd", "step": 3, "out": str(folder), "mlflow_run_id": None}, store["uri"]) == {}  # nothing to link


def test_evaluation_metrics_sit_on_each_model_per_test_set(store):
    client = MlflowClient(store["uri"])
    whole, part = store["evaluations"]["v1"]["test_set"], store["evaluations"]["v1-part"]["test_set"]
    metrics = {(m.key, m.dataset_digest): m.value for m in client.get_logged_model(store["exports"][2]["model_id"]).metrics}
    assert metrics[("audio_guidance_scale-1.0/fvd", whole)] == 2.0 and metrics[("audio_guidance_scale-4.0/fvd_ci_high", whole)] == 3.5
    assert metrics[("audio_guidance_scale-1.0/fvd", part)] == 11.0 and metrics[("audio_guidance_scale-4.0/ia_std", part)] == 1.0
    assert not any(key.startswith(("baseline", "gt", "clips")) for key, _ in metrics)  # baselines and GT are not the model
    # Both models on the whole test set: MLflow's own search finds them by that dataset, side by side.
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    experiment = client.get_experiment_by_name("avsync/avsyncd").experiment_id
    name = shard_dataset(store["shards"], "test").name
    found = mlflow.search_logged_models([experiment], datasets=[{"dataset_name": name, "dataset_digest": whole}], output_format="list")
    assert {m.model_id for m in found} == {store["exports"][2]["model_id"], store["exports"][4]["model_id"]}
    parent = client.get_run(store["evaluations"]["v2"]["parent"])
    assert parent.data.params["model_ref"] == f"models:/{MODEL}/2" and parent.data.params["model_id"] == store["exports"][4]["model_id"]
    assert run_dataset(parent, EVALUATION_CONTEXT).digest == whole


def test_the_readme_snippet_compares_two_models_on_one_test_set(store, capsys):
    text = README.read_text()
    snippet = text[text.index("**Comparing runs in MLflow.**") :]
    code = snippet[snippet.index("```python\n") + len("```python\n") : snippet.index("```\n", snippet.index("```python"))]
    first = store["evaluations"]["v1"]
    code = code.replace('"sqlite:///mlruns.db"', repr(store["uri"])).replace("<parent run id>", first["parent"]).replace("<test set digest>", first["test_set"])
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "audio_guidance_scale-4.0" in capsys.readouterr().out
    table = namespace["both"].pivot_table(index="params.sampling.audio_guidance_scale", columns="params.model_ref", values="metrics.fvd")
    # One column per model, each its own numbers on that test set: nothing averaged with the other test set's 11.0.
    assert table.to_dict() == {f"models:/{MODEL}/1": {"1.0": 2.0, "4.0": 3.0}, f"models:/{MODEL}/2": {"1.0": 5.0, "4.0": 6.0}}


def test_runs_models_and_compare_print_the_lineage_and_the_metrics(store, tmp_path):
    result = CliRunner().invoke(app, ["runs", "models", MODEL, "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    dataset = shard_dataset(store["shards"], "train")
    versions, evaluations = result.stdout.split("## Evaluations")
    rows = {line.split(" | ")[0].strip("| "): line for line in versions.splitlines() if line.startswith("| ")}
    assert "champion" in rows["1"] and "candidate" in rows["2"] and "tiny-run" in rows["2"] and f"({dataset.digest})" in rows["2"]
    assert "| 4 |" in rows["2"] and "curate-shards" in rows["2"]
    whole, part = store["evaluations"]["v1"]["test_set"], store["evaluations"]["v1-part"]["test_set"]
    evaluated = [line for line in evaluations.splitlines() if "audio_guidance_scale-1.0" in line]
    assert len(evaluated) == 3 and sum(whole in line for line in evaluated) == 2 and sum(part in line for line in evaluated) == 1
    assert any(line.startswith("| 1 |") and "11.0 [10.5, 11.5]" in line for line in evaluated)

    plot = tmp_path / "compare.png"
    result = CliRunner().invoke(app, ["runs", "compare", f"models:/{MODEL}@champion", store["evaluations"]["v2"]["parent"],
                                      "--out", str(plot), "--tracking-uri", store["uri"]])  # fmt: skip
    assert result.exit_code == 0, result.output
    fvd = next(line for line in result.stdout.splitlines() if line.startswith("| FVD"))
    assert "2.0 [1.5, 2.5]" in fvd and "11.0 [10.5, 11.5]" in fvd and "5.0 [4.5, 5.5]" in fvd and "9.0 [8.5, 9.5]" in fvd  # the baseline too
    assert plot.read_bytes()[:4] == b"\x89PNG"
    same = CliRunner().invoke(app, ["runs", "compare", f"models:/{MODEL}/1", f"models:/{MODEL}/2", "--test-set", whole, "--out", str(plot),
                                    "--tracking-uri", store["uri"]])  # fmt: skip
    header = next(line for line in same.stdout.splitlines() if line.startswith("| metric"))
    assert same.exit_code == 0 and header.count(f"{MODEL}/1") == header.count(f"{MODEL}/2") == 2 and "[:2]" not in same.stdout
    missing = CliRunner().invoke(app, ["runs", "models", "no-such-model", "--tracking-uri", store["uri"]])
    assert missing.exit_code == 2 and "no registered model named 'no-such-model'" in missing.output


@contextlib.contextmanager
def mlflow_server(uri: str, log: Path):
    """`mlflow server` on a free loopback port, one worker, no job runner; yields its URL once it answers."""
    from local_cluster import free_ports

    (port,) = free_ports(1)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_ui_model_page_lists_the_evaluation_metrics_per_test_set(store, tmp_path):
    from browser_support import FLAGS, chromium

    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (the dev extra) is not installed")
    executable = chromium()
    client = MlflowClient(store["uri"])
    model = client.get_logged_model(store["exports"][2]["model_id"])
    test_set = shard_dataset(store["shards"], "test")
    with mlflow_server(store["uri"], tmp_path / "server.log") as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(f"{url}/#/experiments/{model.experiment_id}/models/{model.model_id}")
        # the page counts the metrics as it loads them: wait for all of the model's
        page.get_by_text(f"Metrics ({len(model.metrics)})", exact=True).wait_for(timeout=60_000)
        text = page.inner_text("body")
        browser.close()
    assert "tiny-run" in text  # the source run
    assert f"{test_set.name} (#{test_set.digest})" in text
    for key in ("audio_guidance_scale-1.0/fvd", "audio_guidance_scale-4.0/fvd_ci_high", "audio_guidance_scale-1.0/ia"):
        assert key in text
