"""Lineage in MLflow: what each run read and made, as MLflow's own entities, so that the UI and the client lead
from a model version back to its training run, step, dataset and curation run.

- A shard folder (one split) is an MLflow dataset: source = its ``<split>.index.json``, digest = the index's content
  id, profile = clips, hours, shards, clips and source videos per label, the curation id and the corpus listing
  (the curation's ``ledger.parquet``). Curation logs it with context ``output`` beside its input corpus (``input``),
  training logs it as ``training``, evaluation as ``evaluation``: the same shards give the same digest in every run.
  MLflow's run outputs hold only models, so a curation's output dataset is a run dataset whose context says so.
- An exported checkpoint is a ``LoggedModel`` of its training run at the checkpoint's step (a run output), tagged
  with the dataset it trained on; ``lineage.json`` in the exported folder names it, so evaluating or serving the
  folder finds it; ``avsync export --register`` points a registry version at it.
- Evaluation metrics are logged against that model and the test set
  (:func:`avsync_ray.tracking.log_parent_with_children`), so the model's page lists them per dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset as DatasetEntity, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from avsync_ray.nested import content_id
from avsync_ray.storage import exists, filesystem, join_uri, read_json, write_json_atomic

logger = logging.getLogger(__name__)

# The ``mlflow.data.context`` of each dataset a run logs.
CORPUS_CONTEXT = "input"  # curation: the raw videos it read
CURATED_CONTEXT = "output"  # curation: the shards it wrote
TRAINING_CONTEXT = "training"
EVALUATION_CONTEXT = "evaluation"

LINEAGE_FILE = "lineage.json"  # in an exported folder: its LoggedModel, training run, step and dataset
LISTING_FILE = "ledger.parquet"  # a curation output's listing of every source video (shards/README.md)


class ProfiledDataset(MetaDataset):
    """A dataset MLflow records by source, name, digest and profile only: the data stays where it is."""

    def __init__(self, source: DatasetSource, name: str, digest: str, profile: dict):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile, sort_keys=True)}


class FsspecDatasetSource(DatasetSource):
    """A dataset source at a URI of a storage MLflow has no artifact repository for (``memory://``, ``az://``...):
    fsspec reads it."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "fsspec"

    def load(self, dst_path: str | None = None) -> str:
        import tempfile

        fs, path = filesystem(self.uri)
        local = f"{dst_path or tempfile.mkdtemp(prefix='avsync-dataset-')}/{path.rstrip('/').rsplit('/', 1)[-1]}"
        fs.get(path, local, recursive=fs.isdir(path))
        return local

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and "://" in raw_source

    @classmethod
    def _resolve(cls, raw_source: Any) -> FsspecDatasetSource:
        return cls(raw_source)

    def to_dict(self) -> dict[str, str]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict) -> FsspecDatasetSource:
        return cls(source_dict["uri"])


