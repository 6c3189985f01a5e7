"""MLflow: one run per job in the project's experiments; only the driver (or rank 0) logs."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from avsync_ray.config.base import TrackingConfig
from avsync_ray.config.curate import CurateConfig
from avsync_ray.nested import flatten


def flat_params(data: dict) -> dict[str, str]:
    """Nested config -> MLflow params ``a.b.c: value`` (MLflow params are flat strings)."""
    return {name: json.dumps(value) if isinstance(value, (list, tuple)) else str(value) for name, value in flatten(data).items()}


def artifact_root(uri: str) -> str | None:
    """Where new experiments of the store at ``uri`` keep their runs' artifacts: for a local SQLite store, the
    folder ``mlruns`` beside the database, in MLflow's own layout (``mlruns/<experiment id>/...``). (MLflow takes its
    default, ``./mlruns``, in the working folder of whichever process creates the experiment: for Ray Train's rank 0
    a temporary session folder, which would pin every later run's artifacts there.) None where the store places
    them itself (a folder store, a server)."""
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        return os.path.join(os.path.dirname(uri[len("sqlite:///") :]), "mlruns")
    return None


def tracking_client(uri: str):
    """An ``MlflowClient`` of the store at ``uri``; a local SQLite store that does not exist yet is created with its
    artifact root at :func:`artifact_root` (its ``Default`` experiment's artifacts go there too)."""
    from mlflow.tracking import MlflowClient

    if artifact_root(uri) and not os.path.exists(uri[len("sqlite:///") :]):
        _store_with_artifact_root(uri)
    return MlflowClient(uri)


def _store_with_artifact_root(uri: str):
    """The tracking store at ``uri`` as MLflow's SQLite store with :func:`artifact_root` as its default artifact
    root (the store ``mlflow server --default-artifact-root`` would open); None for other stores."""
    root = artifact_root(uri)
    if root is None:
        return None
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(uri, root)


def experiment_id(uri: str, name: str) -> str:
    """The id of the experiment ``name`` in the store at ``uri``, created (with its artifacts under
    :func:`artifact_root`) if it does not exist yet; every process that logs a run goes through here."""
    from mlflow.exceptions import MlflowException

    client = tracking_client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    store = _store_with_artifact_root(uri)
    try:
        return store.create_experiment(name) if store is not None else client.create_experiment(name)
    except MlflowException:  # another process created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _mlflow(uri: str, experiment: str):
    """The ``mlflow`` module with its tracking URI and active experiment set."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id(uri, experiment))
    return mlflow


def log_job_run(tracking: TrackingConfig, task: str, params: dict, metrics: dict[str, float], texts: dict[str, str]) -> str:
    """One run of a one-shot job (``eval-sync``, ``precompute``) in ``tracking.experiment``, named after the task
    unless ``tracking.run_name`` says otherwise: params, metrics, and text artifacts by file name. Returns its id."""
    mlflow = _mlflow(tracking.uri, tracking.experiment)
    with mlflow.start_run(run_name=tracking.run_name or task, tags={"avsync.task": task}) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        for name, text in texts.items():
            mlflow.log_text(text, name)
        return run.info.run_id


def log_curation_run(config: CurateConfig, report: dict, summary: dict, index: dict, resolved_yaml: str, sources: Iterable[dict]) -> str:
    """One run in ``config.tracking.experiment``, named after the output unless ``tracking.run_name`` is set:
    thresholds and model paths as params, the funnel (of the stages that ran) and outcomes as metrics, the
    report (with histograms), stats, shard index and resolved config as artifacts, and two datasets
    (:mod:`avsync_ray.lineage`): the input corpus (its listed ``sources``) and the shards written. Returns the run id."""
    from avsync_ray.lineage import CORPUS_CONTEXT, CURATED_CONTEXT, LISTING_FILE, corpus_dataset, shard_dataset
    from avsync_ray.storage import filesystem, join_uri

    mlflow = _mlflow(config.tracking.uri, config.tracking.experiment)
    params = flat_params({"filters": config.model_dump(mode="json")["filters"], "windows": config.windows.model_dump(), "shots": config.shots.model_dump()})
    params.update({"input": str(config.input), "output": config.output, "split": config.shards.split})
    run_name = config.tracking.run_name or f"curate-{config.output.rstrip('/').rsplit('/', 1)[-1]}"
    disabled = {f"removed_by_{name}" for name in report["skipped_rules"]}  # a stage that did not run removed nothing
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"avsync.task": "curation", "avsync.curation_id": index.get("curation_id", ""), "avsync.output": config.output})
        corpus = corpus_dataset(config.input, ((s["uri"], s["source_id"], s["label"]) for s in sources), join_uri(config.output, LISTING_FILE))
        mlflow.log_inputs([corpus, shard_dataset(config.output, config.shards.split)], [CORPUS_CONTEXT, CURATED_CONTEXT], [None, None])
        mlflow.log_params(params)
        mlflow.log_metrics({f"funnel.{k}": v for k, v in report["funnel"].items() if k not in disabled})
        mlflow.log_metrics({f"videos.{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_metrics({f"skipped_inputs.{k}": v for k, v in summary["skipped_inputs"].items()})
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
    config as params and as a YAML artifact, and the ``dataset`` it trains on (:func:`avsync_ray.lineage.shard_dataset`)."""

    def __init__(self, uri: str, experiment: str, run_name: str, task: str, params: dict, config_yaml: str, run_id: str | None = None, dataset=None):
        from avsync_ray.lineage import TRAINING_CONTEXT, dataset_input

        self.client = tracking_client(uri)
        if run_id is None:
            run_id = self.client.create_run(experiment_id(uri, experiment), run_name=run_name, tags={"avsync.task": task}).info.run_id
            self._log_params(run_id, params)
            self.client.log_text(run_id, config_yaml, f"{task}.config.yaml")
            if dataset is not None:
                self.client.log_inputs(run_id, datasets=[dataset_input(dataset, TRAINING_CONTEXT)])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
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


# ------------------------------------------------------------------------------------------------ registry

REGISTRY_SCHEME = "models:/"
PYFUNC_ARTIFACT = "model"  # the exported folder's name among a registered pyfunc model's artifacts


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder, or a registry version downloaded to one."""

    path: str  # the model folder (AVSyncD pipeline or SyncClassifier) on this machine
    uri: str  # what the user gave: a folder or ``models:/name@alias`` / ``models:/name/version``
    name: str | None = None  # registered model name, version and alias (None for a plain folder)
    version: int | None = None
    alias: str | None = None
    run_id: str | None = None  # the run that made it (a registered LoggedModel's training run)
    model_id: str | None = None  # the registry version's LoggedModel (a folder names its own in lineage.json)


def is_registry_uri(uri: str) -> bool:
    return str(uri).startswith(REGISTRY_SCHEME)


def parse_registry_uri(uri: str) -> tuple[str, str | None, int | None]:
    """(name, alias, version) of ``models:/name@alias`` or ``models:/name/3``; exactly one of alias and version is set."""
    reference = uri[len(REGISTRY_SCHEME) :] if is_registry_uri(uri) else ""
    name, alias, version = reference, None, None
    if "@" in reference:
        name, alias = reference.split("@", 1)
    elif "/" in reference:
        name, number = reference.split("/", 1)
        version = int(number) if number.isdigit() else None
    if not name or not (alias or version is not None):
        raise ValueError(f"{uri!r} is not a registry URI of the form models:/<name>@<alias> or models:/<name>/<version>")
    return name, alias, version


def _registry_entry(uri: str, tracking_uri: str):
    """The MLflow ``ModelVersion`` a registry URI names (an alias is looked up now)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_registry_uri(uri)
    client = MlflowClient(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"{uri} is not in the model registry at {tracking_uri}: {exc.message}") from None


def registry_version(uri: str, tracking_uri: str) -> int:
    """The version a registry URI points at now (an alias may have moved), without downloading anything."""
    return int(_registry_entry(uri, tracking_uri).version)


def resolve_model(uri: str, tracking_uri: str, download_to: str | None = None) -> ModelSource:
    """A model folder as it is, or a registered model (``models:/name@alias`` or ``models:/name/3``, as
    ``avsync export --register`` logs them) resolved to its version and downloaded (to ``download_to``, else a
    temporary folder); the exported folder inside the pyfunc model's artifacts is returned."""
    import mlflow

    from avsync_ray.lineage import model_id_of_version

    if not is_registry_uri(uri):
        return ModelSource(path=str(uri), uri=str(uri))
    name, alias, _ = parse_registry_uri(uri)
    found = _registry_entry(uri, tracking_uri)
    resolved = f"{REGISTRY_SCHEME}{name}/{found.version}"
    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=resolved, dst_path=download_to or tempfile.mkdtemp(prefix="avsync-model-"))
    from mlflow.models import Model

    artifacts = Model.load(local).flavors.get("python_function", {}).get("artifacts", {})
    if PYFUNC_ARTIFACT not in artifacts:
        raise ValueError(f"{resolved} holds no '{PYFUNC_ARTIFACT}' artifact: register models with `avsync export --register`")
    folder = os.path.join(local, artifacts[PYFUNC_ARTIFACT]["path"])
    return ModelSource(path=folder, uri=uri, name=name, version=int(found.version), alias=alias, run_id=found.run_id, model_id=model_id_of_version(found))


