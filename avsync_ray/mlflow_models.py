"""MLflow pyfunc wrappers of exported folders, so a registered model (``models:/name@candidate``) is usable
through ``mlflow.pyfunc.load_model``. Each takes a pandas DataFrame with one request per row."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class AVSyncDPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``category`` (prompt), ``out`` (mp4 URI to write) and ``video``, or ``image`` and ``audio`` (URIs);
    optional ``seed``. Returns the rows with ``out`` written."""

    def load_context(self, context) -> None:
        from avsync_ray.generate import load_pipeline

        self.pipe = load_pipeline(context.artifacts["model"])
        self.pipe.set_progress_bar_config(disable=True)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.config import GenerateConfig
        from avsync_ray.generate import generate, load_conditioning
        from avsync_ray.media import encode_mp4
        from avsync_ray.media.audio import TARGET_SAMPLE_RATE

        config = GenerateConfig(**(params or {}))
        for row in model_input.to_dict("records"):
            settings = config.model_copy(update={"seed": int(row["seed"])}) if row.get("seed") is not None else config
            conditioning = load_conditioning(settings, image=row.get("image"), audio=row.get("audio"), video=row.get("video"))
            frames, clip = generate(self.pipe, conditioning, row["category"], settings)
            encode_mp4(frames, settings.fps, clip, TARGET_SAMPLE_RATE, row["out"])
        return model_input


class SyncClassifierPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``audio`` and ``video`` URIs. Returns P_sync (a2v, v2a) of each pair, as in curation."""

    def load_context(self, context) -> None:
        from avsync_ray.evaluation.pair_metrics import load_sync_classifier

        self.classifier = load_sync_classifier(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.evaluation.pair_metrics import pair_metric

        rows = [pair_metric("psync", self.classifier, row["audio"], row["video"]) for row in model_input.to_dict("records")]
        return pd.DataFrame([{"psync_a2v": r["a2v"], "psync_v2a": r["v2a"]} for r in rows])


PYFUNC_MODELS = {"avsyncd": AVSyncDPyfuncModel, "sync-classifier": SyncClassifierPyfuncModel}
