"""MLflow pyfunc wrappers of exported folders, and their registration, so a registered model
(``models:/name@candidate``) is usable through ``mlflow.pyfunc.load_model``. Each takes a pandas DataFrame with one
request per row."""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import pandas as pd

from avsync_ray.tracking import PYFUNC_ARTIFACT


class AVSyncDPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``category`` (prompt), ``out`` (mp4 URI to write) and ``video``, or ``image`` and ``audio`` (URIs);
    optional ``seed``. Returns the rows with ``out`` written."""

    def load_context(self, context) -> None:
        from avsync_ray.pipelines.loading import load_pipeline

        self.pipe = load_pipeline(context.artifacts[PYFUNC_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.config import GenerateConfig
        from avsync_ray.generate import configure_pipeline, generate, load_conditioning
        from avsync_ray.media import encode_mp4
        from avsync_ray.media.audio import TARGET_SAMPLE_RATE

        config = GenerateConfig(**(params or {}))
        configure_pipeline(self.pipe, config)
        for row in model_input.to_dict("records"):
            settings = config.model_copy(update={"seed": int(row["seed"])}) if row.get("seed") is not None else config
            conditioning = load_conditioning(settings, image=row.get("image"), audio=row.get("audio"), video=row.get("video"))
            frames, clip = generate(self.pipe, conditioning, row["category"], settings)
            encode_mp4(frames, settings.fps, clip, TARGET_SAMPLE_RATE, row["out"])
        return model_input


class SyncClassifierPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``audio`` and ``video`` URIs. Returns P_sync (a2v, v2a) of each pair, as in curation."""

    def load_context(self, context) -> None:
        from avsync_ray.models.sync_classifier import load_sync_classifier

        self.classifier = load_sync_classifier(context.artifacts[PYFUNC_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.evaluation.pair_metrics import pair_metric

        rows = [pair_metric("psync", self.classifier, row["audio"], row["video"]) for row in model_input.to_dict("records")]
        return pd.DataFrame([{"psync_a2v": r["a2v"], "psync_v2a": r["v2a"]} for r in rows])


PYFUNC_MODELS = {"avsyncd": AVSyncDPyfuncModel, "sync-classifier": SyncClassifierPyfuncModel}


def register_model(folder: str, name: str, kind: str, uri: str, alias: str = "candidate", experiment: str | None = None, source_run_id: str | None = None) -> dict:
    """Log an exported folder as an MLflow pyfunc model (the folder is its artifact), register it as ``name``
    and point ``alias`` at the new version. ``kind`` is ``avsyncd`` or ``sync-classifier``."""
    from importlib.metadata import version

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment or {"avsyncd": "avsync/avsyncd", "sync-classifier": "avsync/sync-classifier"}[kind])
    with mlflow.start_run(run_name=f"register-{name}", tags={"avsync.task": "export", "avsync.source_run_id": source_run_id or ""}) as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PYFUNC_MODELS[kind](),
            artifacts={PYFUNC_ARTIFACT: str(folder)},
            pip_requirements=[f"avsync-ray=={version('avsync-ray')}"],  # the package brings every pinned dependency
            registered_model_name=name,
        )
    client = mlflow.tracking.MlflowClient(uri)
    model_version = info.registered_model_version
    client.set_registered_model_alias(name, alias, model_version)
    return {"name": name, "version": int(model_version), "alias": alias, "model_uri": f"models:/{name}@{alias}", "run_id": run.info.run_id}
