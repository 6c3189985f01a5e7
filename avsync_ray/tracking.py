"""MLflow: one run per job in the project's experiments; only the driver (or rank 0) logs."""

from __future__ import annotations

import json
import os
import tempfile

from avsync_ray.config import CurateConfig


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
