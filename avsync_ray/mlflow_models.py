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

logger = logging.getLogger(__name__)


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
    optional ``seed`` (else the ``seed`` param). Params: the generation settings of :data:`AVSYNCD_PARAMS`. Inputs are
    held to the default :class:`~avsync_ray.config.sampling.InputLimits`, as ``avsync generate`` holds them.
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
                conditioning = load_conditioning(settings, image=_cell(row, "image"), audio=_cell(row, "audio"), video=_cell(row, "video"), limits=settings.limits)
                frames, clip = generate(self.pipe, conditioning, _cell(row, "category") or "", settings)
                write_animation(frames, clip, settings.fps, out)
                results.append({"out": out, "error": None})
            except Exception as error:  # noqa: BLE001 - one bad request is that row's answer, not the batch's
                results.append({"out": _cell(row, "out"), "error": _row_error(error)})
        return pd.DataFrame(results, columns=["out", "error"])


class SyncClassifierPyfuncModel(mlflow.pyfunc.PythonModel):
    """Rows: ``audio`` and ``video`` URIs. Returns P_sync (a2v, v2a) of each pair, as in curation, and ``error``
    (None, or why that row could not be scored); every decode is bounded by the default :class:`InputLimits`."""

    def load_context(self, context) -> None:
        from avsync_ray.models.sync_classifier import load_sync_classifier

        self.classifier = load_sync_classifier(context.artifacts[PYFUNC_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from avsync_ray.config.sampling import InputLimits
        from avsync_ray.metrics.pair_metrics import pair_metric

        results = []
        for row in model_input.to_dict("records"):
            try:
                scored = pair_metric("psync", self.classifier, _cell(row, "audio"), _cell(row, "video"), limits=InputLimits())
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


EXPERIMENTS = {"avsyncd": "avsync/avsyncd", "sync-classifier": "avsync/sync-classifier"}  # where a model without a training run goes


def create_logged_model(kind: str, uri: str, run_id: str | None = None, step: int = 0, experiment: str | None = None,
                        location: str | None = None, external: bool = False):  # fmt: skip
    """A ``LoggedModel`` of ``kind`` (``avsyncd`` or ``sync-classifier``) in the store at ``uri``: an output of the
    training run ``run_id`` at ``step`` and in its experiment (else in ``experiment``, or the kind's), tagged with
    the dataset that run trained on and the folder it was exported to (``location``). ``external``: its weights stay
    in that folder and it is READY at once; otherwise it waits (PENDING) for :func:`log_model_artifacts`."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException

    from avsync_ray.lineage import TRAINING_CONTEXT, run_dataset

    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient(uri)
    run = None
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            logger.warning("the training run %s is not in the MLflow store %s: the model is logged without it", run_id, uri)
    tags = {"avsync.task": kind, "avsync.step": str(step), **({"avsync.location": location} if location else {})}
    dataset = run_dataset(run, TRAINING_CONTEXT) if run else None
    if dataset is not None:
        tags.update({"avsync.dataset.name": dataset.name, "avsync.dataset.digest": dataset.digest})
    if run:
        name, in_experiment = f"{run.info.run_name}-step-{step}", run.info.experiment_id
    else:
        name, in_experiment = kind, experiment_id(uri, experiment or EXPERIMENTS[kind])
    create = mlflow.create_external_model if external else mlflow.initialize_logged_model
    model = create(name=name, source_run_id=run.info.run_id if run else None, tags=tags, model_type=kind, experiment_id=in_experiment)
    if run:
        client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, step)])
    return model


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


def log_model_artifacts(model, folder: str, kind: str) -> None:
    """Log an exported folder as the pyfunc model of a PENDING ``LoggedModel`` (the folder is its artifact); it is
    READY afterwards."""
    from importlib.metadata import version

    with _without_advice_to_the_model_author():
        mlflow.pyfunc.log_model(
            python_model=PYFUNC_MODELS[kind](),
            signature=SIGNATURES[kind],
            artifacts={PYFUNC_ARTIFACT: str(folder)},
            pip_requirements=[f"avsync-ray=={version('avsync-ray')}"],  # the package brings every pinned dependency
            model_id=model.model_id,
        )


def register_logged_model(model, name: str, uri: str, alias: str = "candidate") -> dict:
    """A new version of registered model ``name`` that points at ``model`` (its ``source`` is ``models:/<model id>``,
    its run the model's training run), with ``alias`` on it and the model's ``avsync.*`` tags."""
    mlflow.set_tracking_uri(uri)
    tags = {k: v for k, v in model.tags.items() if k.startswith("avsync.")}
    model_version = mlflow.register_model(f"models:/{model.model_id}", name, tags=tags).version
    mlflow.tracking.MlflowClient(uri).set_registered_model_alias(name, alias, model_version)
    return {"name": name, "version": int(model_version), "alias": alias, "model_uri": f"models:/{name}@{alias}", "run_id": model.source_run_id,
            "model_id": model.model_id}  # fmt: skip


def register_model(folder: str, name: str, kind: str, uri: str, alias: str = "candidate", experiment: str | None = None,
                   source_run_id: str | None = None, step: int = 0) -> dict:  # fmt: skip
    """Log an exported folder as an MLflow pyfunc ``LoggedModel`` (of ``source_run_id`` at ``step`` when given), register
    it as ``name`` and point ``alias`` at the new version. ``kind`` is ``avsyncd`` or ``sync-classifier``."""
    model = create_logged_model(kind, uri, source_run_id, step, experiment)
    log_model_artifacts(model, folder, kind)
    return register_logged_model(model, name, uri, alias)


def log_export(summary: dict, uri: str, register: str | None = None, alias: str = "candidate") -> dict:
    """The MLflow side of ``avsync export`` (``summary`` is :func:`~avsync_ray.training.export.export_checkpoint`'s):
    the exported folder becomes a ``LoggedModel`` of the checkpoint's training run at its step, named in the
    folder's ``lineage.json``; with ``register``, the folder is logged as that model's pyfunc artifacts and registered
    under that name. A checkpoint of a run that logged nothing is only registered (when asked)."""
    from avsync_ray.lineage import write_folder_lineage

    folder, kind = summary["out"], summary["task"]
    if not (register or summary["mlflow_run_id"]):
        return {}
    model = create_logged_model(kind, uri, summary["mlflow_run_id"], summary["step"], location=folder, external=not register)
    dataset = {"name": model.tags["avsync.dataset.name"], "digest": model.tags["avsync.dataset.digest"]} if "avsync.dataset.digest" in model.tags else None
    write_folder_lineage(folder, {"model_id": model.model_id, "tracking_uri": uri, "training_run_id": model.source_run_id, "step": summary["step"],
                                  "dataset": dataset})  # fmt: skip
    logged = {"model_id": model.model_id, "logged_model_uri": f"models:/{model.model_id}", "tracking_uri": uri}
    if register:
        log_model_artifacts(model, folder, kind)  # after lineage.json, so the registered artifacts carry it too
        logged["registered"] = register_logged_model(model, register, uri, alias)
    return logged
