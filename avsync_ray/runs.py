"""``avsync runs``: short tables read from an MLflow store through its client. ``models NAME``: every registered
version with its aliases, the training run and step it was exported at, the dataset that run trained on, the
curation run that wrote it, and the evaluation metrics logged against it per test set. ``compare``: evaluation
metrics of models and runs side by side, and a PNG of them with their intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avsync_ray.errors import InputError
from avsync_ray.evaluation.report import LABELS, METRIC_KEYS, OVERALL_COLUMNS, markdown_table, metric_cell
from avsync_ray.lineage import EVALUATION_CONTEXT, model_id_of_version, model_lineage, run_dataset
from avsync_ray.tracking import is_registry_uri, parse_registry_uri


class RunsError(InputError):
    """A model or run the store does not hold, or one without what was asked of it."""


@dataclass
class Evaluation:
    """The metrics one evaluation logged for one model setting on one test set (a column of a comparison)."""

    label: str  # the model or run evaluated
    test_set: str  # its dataset, "name (digest)"
    setting: str  # the sweep setting, "" for the unswept model
    run: str  # the evaluation run's name
    summary: dict[str, float] = field(default_factory=dict)  # fvd, fvd_ci_low, ia, ia_std, ...


def _short(run_id: str | None) -> str:
    return run_id[:8] if run_id else "–"


def _dataset_label(name: str | None, digest: str | None) -> str:
    return f"{name} ({digest})" if digest else "–"


def model_evaluations(client, model_id: str, label: str) -> list[Evaluation]:
    """Every evaluation logged against a ``LoggedModel``: one per evaluation run, test set and setting (metrics
    named ``fvd``, or ``<setting>/fvd`` in a sweep), oldest run first."""
    model = client.get_logged_model(model_id)
    found: dict[tuple, Evaluation] = {}
    runs: dict[str, str] = {}
    for metric in sorted(model.metrics or [], key=lambda m: m.timestamp):
        setting, _, name = metric.key.rpartition("/")
        if name not in METRIC_KEYS:
            continue
        if metric.run_id not in runs:
            runs[metric.run_id] = client.get_run(metric.run_id).info.run_name
        key = (metric.run_id, metric.dataset_digest, setting)
        entry = found.setdefault(key, Evaluation(label, _dataset_label(metric.dataset_name, metric.dataset_digest), setting, runs[metric.run_id]))
        entry.summary[name] = metric.value
    return list(found.values())


def run_evaluations(client, run_id: str) -> list[Evaluation]:
    """An evaluation run's settings (its nested runs, in name order), or the run's own metrics."""
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", order_by=["attributes.run_name ASC"])
    evaluations = []
    for each in children or [run]:
        dataset = run_dataset(each, EVALUATION_CONTEXT)
        summary = {k: v for k, v in each.data.metrics.items() if k in METRIC_KEYS}
        if summary:
            test_set = _dataset_label(dataset.name, dataset.digest) if dataset else "–"
            evaluations.append(Evaluation(run.info.run_name, test_set, each.info.run_name if children else "", run.info.run_name, summary))
    return evaluations


def _resolve(client, reference: str) -> list[Evaluation]:
    """``models:/NAME@alias``, ``models:/NAME/VERSION``, ``models:/<model id>`` or a model id, or a run id."""
    from mlflow.exceptions import MlflowException

    try:
        if is_registry_uri(reference) and not reference.startswith("models:/m-"):
            name, alias, version = parse_registry_uri(reference)
            found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
            model_id = model_id_of_version(found)
            if model_id is None:
                raise RunsError(f"{reference}: version {found.version} points at no LoggedModel (register it with `avsync export --register`)")
            return model_evaluations(client, model_id, f"{name}/{found.version}")
        if reference.removeprefix("models:/").startswith("m-"):
            model_id = reference.removeprefix("models:/")
            return model_evaluations(client, model_id, client.get_logged_model(model_id).name)
        return run_evaluations(client, reference)
    except MlflowException as exc:
        raise RunsError(f"{reference}: not in the MLflow store ({exc.message})") from None


def models_table(client, name: str) -> str:
    """``avsync runs models NAME`` (module docstring) as two Markdown tables."""
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version), reverse=True)
    if not versions:
        raise RunsError(f"no registered model named {name!r} in this MLflow store")
    aliases: dict[str, list[str]] = {}
    for alias, number in client.get_registered_model(name).aliases.items():  # a version found by search lacks its aliases
        aliases.setdefault(str(number), []).append(alias)
    rows, evaluations = [], []
    for version in versions:
        model_id = model_id_of_version(version)
        lineage = model_lineage(client, model_id) if model_id else {}
        dataset = lineage.get("dataset") or {}
        curated = ", ".join(f"{r['run_name']} ({_short(r['run_id'])})" for r in lineage.get("curation_runs", [])) or "–"
        trained = f"{lineage['training_run_name']} ({_short(lineage['training_run_id'])})" if lineage.get("training_run_id") else "–"
        step = "–" if lineage.get("step") is None else str(lineage["step"])
        rows.append([str(version.version), ", ".join(sorted(aliases.get(str(version.version), []))) or "–", model_id or "–", trained, step, _dataset_label(dataset.get("name"), dataset.get("digest")), curated])
        if model_id:
            evaluations += model_evaluations(client, model_id, str(version.version))
    parts = [f"## models:/{name}\n", markdown_table(["version", "aliases", "LoggedModel", "training run", "step", "dataset", "curation run"], rows)]
    parts.append("\n## Evaluations (metrics logged against each version's model, per test set)\n")
    if evaluations:
        header = ["version", "test set", "setting", "run", *(LABELS[m] for m in OVERALL_COLUMNS)]
        table = [[e.label, e.test_set, e.setting or "–", e.run, *(metric_cell(e.summary, m) for m in OVERALL_COLUMNS)] for e in evaluations]
        parts.append(markdown_table(header, table))
    else:
        parts.append("none logged against these versions yet (`avsync eval` of a version or of its exported folder logs them)\n")
    return "\n".join(parts)


def plot_comparison(evaluations: list[Evaluation], metrics: list[str], path: Path) -> None:
    """One panel per metric, one point per evaluation (numbered, named in the legend below), with its interval
    (FID/FVD) or spread (the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(1.0 + 2.2 * len(metrics), 2.8 + 0.22 * len(evaluations)), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for x, entry in enumerate(evaluations):
            value = entry.summary.get(metric)
            if value is None:
                continue
            low, high = entry.summary.get(f"{metric}_ci_low"), entry.summary.get(f"{metric}_ci_high")
            spread = entry.summary.get(f"{metric}_std") or 0.0
            error = [[value - low], [high - value]] if low is not None and high is not None else [[spread], [spread]]
            axis.errorbar([x + 1], [value], yerr=error, marker="o", capsize=3, color=f"C{x % 10}", label=f"{x + 1}: {_column(entry)}")
        axis.set_title(LABELS[metric], fontsize=9)
        axis.set_xticks(range(1, len(evaluations) + 1))
        axis.set_xlim(0.5, len(evaluations) + 0.5)
    handles = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), loc="lower left", fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.22 * len(evaluations) / figure.get_figheight(), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _column(entry: Evaluation) -> str:
    return " · ".join(part for part in (entry.label, entry.setting, entry.test_set.split(" (")[0]) if part)


def compare(client, references: list[str], out: str, test_set: str | None = None) -> str:
    """``avsync runs compare`` (module docstring): a Markdown table (metrics as rows, evaluations numbered as in the
    plot) and the plot at ``out``; ``test_set``: only the evaluations on the test set of that digest."""
    evaluations = [entry for reference in references for entry in _resolve(client, reference)]
    evaluations = [e for e in evaluations if test_set is None or e.test_set.endswith(f"({test_set})")]
    metrics = [m for m in OVERALL_COLUMNS if any(m in e.summary for e in evaluations)]
    if not metrics:
        on = f" on the test set {test_set}" if test_set else ""
        raise RunsError(f"no evaluation metrics logged for {', '.join(references)}{on} (`avsync eval` logs them)")
    header = ["metric", *(f"{number}: {_column(e)}" for number, e in enumerate(evaluations, 1))]
    rows = [[LABELS[m], *(metric_cell(e.summary, m) for e in evaluations)] for m in metrics]
    rows.append(["test set", *(e.test_set for e in evaluations)])
    rows.append(["run", *(e.run for e in evaluations)])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    plot_comparison(evaluations, metrics, Path(out))
    return markdown_table(header, rows) + f"\nplot: {out}"
