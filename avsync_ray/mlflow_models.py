"""MLflow pyfunc wrappers of exported folders, and their registration, so a registered model
(``models:/name@candidate``) is usable through ``mlflow.pyfunc.load_model``. Each takes a pandas DataFrame with one
request per row."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from avsync_ray.tracking import PYFUNC_ARTIFACT, experiment_id


def _cell(row: dict, name: str):
    """A DataFrame cell, None where it is missing: absent, None, NaN (pandas' filler in mixed frames) or ''."""
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return value


def _row_error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]


# Request columns of each model and the generation settings a predict call takes as MLflow params.
AVSYNCD_INPUTS = Schema([ColSpec("string", "category"), ColSpec("string", "out"), ColSpec("string", "video", required=False),
                         ColSpec("string", "image", required=False), ColSpec("string", "audio", required=False),
                         ColSpec("double", "seed", required=False)])  # fmt: skip  (double: pandas holds a missing seed as NaN)
AVSYNCD_PARAMS = ParamSchema([
    ParamSpec("scheduler", "string", "pndm"), ParamSpec("num_inference_steps", "long", 50), ParamSpec("audio_guidance_scale", "double", 4.0),
    ParamSpec("guidance_scale", "double", 1.0), ParamSpec("seed", "long", 123), ParamSpec("height", "long", None), ParamSpec("width", "long", None),
    ParamSpec("compile", "boolean", False),  # compiled graphs are kept for later calls at the same shapes
])  # fmt: skip
SYNC_INPUTS = Schema([ColSpec("string", "audio"), ColSpec("string", "video")])


class AVSyncDPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``category`` (prompt), ``out`` (mp4 URI to write) and ``video``, or ``image`` and ``audio`` (URIs);
    optional ``seed`` (else the ``seed`` param). Params: the generation settings of :data:`AVSYNCD_PARAMS`.
    Returns one row per request: ``out`` and ``error`` (None, or why that row failed: the others still run)."""

    def load_context(self, context) -> None:
        from avsync_ray.pipelines.loading import load_pipeline

        self.model_dir = context.artifacts[PYFUNC_ARTIFACT]
        self.pipe = load_pipeline(self.model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.conditioning import load_conditioning
        from avsync_ray.config.sampling import GenerateConfig
        from avsync_ray.generate import check_output, generate, write_animation
        from avsync_ray.pipelines.sampling import configure_pipeline, with_model_size

        config = with_model_size(GenerateConfig(**{k: v for k, v in (params or {}).items() if v is not None}), self.model_dir)
        configure_pipeline(self.pipe, config)
        results = []
        for row in model_input.to_dict("records"):
            try:
                seed = _cell(row, "seed")
                settings = config.model_copy(update={"seed": int(seed)}) if seed is not None else config
                out = check_output(_cell(row, "out") or "")
                conditioning = load_conditioning(settings, image=_cell(row, "image"), audio=_cell(row, "audio"), video=_cell(row, "video"))
                frames, clip = generate(self.pipe, conditioning, _cell(row, "category") or "", settings)
                write_animation(frames, clip, settings.fps, out)
                results.append({"out": out, "error": None})
            except Exception as error:  # noqa: BLE001 - one bad request is that row's answer, not the batch's
                results.append({"out": _cell(row, "out"), "error": _row_error(error)})
        return pd.DataFrame(results, columns=["out", "error"])


class SyncClassifierPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``audio`` and ``video`` URIs. Returns P_sync (a2v, v2a) of each pair, as in curation, and ``error``
    (None, or why that row could not be scored)."""

    def load_context(self, context) -> None:
        from avsync_ray.models.sync_classifier import load_sync_classifier

        self.classifier = load_sync_classifier(context.artifacts[PYFUNC_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.metrics.pair_metrics import pair_metric

        results = []
        for row in model_input.to_dict("records"):
            try:
                scored = pair_metric("psync", self.classifier, _cell(row, "audio"), _cell(row, "video"))
                results.append({"psync_a2v": scored["a2v"], "psync_v2a": scored["v2a"], "error": None})
            except Exception as error:  # noqa: BLE001 - per-row answer
                results.append({"psync_a2v": None, "psync_v2a": None, "error": _row_error(error)})
        return pd.DataFrame(results, columns=["psync_a2v", "psync_v2a", "error"])


PYFUNC_MODELS = {"avsyncd": AVSyncDPyfuncModel, "sync-classifier": SyncClassifierPyfuncModel}
SIGNATURES = {
    "avsyncd": ModelSignature(inputs=AVSYNCD_INPUTS, outputs=Schema([ColSpec("string", "out"), ColSpec("string", "error", required=False)]), params=AVSYNCD_PARAMS),
    "sync-classifier": ModelSignature(
        inputs=SYNC_INPUTS,
        outputs=Schema([ColSpec("double", "psync_a2v", required=False), ColSpec("double", "psync_v2a", required=False), ColSpec("string", "error", required=False)]),
    ),
}


def _not_the_pickling_advice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Passing a Python object as `python_model`")


@contextlib.contextmanager
def _without_advice_to_the_model_author():
    """While a model is logged, MLflow advises whoever wrote its code, not the user registering it: to give an input
    example (the signature is explicit; an example would make MLflow load and run the model to check it) and to
    log the model from code (the wrapper here is pickled by reference to this module)."""
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    pyfunc_logger.addFilter(_not_the_pickling_advice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*An input example was not provided", category=UserWarning)
            yield
    finally:
        pyfunc_logger.removeFilter(_not_the_pickling_advice)


def register_model(folder: str, name: str, kind: str, uri: str, alias: str = "candidate", experiment: str | None = None, source_run_id: str | None = None) -> dict:
    """Log an exported folder as an MLflow pyfunc model (the folder is its artifact), register it as ``name``
    and point ``alias`` at the new version. ``kind`` is ``avsyncd`` or ``sync-classifier``."""
    from importlib.metadata import version

    mlflow.set_tracking_uri(uri)
    experiment = experiment or {"avsyncd": "avsync/avsyncd", "sync-classifier": "avsync/sync-classifier"}[kind]
    mlflow.set_experiment(experiment_id=experiment_id(uri, experiment))
    with mlflow.start_run(run_name=f"register-{name}", tags={"avsync.task": "export", "avsync.source_run_id": source_run_id or ""}) as run:
        with _without_advice_to_the_model_author():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PYFUNC_MODELS[kind](),
                signature=SIGNATURES[kind],
                artifacts={PYFUNC_ARTIFACT: str(folder)},
                pip_requirements=[f"avsync-ray=={version('avsync-ray')}"],  # the package brings every pinned dependency
                registered_model_name=name,
            )
    client = mlflow.tracking.MlflowClient(uri)
    model_version = info.registered_model_version
    client.set_registered_model_alias(name, alias, model_version)
    return {"name": name, "version": int(model_version), "alias": alias, "model_uri": f"models:/{name}@{alias}", "run_id": run.info.run_id}