@dataclass(frozen=True)
class ChildRun:
    """A nested run of a parent run: one setting of a sweep, or a baseline."""

    name: str
    params: dict
    metrics: dict[str, float]
    tags: dict[str, str]


def log_parent_with_children(
    tracking: TrackingConfig, task: str, params: dict, metrics: dict[str, float], children: list[ChildRun], artifacts: str | None = None,
    dataset=None, model_id: str | None = None, model_metrics: dict[str, float] | None = None,
) -> tuple[str, list[str]]:
    """A parent run (params, metrics, the folder ``artifacts`` logged as artifacts) with one nested run per child
    (``mlflow.parentRunId`` set, so ``search_runs`` with ``tags.mlflow.parentRunId = '<id>'`` returns them as
    comparable rows). Every run gets ``dataset`` (the test set) as an input, so ``dataset.digest = '<digest>'``
    finds them; the parent logs ``model_metrics`` against the ``LoggedModel`` ``model_id`` and that dataset, which
    puts them on the model's page. Returns the parent's id and the children's ids, in order."""
    from avsync_ray.lineage import EVALUATION_CONTEXT

    mlflow = _mlflow(tracking.uri, tracking.experiment)
    child_ids = []
    with mlflow.start_run(run_name=tracking.run_name or task, tags={"avsync.task": task}) as parent:
        if dataset is not None:
            mlflow.log_input(dataset, context=EVALUATION_CONTEXT)
        mlflow.log_params({k: v[:6000] for k, v in flat_params(params).items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        if model_metrics:
            mlflow.log_metrics(model_metrics, model_id=model_id, dataset=dataset)
        for child in children:
            with mlflow.start_run(run_name=child.name, nested=True, tags={"avsync.task": task, **child.tags}) as run:
                if dataset is not None:
                    mlflow.log_input(dataset, context=EVALUATION_CONTEXT)
                mlflow.log_params({k: v[:6000] for k, v in flat_params(child.params).items()})
                mlflow.log_metrics({k: float(v) for k, v in child.metrics.items() if v is not None and v == v})
                child_ids.append(run.info.run_id)
        if artifacts:
            mlflow.log_artifacts(artifacts)
        return parent.info.run_id, child_ids
