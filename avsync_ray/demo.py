"""``avsync demo``: the main job end to end on an embedded default, on one machine, with no download.

Synthetic corpora -> curation on a local Ray -> the sync classifier trained with Ray Train + DeepSpeed and
evaluated on held-out clips -> curation of the main corpus with its P_sync filter -> the tiny AVSyncD trained on
the curated shards -> export -> a generated video -> ``avsync eval`` on held-out clips. Every step logs to the local
MLflow store.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from avsync_ray.config import CurateConfig, DemoConfig, EvalConfig, EvalSyncConfig, TrainConfig, TrainSyncConfig, load_config, save_config
from avsync_ray.errors import WorkFailedError
from avsync_ray.generate import run_generate
from avsync_ray.shards import iter_samples, read_index, read_metadata
from avsync_ray.synth import synthesize_corpus


def _curate(corpus: Path, shards: Path, split: str, config: DemoConfig, *overrides: str) -> dict:
    from avsync_ray.curation.pipeline import run_curation

    curate_config = load_config(
        CurateConfig,
        "curate",
        overrides=[
            f"input={corpus}", f"output={shards}", f"shards.split={split}", "filters.semantic.enabled=false",
            "filters.imagebind.enabled=false", "shards.short_side=128", f"tracking.uri={config.tracking_uri}",
            f"ray.num_cpus={config.ray_num_cpus}", *overrides,
        ],
    )  # fmt: skip
    summary = run_curation(curate_config)
    return {k: summary[k] for k in ("videos", "done", "zero_survivors", "failed", "windows", "kept_windows", "clips", "shards", "mlflow_run_id")}


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


def _evaluate(out: Path, models: Path, test_shards: Path, config: DemoConfig) -> dict:
    """``avsync eval`` of the demo's pipeline on held-out shards: an audio-guidance sweep and both baselines, with
    random feature networks in the real file formats (the numbers exercise the code, they mean nothing)."""
    from avsync_ray.evaluation.batch import run_eval
    from avsync_ray.models.feature_networks import write_tiny_feature_networks

    networks = write_tiny_feature_networks(out / "feature_networks", config.seed)
    sampling = config.generate
    eval_config = load_config(
        EvalConfig, "eval", values={"model": str(models / "avsyncd"), "test": str(test_shards), "output": str(out / "eval"),
                                    "sweep.audio_guidance_scale": [1.0, sampling.audio_guidance_scale]},
        overrides=[
            *(f"features.{name}={path}" for name, path in networks.items()), f"features.sync_classifier={models / 'sync_classifier'}",
            f"max_videos={config.eval_videos}", "baselines=[static, no_audio]", f"sampling.num_inference_steps={sampling.num_inference_steps}",
            "frechet=eigen", "bootstrap.samples=20",
            f"cache={out / 'eval_cache'}", f"tracking.uri={config.tracking_uri}", f"ray.num_cpus={config.ray_num_cpus}",
            *(f"{actor}.{key}" for actor in ("generate_actor", "feature_actor") for key in ("num_gpus=0", "num_cpus=0.5", f"device={sampling.device}")),
        ],
    )  # fmt: skip
    shutil.rmtree(out / "eval", ignore_errors=True)  # the pipeline is retrained on each run: its clips are new
    summary = run_eval(eval_config)
    return {k: summary[k] for k in ("output", "report", "per_clip", "clips", "metrics", "mlflow_run_id")}


def _step(name: str, started: float) -> None:
    print(f"[demo {time.perf_counter() - started:6.0f} s] {name}", flush=True)


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; returns where each output and MLflow run is."""
    from avsync_ray.evaluation.batch import run_eval_sync
    from avsync_ray.training.engine import read_checkpoint_meta
    from avsync_ray.training.export import export_checkpoint
    from avsync_ray.training.launcher import launch

    started = time.perf_counter()
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "demo.config.yaml")
    shutil.rmtree(out / "runs", ignore_errors=True)  # each demo trains from scratch
    common = [f"run.storage_path={out / 'runs'}", f"tracking.uri={config.tracking_uri}", f"ray.num_cpus={config.ray_num_cpus}", f"seed={config.seed}"]

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
        "classifier-train": _curate(corpora / "classifier-train", shards / "classifier-train", "train", config, "filters.sync.enabled=false"),
        "classifier-test": _curate(corpora / "classifier-test", shards / "classifier-test", "test", config, "filters.sync.enabled=false"),
    }
    _step("training the sync classifier (Ray Train + DeepSpeed, 2 workers)", started)
    sync_run = launch(
        load_config(TrainSyncConfig, "train-sync-tiny", overrides=[f"data.root={shards / 'classifier-train'}", "run.name=demo-sync-classifier",
                                                                    f"max_steps={config.sync_training_steps}", *common]),  # fmt: skip
        "sync-classifier",
    )
    models = out / "models"
    export_checkpoint(sync_run["checkpoint"], models / "sync_classifier")
    _step("evaluating the classifier on held-out clips (31 clips, +-5)", started)
    evaluation = run_eval_sync(
        load_config(EvalSyncConfig, "eval-sync", overrides=[f"classifier={models / 'sync_classifier'}", f"data.root={shards / 'classifier-test'}",
                                                            f"tracking.uri={config.tracking_uri}"]),  # fmt: skip
        out=str(out / "eval_sync.json"),
    )

    # 3. The main corpus, curated with every rule the demo has weights for, P_sync from the new classifier.
    _step("curating the main corpus with the P_sync filter", started)
    main_shards = shards / "main"
    curated["main"] = _curate(
        corpora / "main", main_shards, "train", config, f"filters.sync.classifier={models / 'sync_classifier'}", "sync_actor.num_cpus=0.5"
    )
    index = read_index(str(main_shards), "train")
    if not index["shardlist"]:
        raise WorkFailedError(f"curation kept no clip of the main corpus; see the report in {main_shards / 'report'}")

    # 4. AVSyncD on the curated clips, exported as a pipeline, animating a curated clip.
    _step("training the tiny AVSyncD (Ray Train + DeepSpeed, 2 workers)", started)
    avsyncd_run = launch(
        load_config(TrainConfig, "train-tiny", overrides=[f"data.root={main_shards}", "run.name=demo-avsyncd",
                                                          f"max_steps={config.avsyncd_training_steps}", *common]),  # fmt: skip
        "avsyncd",
    )
    export_checkpoint(avsyncd_run["checkpoint"], models / "avsyncd")
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
        "avsyncd training": read_checkpoint_meta(avsyncd_run["checkpoint"])["mlflow_run_id"],
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
        },
        "avsyncd": {"checkpoint": avsyncd_run["checkpoint"], "model": str(models / "avsyncd"), "final_loss": avsyncd_run["metrics"].get("loss")},
        "generated_video": result["output"],
        "eval": video_eval,
        "generated": {k: result[k] for k in ("frames", "fps", "size", "audio_seconds", "prompt")},
        "mlflow": {
            "tracking_uri": config.tracking_uri,
            "runs": runs,
            "experiments": ["avsync/curation", "avsync/sync-classifier", "avsync/avsyncd", "avsync/eval"],
            "ui": f"mlflow ui --backend-store-uri {config.tracking_uri}",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
