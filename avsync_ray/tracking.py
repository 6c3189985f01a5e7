"""MLflow: one run per job in the project's experiments; only the driver (or rank 0) logs."""

from __future__ import annotations

import json
import os
import tempfile

from avsync_ray.config import CurateConfig, TrackingConfig


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> MLflow params ``a.b.c: value`` (MLflow params are flat strings)."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _mlflow(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def log_job_run(tracking: TrackingConfig, task: str, params: dict, metrics: dict[str, float], texts: dict[str, str]) -> str:
    """One run of a one-shot job (``eval-sync``, ``precompute``) in ``tracking.experiment``, named after the task
    unless ``tracking.run_name`` says otherwise: params, metrics, and text artifacts by file name. Returns its id."""
    mlflow = _mlflow(tracking.uri)
    mlflow.set_experiment(tracking.experiment)
    with mlflow.start_run(run_name=tracking.run_name or task, tags={"avsync.task": task}) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        for name, text in texts.items():
            mlflow.log_text(text, name)
        return run.info.run_id


def log_curation_run(config: CurateConfig, report: dict, summary: dict, index: dict, resolved_yaml: str) -> str:
    """One run in ``config.tracking.experiment``: thresholds and model paths as params, the funnel and
    outcomes as metrics, the report (with histograms), stats, shard index and resolved config as artifacts.
    Returns the run id."""
    from avsync_ray.storage import filesystem, join_uri

    mlflow = _mlflow(config.tracking.uri)
    mlflow.set_experiment(config.tracking.experiment)
    params = flatten({"filters": config.model_dump(mode="json")["filters"], "windows": config.windows.model_dump(), "shots": config.shots.model_dump()})
    params.update({"input": str(config.input), "output": config.output, "split": config.shards.split})
    with mlflow.start_run(run_name=config.tracking.run_name) as run:
        mlflow.set_tags({"avsync.task": "curation", "avsync.curation_id": index.get("curation_id", "")})
        mlflow.log_params(params)
        mlflow.log_metrics({f"funnel.{k}": v for k, v in report["funnel"].items()})
        mlflow.log_metrics({f"videos.{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        with tempfile.TemporaryDirectory() as folder:
            for name, content in (("curate.config.yaml", resolved_yaml), ("stats.json", json.dumps(report["stats"], indent=2)),
                                  (f"{index['name']}.index.json", json.dumps(index, indent=2))):  # fmt: skip
                path = os.path.join(folder, name)
                with open(path, "w") as handle:
                    handle.write(content)
                mlflow.log_artifact(path)
            fs, report_path = filesystem(join_uri(config.output, "report"))
            fs.get(report_path, os.path.join(folder, "report"), recursive=True)
            mlflow.log_artifacts(os.path.join(folder, "report"), "report")
        return run.info.run_id


class TrainingTracker:
    """Rank 0's MLflow run of a training job. A resumed job passes the run id saved in its checkpoint and
    continues the same run (metrics keep their step axis); a new job creates the run and logs the resolved
    config as params and as a YAML artifact."""

    def __init__(self, uri: str, experiment: str, run_name: str, task: str, params: dict, config_yaml: str, run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags={"avsync.task": task}).info.run_id
            self._log_params(run_id, params)
            self.client.log_text(run_id, config_yaml, f"{task}.config.yaml")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def register_model(folder: str, name: str, kind: str, uri: str, alias: str = "candidate", experiment: str | None = None, source_run_id: str | None = None) -> dict:
    """Log an exported folder as an MLflow pyfunc model (the folder is its artifact), register it as ``name``
    and point ``alias`` at the new version. ``kind`` is ``avsyncd`` or ``sync-classifier``."""
    from importlib.metadata import version

    from avsync_ray.mlflow_models import PYFUNC_MODELS

    mlflow = _mlflow(uri)
    mlflow.set_experiment(experiment or {"avsyncd": "avsync/avsyncd", "sync-classifier": "avsync/sync-classifier"}[kind])
    with mlflow.start_run(run_name=f"register-{name}", tags={"avsync.task": "export", "avsync.source_run_id": source_run_id or ""}) as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PYFUNC_MODELS[kind](),
            artifacts={"model": str(folder)},
            pip_requirements=[f"avsync-ray=={version('avsync-ray')}"],  # the package brings every pinned dependency
            registered_model_name=name,
        )
    client = mlflow.tracking.MlflowClient(uri)
    model_version = info.registered_model_version
    client.set_registered_model_alias(name, alias, model_version)
    return {"name": name, "version": int(model_version), "alias": alias, "model_uri": f"models:/{name}@{alias}", "run_id": run.info.run_id}
