"""``avsync demo``: the main job end to end on an embedded default, on one machine, with no download.

Synthetic corpora -> curation on a local Ray -> the sync classifier trained with Ray Train + DeepSpeed and
evaluated on held-out clips -> curation of the main corpus with its P_sync filter -> the tiny AVSyncD trained on
the curated shards -> export -> a generated video -> ``avsync eval`` on held-out clips. Every step logs to the local
MLflow store, with the lineage MLflow 3 keeps (:mod:`avsync_ray.lineage`): each export is registered as
``demo-sync-classifier`` / ``demo-avsyncd`` (alias ``candidate``), a version that leads to its training run, step,
dataset and curation run. After each training it checks that the model learned (``DemoConfig.checks``) and stops
with one line naming the model that did not.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterable

from avsync_ray.config.base import load_config, save_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.config.demo import DemoConfig, DemoLearningChecks
from avsync_ray.config.evaluate import EvalConfig, EvalSyncConfig
from avsync_ray.config.train import TrainConfig, TrainSyncConfig
from avsync_ray.curation.windows import REASONS
from avsync_ray.errors import WorkFailedError
from avsync_ray.generate import run_generate
from avsync_ray.shards import iter_samples, read_index, read_metadata
from avsync_ray.synth import EXPECTED, synthesize_corpus

# The registered models the demo's exports become (in its MLflow store), by task.
REGISTERED_MODELS = {"sync-classifier": "demo-sync-classifier", "avsyncd": "demo-avsyncd"}
# A window reached the P_sync rules when it passed every earlier one: P_sync then kept or removed it.
_PSYNC_REASONS = ("", *REASONS["psync_a2v"], *REASONS["psync_v2a"])


def classifier_failure(checks: DemoLearningChecks, evaluation: dict) -> str | None:
    """Why the sync classifier did not learn, judged by its ``eval-sync`` summary on held-out clips; None if it did."""
    protocol = evaluation["protocol"]
    chance = min(1.0, (2 * protocol["tolerance"] + 1) / protocol["num_clips"])
    a2v, v2a = evaluation["a2v_accuracy"], evaluation["v2a_accuracy"]
    if a2v is None or v2a is None:
        return f"the sync classifier cannot be judged: no held-out clip was scored ({evaluation['skipped']} skipped)"
    if min(a2v, v2a) < checks.min_heldout_accuracy:
        return (
            f"the sync classifier did not learn: held-out a2v {a2v:.3f}, v2a {v2a:.3f} "
            f"(needs >= {checks.min_heldout_accuracy:g} each; chance is {chance:.2f})"
        )
    return None


def psync_windows(labels: Iterable[str], reasons: Iterable[str]) -> dict[str, dict[str, int]]:
    """Of a curation's windows (labels = synthetic categories, reasons from its score table), how many in-sync and
    shifted ones reached the P_sync rules and how many of those P_sync kept."""
    counts = {"in_sync": {"reached": 0, "kept": 0}, "shifted": {"reached": 0, "kept": 0}}
    for label, reason in zip(labels, reasons):
        if label in EXPECTED and reason in _PSYNC_REASONS:
            group = counts["in_sync" if EXPECTED[label]["synchronized"] else "shifted"]
            group["reached"] += 1
            group["kept"] += not reason
    return counts


def psync_failure(checks: DemoLearningChecks, windows: dict[str, dict[str, int]]) -> str | None:
    """Why the P_sync filter does not tell in-sync from shifted windows (:func:`psync_windows`); None if it does."""
    in_sync, shifted = windows["in_sync"], windows["shifted"]
    if not in_sync["reached"] or not shifted["reached"]:
        return f"the P_sync filter cannot be judged: {in_sync['reached']} in-sync and {shifted['reached']} shifted windows reached it"
    margin = in_sync["kept"] / in_sync["reached"] - shifted["kept"] / shifted["reached"]
    if margin < checks.min_psync_margin:
        return (
            f"the sync classifier's P_sync filter does not tell in-sync from shifted windows: it kept {in_sync['kept']}/{in_sync['reached']} "
            f"in-sync and {shifted['kept']}/{shifted['reached']} shifted ones (margin {margin:.2f}; needs >= {checks.min_psync_margin:g})"
        )
    return None


def avsyncd_failure(checks: DemoLearningChecks, losses: list[float]) -> str | None:
    """Why AVSyncD did not learn, judged by its logged training losses in step order; None if it did."""
    if len(losses) < 2:
        return f"AVSyncD's training cannot be judged: {len(losses)} logged loss value(s)"
    if losses[-1] > checks.max_avsyncd_loss_ratio * losses[0]:
        return (
            f"AVSyncD did not learn: its training loss went from {losses[0]:.4f} to {losses[-1]:.4f} "
            f"(needs the last <= {checks.max_avsyncd_loss_ratio:g} x the first)"
        )
    return None


def _stop_unless_learned(failure: str | None) -> None:
    if failure:
        raise WorkFailedError(f"demo: {failure}")


def _logged_losses(tracking_uri: str, run_id: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, "loss")
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]


def _curate(corpus: Path, shards: Path, split: str, config: DemoConfig, **settings) -> dict:
    """Curate ``corpus`` with the ``curate`` preset, no semantic or ImageBind stage (the demo has no weights for
    them), and ``settings`` (dotted field -> value). Each demo corpus fits one shard, where mixing the corpus
    across shards does nothing; its clips stay in key order, the order the README's figures were measured in
    (the tiny models' few hundred steps depend on the order of their samples)."""
    from avsync_ray.curation.pipeline import run_curation

    curate_config = load_config(CurateConfig, "curate", values={
        "input": str(corpus), "output": str(shards), "shards.split": split, "filters.semantic.enabled": False,
        "filters.imagebind.enabled": False, "shards.short_side": 128, "shards.order": "key", **_runtime(config), **settings,
    })  # fmt: skip
    summary = run_curation(curate_config)
    return {k: summary[k] for k in ("videos", "done", "zero_survivors", "failed", "windows", "kept_windows", "clips", "shards", "mlflow_run_id")}


def _runtime(config: DemoConfig) -> dict:
    """Where every job of the demo logs and how many CPUs its local Ray has."""
    return {"tracking.uri": config.tracking_uri, "ray.num_cpus": config.ray_num_cpus}


def check_runs_in_store(tracking_uri: str, runs: dict[str, str | None]) -> None:
    """Every run the demo made must be in its one MLflow store (a training run logged from a Ray worker into a
    store relative to that worker's folder would be lost)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    missing = []
    for name, run_id in runs.items():
        try:
            client.get_run(run_id or "")
        except MlflowException:
            missing.append(name)
    if missing:
        raise WorkFailedError(f"the MLflow store {tracking_uri} lacks the runs of: {', '.join(missing)}")


def _export(checkpoint: str, folder: Path, tracking_uri: str) -> dict:
    """``avsync export --register``: the folder, its LoggedModel (of the training run, at the checkpoint's step) and a
    new registry version of it; returns what the registry holds."""
    from avsync_ray.mlflow_models import log_export
    from avsync_ray.training.export import export_checkpoint

    summary = export_checkpoint(checkpoint, folder)
    return log_export(summary, tracking_uri, register=REGISTERED_MODELS[summary["task"]])["registered"]


def _evaluate(out: Path, models: Path, test_shards: Path, config: DemoConfig) -> dict:
    """``avsync eval`` of the demo's pipeline on held-out shards: an audio-guidance sweep and both baselines, with
    random feature networks in the real file formats (the numbers exercise the code, they mean nothing)."""
    from avsync_ray.evaluation.batch import run_eval
    from avsync_ray.models.feature_networks import write_tiny_feature_networks

    networks = write_tiny_feature_networks(out / "feature_networks", config.seed)
    sampling = config.generate
    # Two actors that each generate and score: on a small machine one pool beats two that wait on each other.
    actors = {"colocate": True, "generate_actor.concurrency": 2, "generate_actor.num_gpus": 0.0, "generate_actor.num_cpus": 0.5,
              "generate_actor.device": sampling.device}  # fmt: skip
    eval_config = load_config(EvalConfig, "eval", values={
        "model": str(models / "avsyncd"), "test": str(test_shards), "output": str(out / "eval"),
        "sweep.audio_guidance_scale": [1.0, sampling.audio_guidance_scale], "baselines": ["static", "no_audio"],
        **{f"features.{name}": str(path) for name, path in networks.items()}, "features.sync_classifier": str(models / "sync_classifier"),
        "max_videos": config.eval_videos, "sampling.num_inference_steps": sampling.num_inference_steps, "frechet": "eigen",
        "bootstrap.samples": 20, "cache": str(out / "eval_cache"), **actors, **_runtime(config),
    })  # fmt: skip
    shutil.rmtree(out / "eval", ignore_errors=True)  # the pipeline is retrained on each run: its clips are new
    summary = run_eval(eval_config)
    return {k: summary[k] for k in ("output", "report", "per_clip", "clips", "metrics", "mlflow_run_id")}


def _step(name: str, started: float) -> None:
    print(f"[demo {time.perf_counter() - started:6.0f} s] {name}", flush=True)


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; returns where each output and MLflow run is and how far each model learned. Raises
    :class:`WorkFailedError` as soon as a model did not learn as far as ``config.checks`` asks."""
    import pyarrow.parquet as pq

    from avsync_ray.evaluation.batch import run_eval_sync
    from avsync_ray.training.engine import read_checkpoint_meta
    from avsync_ray.training.launcher import launch

    started = time.perf_counter()
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "demo.config.yaml")
    shutil.rmtree(out / "runs", ignore_errors=True)  # each demo trains from scratch
    training = {"run.storage_path": str(out / "runs"), "seed": config.seed, **_runtime(config)}

    # 1. Corpora: in-sync clips for the classifier (the paper trains it on VGG-Sound Sync) and a mixed corpus.
    _step("synthesising corpora", started)
    corpora = out / "corpus"
    synthesize_corpus(corpora / "classifier-train", config.classifier_videos, seed=config.seed, categories=["sync"])
    synthesize_corpus(corpora / "classifier-test", config.classifier_test_videos, seed=config.seed + 1, categories=["sync"])
    synthesize_corpus(corpora / "main", config.corpus_videos, seed=config.seed + 2)

    # 2. The classifier's shards (no P_sync yet: there is no classifier), then train, export and evaluate it.
    _step("curating the classifier's clips", started)
    shards = out / "shards"
    curated = {
        "classifier-train": _curate(corpora / "classifier-train", shards / "classifier-train", "train", config, **{"filters.sync.enabled": False}),
        "classifier-test": _curate(corpora / "classifier-test", shards / "classifier-test", "test", config, **{"filters.sync.enabled": False}),
    }
    _step("training the sync classifier (Ray Train + DeepSpeed, 2 workers)", started)
    sync_run = launch(
        load_config(TrainSyncConfig, "train-sync-tiny", values={"data.root": str(shards / "classifier-train"), "run.name": "demo-sync-classifier",
                                                                 "max_steps": config.sync_training_steps, **training}),  # fmt: skip
        "sync-classifier",
    )
    models = out / "models"
    registered = {"sync_classifier": _export(sync_run["checkpoint"], models / "sync_classifier", config.tracking_uri)}
    _step("evaluating the classifier on held-out clips (31 clips, +-5)", started)
    evaluation = run_eval_sync(
        load_config(EvalSyncConfig, "eval-sync", values={"classifier": str(models / "sync_classifier"), "data.root": str(shards / "classifier-test"),
                                                         "tracking.uri": config.tracking_uri}),  # fmt: skip
        out=str(out / "eval_sync.json"),
    )
    _stop_unless_learned(classifier_failure(config.checks, evaluation))

    # 3. The main corpus, curated with every rule the demo has weights for, P_sync from the new classifier.
    _step("curating the main corpus with the P_sync filter", started)
    main_shards = shards / "main"
    curated["main"] = _curate(
        corpora / "main", main_shards, "train", config, **{"filters.sync.classifier": str(models / "sync_classifier"), "sync_actor.num_cpus": 0.5}
    )
    scores = pq.read_table(main_shards / "scores.parquet", columns=["label", "reason"]).to_pydict()
    psync = psync_windows(scores["label"], scores["reason"])
    _stop_unless_learned(psync_failure(config.checks, psync))
    index = read_index(str(main_shards), "train")
    if not index["shardlist"]:
        raise WorkFailedError(f"curation kept no clip of the main corpus; see the report in {main_shards / 'report'}")

    # 4. AVSyncD on the curated clips, exported as a pipeline, animating a curated clip.
    _step("training the tiny AVSyncD (Ray Train + DeepSpeed, 2 workers)", started)
    avsyncd_run = launch(
        load_config(TrainConfig, "train-tiny", values={"data.root": str(main_shards), "run.name": "demo-avsyncd",
                                                       "max_steps": config.avsyncd_training_steps, **training}),  # fmt: skip
        "avsyncd",
    )
    avsyncd_run_id = read_checkpoint_meta(avsyncd_run["checkpoint"])["mlflow_run_id"]
    avsyncd_losses = _logged_losses(config.tracking_uri, avsyncd_run_id)
    _stop_unless_learned(avsyncd_failure(config.checks, avsyncd_losses))
    registered["avsyncd"] = _export(avsyncd_run["checkpoint"], models / "avsyncd", config.tracking_uri)
    _step("generating a video with the trained pipeline", started)
    sample = next(iter_samples([str(main_shards / index["shardlist"][0]["url"])]))
    clip = out / "inputs" / f"{sample['__key__']}.mp4"
    clip.parent.mkdir(exist_ok=True)
    clip.write_bytes(sample["mp4"])
    result = run_generate(models / "avsyncd", out / "generated.mp4", read_metadata(sample)["label"], config.generate, video=str(clip))

    # 5. The paper's evaluation of the trained pipeline on held-out clips, with tiny random feature networks.
    _step("evaluating the pipeline on held-out clips (avsync eval: FID, FVD, IA, IT, RelSync, AlignSync)", started)
    video_eval = _evaluate(out, models, shards / "classifier-test", config)
    runs = {
        **{f"curation {name}": summary["mlflow_run_id"] for name, summary in curated.items()},
        "sync-classifier training": read_checkpoint_meta(sync_run["checkpoint"])["mlflow_run_id"],
        "sync-classifier evaluation": evaluation["mlflow_run_id"],
        "avsyncd training": avsyncd_run_id,
        "evaluation": video_eval["mlflow_run_id"],
    }
    check_runs_in_store(config.tracking_uri, runs)
    _step("done", started)
    return {
        "corpora": str(corpora),
        "curation": curated,
        "shards": {name: str(shards / name) for name in curated},
        "report": str(main_shards / "report" / "report.md"),
        "sync_classifier": {
            "checkpoint": sync_run["checkpoint"],
            "model": str(models / "sync_classifier"),
            "final_loss": sync_run["metrics"].get("loss"),
            "heldout_a2v_accuracy": evaluation["a2v_accuracy"],
            "heldout_v2a_accuracy": evaluation["v2a_accuracy"],
            "heldout_clips": evaluation["clips"],
            "psync_windows": psync,
        },
        "avsyncd": {
            "checkpoint": avsyncd_run["checkpoint"],
            "model": str(models / "avsyncd"),
            "first_loss": avsyncd_losses[0],
            "final_loss": avsyncd_losses[-1],
        },
        "generated_video": result["output"],
        "eval": video_eval,
        "generated": {k: result[k] for k in ("frames", "fps", "size", "audio_seconds", "prompt")},
        "mlflow": {
            "tracking_uri": config.tracking_uri,
            "runs": runs,
            "experiments": ["avsync/curation", "avsync/sync-classifier", "avsync/avsyncd", "avsync/eval"],
            "registered": {name: entry["model_uri"] for name, entry in registered.items()},
            "lineage": f"avsync runs models {REGISTERED_MODELS['avsyncd']} --tracking-uri {config.tracking_uri}",
            "ui": f"mlflow ui --backend-store-uri {config.tracking_uri}",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