def dataset_source(uri: str) -> DatasetSource:
    """MLflow's source for ``uri`` (local, s3, gs, ... as its artifact repositories know them), else fsspec's."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        with warnings.catch_warnings():  # a local path matches MLflow's local source twice, and it says so
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(uri)
    except MlflowException:
        return FsspecDatasetSource(uri)


def _folder_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def shard_dataset(root: str, split: str, take: int | None = None) -> ProfiledDataset:
    """The shards of ``split`` at ``root`` as a dataset (module docstring); ``take``: only the first ``take`` samples
    in index order (an evaluation's ``max_videos``), a dataset of its own unless that is all of them."""
    from avsync_ray.shards import index_uri, read_index

    index = read_index(root, split)
    name, digest = f"{_folder_name(root)}/{split}", content_id(index)
    stats_uri = join_uri(root, f"{split}.stats.json")
    stats = read_json(stats_uri) if exists(stats_uri) else {}
    profile: dict[str, Any] = {"clips": index["nsamples"], "shards": len(index["shardlist"])}
    if stats:
        profile["hours"] = stats["hours"]
        profile["labels"] = {label: {"clips": s["clips"], "sources": s["sources"]} for label, s in stats["labels"].items()}
    if index.get("curation_id"):
        profile["curation_id"] = index["curation_id"]
    if exists(join_uri(root, LISTING_FILE)):
        profile["corpus_listing"] = join_uri(root, LISTING_FILE)
    if take is not None and take < index["nsamples"]:  # a part of those shards: named after them, profiled by them
        profile = {"clips": take, "of": {"name": name, "digest": digest, **profile}}
        name, digest = f"{name}[:{take}]", content_id({"index": digest, "take": take})
    return ProfiledDataset(dataset_source(index_uri(root, split)), name, digest, profile)


def corpus_location(inputs: str | list[str]) -> str:
    """Where a corpus given as a folder, glob, manifest or list of URIs is: the input itself, or the longest folder
    prefix the listed URIs share."""
    if isinstance(inputs, str):
        return inputs
    shared = inputs[0]
    for uri in inputs[1:]:
        while not uri.startswith(shared):
            shared = shared[:-1]
    return shared.rsplit("/", 1)[0] if "/" in shared else shared


def corpus_dataset(inputs: str | list[str], videos: Iterable[tuple[str, str, str]], listing: str | None = None) -> ProfiledDataset:
    """Raw videos (``(uri, source id, label)``, in listing order) as a dataset: digest = a hash of the listing (one
    pass, so a corpus of millions of videos costs the driver no more than listing it), profile = videos per label
    and, where there is one, the ``listing`` that records each video."""
    digest, labels, count = hashlib.sha256(), {}, 0
    for uri, source_id, label in videos:
        digest.update(json.dumps([uri, source_id, label]).encode() + b"\n")
        labels[label] = labels.get(label, 0) + 1
        count += 1
    location = corpus_location(inputs)
    profile: dict[str, Any] = {"videos": count, "labels": dict(sorted(labels.items()))}
    if listing:
        profile["listing"] = listing
    return ProfiledDataset(dataset_source(location), _folder_name(location), digest.hexdigest()[:16], profile)


def dataset_input(dataset: MetaDataset, context: str) -> DatasetInput:
    """A dataset as ``MlflowClient.log_inputs`` takes it (the fluent ``mlflow.log_input`` builds the same)."""
    return DatasetInput(DatasetEntity(**dataset.to_dict()), [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def run_dataset(run, context: str) -> DatasetEntity | None:
    """The dataset ``run`` logged with ``context`` (None if it logged none)."""
    for found in run.inputs.dataset_inputs if run.inputs else []:
        if any(tag.key == MLFLOW_DATASET_CONTEXT and tag.value == context for tag in found.tags):
            return found.dataset
    return None


# ------------------------------------------------------------------------------------------------ models


def read_folder_lineage(folder: str) -> dict:
    """What ``lineage.json`` in a model folder records (``model_id``, ``tracking_uri``, ``training_run_id``, ``step``,
    ``dataset``); empty for a folder no export wrote."""
    uri = join_uri(str(folder), LINEAGE_FILE)
    return read_json(uri) if exists(uri) else {}


def write_folder_lineage(folder: str, record: dict) -> None:
    write_json_atomic(join_uri(str(folder), LINEAGE_FILE), record)


def model_id_of_version(version) -> str | None:
    """The ``LoggedModel`` a registry version points at: its ``model_id``, or the ``models:/<model id>`` source that
    MLflow's SQL registry keeps instead."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source[len("models:/") :] if source.startswith("models:/m-") and "/" not in source[len("models:/") :] else None


def evaluated_model(source, files_id: str, tracking_uri: str) -> tuple[str | None, str]:
    """What an evaluation of ``source`` (a :class:`~avsync_ray.tracking.ModelSource`) scored: its ``LoggedModel`` id
    (None where the store at ``tracking_uri`` has none), and a reference naming the exact model: ``models:/NAME/VERSION``
    for a registry version, ``models:/<model id>`` for a folder an export wrote, else ``<folder>@<files_id>`` (the
    content id of its files)."""
    from mlflow.tracking import MlflowClient

    model_id = source.model_id or read_folder_lineage(source.path).get("model_id")
    if model_id:
        try:
            MlflowClient(tracking_uri).get_logged_model(model_id)
        except MlflowException:
            logger.warning("%s names the LoggedModel %s, which the MLflow store %s lacks: its metrics are logged without it", source.uri, model_id, tracking_uri)
            model_id = None
    if source.version is not None:
        return model_id, f"models:/{source.name}/{source.version}"
    return model_id, f"models:/{model_id}" if model_id else f"{source.uri}@{files_id}"


def curation_runs(client, digest: str) -> list:
    """The runs (of any experiment) whose output dataset has ``digest``, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"dataset.digest = '{digest}' and dataset.context = '{CURATED_CONTEXT}'"
    return client.search_runs(experiments, query, order_by=["attributes.start_time DESC"]) if experiments else []


def model_lineage(client, model_id: str) -> dict:
    """Where a ``LoggedModel`` comes from: its training run and the step it was exported at, the dataset that run
    trained on, and the curation runs that wrote that dataset."""
    model = client.get_logged_model(model_id)
    lineage: dict[str, Any] = {"model_id": model_id, "model_name": model.name, "training_run_id": model.source_run_id,
                               "training_run_name": None, "step": None, "dataset": None, "curation_runs": []}  # fmt: skip
    if not model.source_run_id:
        return lineage
    run = client.get_run(model.source_run_id)
    lineage["training_run_name"] = run.info.run_name
    lineage["step"] = next((out.step for out in (run.outputs.model_outputs if run.outputs else []) if out.model_id == model_id), None)
    dataset = run_dataset(run, TRAINING_CONTEXT)
    if dataset is not None:
        lineage["dataset"] = {"name": dataset.name, "digest": dataset.digest, "source": json.loads(dataset.source).get("uri", dataset.source)}
        lineage["curation_runs"] = [{"run_id": r.info.run_id, "run_name": r.info.run_name} for r in curation_runs(client, dataset.digest)]
    return lineage


# ------------------------------------------------------------------------------------------------ serving

LINEAGE_FIELDS = ("model_id", "model_name", "training_run_id", "training_run_name", "step", "dataset", "curation_runs")


def no_lineage(missing: str | None) -> dict:
    """A served model's lineage with nothing known (yet), saying why (:func:`served_lineage`'s shape)."""
    return {**dict.fromkeys(LINEAGE_FIELDS), "curation_runs": [], "recorded_in": None, "missing": missing}


def _with_gap(lineage: dict) -> dict:
    """``lineage`` with ``missing`` saying which link is absent (None when the model leads to its dataset)."""
    missing = None if lineage["dataset"] else "its training run logged no dataset"
    if not lineage["training_run_id"]:
        missing = "its LoggedModel names no training run"
    return {**lineage, "missing": missing}


def served_lineage(source, tracking_uri: str | None) -> dict:
    """Where a model about to be served (``source``: a :class:`~avsync_ray.tracking.ModelSource`) comes from, in
    :func:`model_lineage`'s fields plus ``recorded_in`` and ``missing`` (why a link is unknown, else None):

    - a registry version: its ``LoggedModel``'s lineage from the store at ``tracking_uri`` (``recorded_in: mlflow``);
    - a folder an export wrote (or a registry version the store cannot answer for): what its ``lineage.json`` records
      (``recorded_in: lineage.json``; no store is asked, so no run names or curation runs);
    - anything else: nothing, and why."""
    failure = None
    if source.model_id and tracking_uri:
        from mlflow.tracking import MlflowClient

        try:
            return _with_gap({**model_lineage(MlflowClient(tracking_uri), source.model_id), "recorded_in": "mlflow"})
        except MlflowException as exc:
            failure = f"the MLflow store at {tracking_uri} has no lineage of {source.model_id}: {exc.message}"
            logger.warning("%s: %s; reading the model folder's %s instead", source.uri, failure, LINEAGE_FILE)
    try:
        record = read_folder_lineage(source.path)
    except (OSError, ValueError) as exc:  # a corrupt lineage.json costs the report, never the model
        return no_lineage(f"its {LINEAGE_FILE} is unreadable: {exc}")
    if record:
        known = {key: record.get(key) for key in ("model_id", "training_run_id", "step")}
        known["dataset"] = {"source": None, **record["dataset"]} if record.get("dataset") else None  # the export recorded no source
        return _with_gap({**no_lineage(None), **known, "recorded_in": LINEAGE_FILE})
    if failure:
        return no_lineage(failure)
    if source.version is not None:
        return no_lineage(f"version {source.version} of {source.name} points at no LoggedModel (not registered by `avsync export --register`)")
    return no_lineage(f"the folder has no {LINEAGE_FILE} (not exported by `avsync export` from a training run that logged to MLflow)")
