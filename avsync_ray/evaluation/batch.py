"""The evaluation jobs on Ray Data (the only evaluation module that imports Ray): each runs the actors of the pure
evaluation modules over test shards with :mod:`avsync_ray.batch_jobs` and logs one MLflow run."""

from __future__ import annotations

import functools
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from avsync_ray import faults
from avsync_ray.batch_jobs import ActorStage, BatchJob, colocated, log_batch_run, shard_sample_rows
from avsync_ray.config.base import save_config
from avsync_ray.config.evaluate import EvalConfig, EvalSyncConfig
from avsync_ray.errors import IncompleteResultError, WorkFailedError
from avsync_ray.evaluation.clips import StoredClips, clip_jobs
from avsync_ray.evaluation.generation import ClipGenerator
from avsync_ray.evaluation.plan import (
    GT,
    claim_setting_folders,
    clip_uri,
    folder_state,
    list_eval_inputs,
    plan_settings,
    real_cache_key,
    setting_record,
)
from avsync_ray.evaluation.report import METRIC_KEYS, report_header, write_report
from avsync_ray.evaluation.scoring import ClipScorer, check_feature_networks
from avsync_ray.evaluation.statistics import SerialRunner, SummaryOptions, summarize_evaluation
from avsync_ray.evaluation.sync_eval import SyncEvaluator, eval_spec, summarize
from avsync_ray.metrics.protocol import fid_batch_statistics
from avsync_ray.metrics.video_metrics import LABELS
from avsync_ray.models.feature_networks import FID_FEATURE_DIM, FVD_FEATURE_DIM
from avsync_ray.nested import content_id
from avsync_ray.pipelines.loading import check_pipeline_folder
from avsync_ray.pipelines.sampling import with_model_size
from avsync_ray.shards import read_index, shard_urls
from avsync_ray.storage import filesystem, join_uri, write_json_atomic
from avsync_ray.tracking import resolve_model


def run_eval_sync(config: EvalSyncConfig, out: str | None = None) -> dict:
    """Score every clip of the test shards; returns (and logs to MLflow, writes to ``out``) the summary."""
    index = read_index(config.data.root, config.data.split)
    job = BatchJob(
        items=[{"url": url} for url in shard_urls(config.data.root, config.data.split, index)],
        expand=shard_sample_rows,
        stages=[ActorStage(SyncEvaluator, {"classifier": config.classifier, "actor": config.actor, "spec": eval_spec(config),
                                           "tolerance": config.tolerance}, config.actor, config.batch_size)],  # fmt: skip
        ray_config=config.ray,
        size=index["nsamples"],
    )
    results = sorted(job.run(), key=lambda row: row["key"])
    summary = {"classifier": config.classifier, "shards": config.data.root, "split": config.data.split, **summarize(results)}
    summary["protocol"] = {"num_clips": config.num_clips, "shift_s": config.shift_s, "tolerance": config.tolerance}
    summary["mlflow_run_id"] = log_batch_run(
        config.tracking,
        "eval-sync",
        params={"classifier": config.classifier, "shards": config.data.root, "split": config.data.split, **summary["protocol"]},
        metrics={k: summary[k] for k in ("a2v_accuracy", "v2a_accuracy", "clips", "skipped")},
        texts={"eval_sync_per_clip.json": json.dumps(results, indent=1)},
    )
    if out:
        write_json_atomic(out, {**summary, "per_clip": results})
    return summary


# ------------------------------------------------------------------------------------------------ avsync eval


class RayRunner:
    """Runs the summary's steps (:mod:`avsync_ray.evaluation.statistics`) as Ray tasks of one CPU each: a step's
    inputs and outputs stay in the object store, and a failed step raises its own error on ``get``."""

    def __init__(self):
        self._remote: dict = {}

    def submit(self, fn, *args, num_returns: int = 1):
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1)(fn)
        return self._remote[fn].options(num_returns=num_returns).remote(*args)

    def get(self, handle):
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None


def _numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", text)


def _failure_text(failed: list[dict], what: str) -> str:
    """``all N <what> failed (counts by reason; an example)``."""
    if not failed:
        return f"none of the {what} was made"
    reasons = Counter(f["reason"].split(":", 1)[0] for f in failed)
    return f"all {len(failed)} {what} failed ({', '.join(f'{n} {r}' for r, n in reasons.most_common())}; e.g. {failed[0]['reason'][:200]})"


def run_eval(config: EvalConfig) -> dict:
    """Generate every test clip in every setting (resuming: clips and features on storage are kept), score real
    and generated clips into their feature files, summarise them (as Ray tasks), write the per-clip table and the
    report to ``config.output`` and log the MLflow runs; returns a summary.

    A metric that cannot be computed does not stop the run: everything is written and logged, then
    :class:`~avsync_ray.errors.IncompleteResultError` (carrying the summary) says which; a rerun only recomputes
    the summary. A run where no generated clip could be scored raises :class:`~avsync_ray.errors.WorkFailedError`
    after writing the per-clip table, without an MLflow run."""
    started = time.perf_counter()
    checksums = check_feature_networks(config.features, config.metrics)  # before any work: a bad file names its field
    source = resolve_model(config.model, config.tracking.uri)
    check_pipeline_folder(source.path)
    config = config.model_copy(update={"sampling": with_model_size(config.sampling, source.path)})
    items, test_set = list_eval_inputs(config)
    test_dataset = _test_dataset(config, items)
    settings = plan_settings(config)
    identity = _model_identity(source)
    claim_setting_folders(config.output, [setting_record(s, config, identity, test_set) for s in settings])
    save_config(config, join_uri(config.output, "eval.config.yaml"))
    real_folder = join_uri(config.cache, real_cache_key(config, test_set, checksums))
    folders = {s.name: join_uri(config.output, "generated", s.name) for s in settings}
    before = {name: folder_state(uri) for name, uri in folders.items()}
    real_before = folder_state(real_folder)
    stored = StoredClips(frozenset(real_before.features), {n: frozenset(b.videos) for n, b in before.items()},
                         {n: frozenset(b.videos & set(b.features)) for n, b in before.items()})  # fmt: skip

    generator = ActorStage(
        ClipGenerator,
        {"model": config.model, "tracking_uri": config.tracking.uri, "actor": config.generate_actor, "batch_size": config.generate_batch_size,
         "settings": {s.name: {"kind": s.kind, "sampling": s.sampling.model_dump()} for s in settings}, "output_paths": folders,
         "slow_clip_s": (faults.plan_from_env() or faults.FaultPlan()).slow_clip_s},
        config.generate_actor, config.generate_batch_size, "generate_actor",
    )  # fmt: skip
    # Colocated, the scorer runs in the generating actor, on its device, with the feature networks' own dtype.
    scoring_actor = config.generate_actor.model_copy(update={"dtype": config.feature_actor.dtype}) if config.colocate else config.feature_actor
    scorer = ActorStage(
        ClipScorer,
        {"features": config.features.model_dump(), "metrics": config.metrics, "protocol": config.protocol, "actor": scoring_actor,
         "num_frames": config.sampling.num_frames, "fps": config.sampling.fps, "real_folder": real_folder},
        config.feature_actor, config.feature_batch_size, "feature_actor",
    )  # fmt: skip
    stages = [colocated([generator, scorer], config.generate_actor, config.generate_batch_size, "generate_actor")] if config.colocate else [generator, scorer]
    videos = sum(item.take if item.shard else 1 for item in items)
    job = BatchJob(
        items=[item.to_row() for item in items],
        expand=functools.partial(clip_jobs, config=config.model_dump(mode="json"), seeds={s.name: s.sampling.seed for s in settings}, stored=stored),
        stages=stages,
        ray_config=config.ray,
        size=videos * config.clips_per_video * len(settings),
    )  # fmt: skip
    rows = job.run()

    skipped_videos = {r["video"]: r["error"] for r in rows if r["variant"] == GT and r["error"]}
    failed = sorted(({"key": r["key"], "variant": r["variant"], "reason": r["error"], "video": r["video"], "clip": int(r["clip"]),
                      "start": float(r["start"]), "category": r["category"]} for r in rows if r["error"] and r["variant"] != GT),
                    key=lambda f: (f["variant"], f["key"]))  # fmt: skip
    real_state = folder_state(real_folder)  # listed afresh: the actors wrote there
    if not real_state.features:
        reasons = sorted(set(skipped_videos.values()))[:3]
        raise WorkFailedError(f"eval: no test clip could be evaluated: {len(skipped_videos)} test videos skipped ({'; '.join(reasons)})")
    after = {name: folder_state(uri) for name, uri in folders.items()}
    scored = {name: sorted(k for k in state.features if k in state.videos) for name, state in after.items()}
    failed_by_setting = {name: [f for f in failed if f["variant"] == name] for name in folders}
    options = SummaryOptions(config.metrics, config.frechet, config.bootstrap.samples, config.bootstrap.confidence, config.bootstrap.seed,
                             config.bootstrap.min_videos)  # fmt: skip
    no_clips = {name: _failure_text(f, "of its clips") for name, f in failed_by_setting.items() if f and not scored[name]}

    provenance = {"protocol": config.protocol, "fid_batchnorm": "batch statistics" if fid_batch_statistics(config.protocol) else "running statistics",
                  "frechet": config.frechet, "networks": checksums, "test_set": test_set, "model": identity, "clips": len(real_state.features),
                  "videos": len({k.rsplit("_clip-", 1)[0] for k in real_state.features}), "skipped_videos": len(skipped_videos),
                  "failed_clips": len(failed)}  # fmt: skip
    if not any(scored.values()):  # nothing to summarise: say why, keep the per-clip reasons, log nothing
        _write_outputs(config, _per_clip_table({}, failed, settings, folders), {"provenance": provenance, "skipped_videos": skipped_videos,
                                                                                  "failed_clips": failed}, None)  # fmt: skip
        raise WorkFailedError(f"eval: no generated clip could be scored: {_failure_text(failed, 'generated clips')}; per-clip reasons in "
                              f"{join_uri(config.output, 'per_clip.parquet')}")  # fmt: skip

    setting_uris = {name: [after[name].features[k] for k in keys] for name, keys in scored.items()}
    runner = SerialRunner() if job.in_process else RayRunner()
    summary = summarize_evaluation(list(real_state.features.values()), setting_uris, options, runner, no_clips)
    entries = [{"name": s.name, "kind": s.kind, "swept": s.swept, "summary": summary.settings[s.name]} for s in settings]
    entries.append({"name": GT, "kind": GT, "swept": {}, "summary": summary.gt})
    header = report_header(config, source.version, provenance, summary, FID_FEATURE_DIM, FVD_FEATURE_DIM)
    report = {"entries": entries, "by_category": summary.categories, "sweep": list(config.sweep), "header": header}
    parent_id, child_ids = _write_outputs(
        config, _per_clip_table(summary.per_clip, failed, settings, folders),
        {"entries": entries, "provenance": provenance, "skipped_videos": skipped_videos, "failed_clips": failed}, report,
        lambda local: log_eval_runs(config, source, entries, summary.categories, provenance, local, test_dataset) if config.tracking.enabled else (None, []),
    )  # fmt: skip
    result = {
        "output": config.output,
        "report": join_uri(config.output, "report", "report.md"),
        "per_clip": join_uri(config.output, "per_clip.parquet"),
        "settings": [e["name"] for e in entries],
        "test_set": {"name": test_dataset.name, "digest": test_dataset.digest},
        "metrics": {e["name"]: {k: e["summary"].get(k) for k in ("fid", "fvd", "ia", "it", "relsync", "alignsync")} for e in entries},
        "undefined": {e["name"]: e["summary"]["undefined"] for e in entries if e["summary"]["undefined"]},
        "clips": len(real_state.features),
        "skipped_videos": len(skipped_videos),
        "failed_clips": len(failed),
        "generated": {name: len(after[name].videos - before[name].videos) for name in folders},
        "reused": {name: len(before[name].videos) for name in folders},
        "real_features_cached": set(real_state.features) == set(real_before.features),
        "mlflow_run_id": parent_id,
        "mlflow_child_run_ids": child_ids,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if undefined := summary.undefined():
        which = "; ".join(f"{name}: {', '.join(LABELS[m] for m in metrics)}" for name, metrics in undefined.items())
        example = next(iter(next(iter(undefined.values())).values()))
        raise IncompleteResultError(f"eval: undefined metrics ({which}), e.g. {example}; everything else is written to {config.output} "
                                    "(every reason in report/report.md)", result)  # fmt: skip
    return result


def _write_outputs(config: EvalConfig, per_clip: list[dict], summary_json: dict, report: dict | None, log=None) -> tuple[str | None, list[str]]:
    """The per-clip table, ``report/summary.json`` and (given ``report``) the report files into ``config.output``;
    then ``log(local report folder)`` (the MLflow runs), whose result is returned."""
    with tempfile.TemporaryDirectory(prefix="avsync-eval-") as folder:
        local = Path(folder)
        (local / "report").mkdir()
        if report is not None:
            write_report(local / "report", report["entries"], report["by_category"], report["sweep"], report["header"])
        pq.write_table(pa.Table.from_pylist(per_clip, schema=PER_CLIP_SCHEMA), local / "per_clip.parquet")
        (local / "report" / "summary.json").write_text(json.dumps(summary_json, indent=1, default=str))
        fs, path = filesystem(config.output)
        fs.makedirs(f"{path.rstrip('/')}/report", exist_ok=True)
        for file in [*(local / "report").iterdir(), local / "per_clip.parquet"]:
            fs.put_file(str(file), f"{path.rstrip('/')}/{file.relative_to(local)}")
        return log(str(local)) if log is not None else (None, [])


PER_CLIP_SCHEMA = pa.schema([("key", pa.string()), ("video", pa.string()), ("clip", pa.int64()), ("start", pa.float64()), ("category", pa.string()),
                             ("variant", pa.string()), ("setting", pa.string()), ("path", pa.string()), ("sync_score", pa.float64()),
                             ("ia", pa.float64()), ("it", pa.float64()), ("relsync", pa.float64()), ("alignsync", pa.float64()),
                             ("error", pa.string())])  # fmt: skip


def _per_clip_table(per_clip: dict[str, list[dict]], failed: list[dict], settings, folders: dict[str, str]) -> list[dict]:
    """One row per clip and setting (and per real clip): its scores, or the reason it has none."""
    swept = {s.name: json.dumps(s.swept) for s in settings}
    table = []
    for name, clips in per_clip.items():
        for clip in clips:
            path = clip_uri(folders[name], clip["key"]) if name in folders else ""
            table.append({**{k: clip[k] for k in ("key", "video", "clip", "start", "category", "sync_score", "ia", "it", "relsync", "alignsync")},
                          "variant": name, "setting": swept.get(name, "{}"), "path": path, "error": ""})  # fmt: skip
    for f in failed:
        table.append({"key": f["key"], "video": f["video"], "clip": f["clip"], "start": f["start"], "category": f["category"], "variant": f["variant"],
                      "setting": swept[f["variant"]], "path": clip_uri(folders[f["variant"]], f["key"]), "sync_score": None, "ia": None, "it": None,
                      "relsync": None, "alignsync": None, "error": f["reason"]})  # fmt: skip
    return sorted(table, key=lambda r: (r["variant"], r["key"]))


def _test_dataset(config: EvalConfig, items: list):
    """The test set as an MLflow dataset: the shards (the first ``max_videos`` of them) or the raw videos listed."""
    from avsync_ray.lineage import corpus_dataset, shard_dataset

    if items[0].shard:
        return shard_dataset(config.test, config.test_split, take=sum(item.take for item in items))
    return corpus_dataset(config.test, [(item.uri, item.key, item.label) for item in items])


def log_eval_runs(config: EvalConfig, source, entries, by_category, provenance, local: str, test_dataset) -> tuple[str, list[str]]:
    """The evaluation's MLflow runs: a parent (with the report folder `local` as artifacts) and one nested run per setting,
    baseline and GT row, each with the test set as its dataset; the model's own settings are logged against its
    LoggedModel (see :func:`avsync_ray.tracking.log_parent_with_children`). Returns the parent's and children's ids."""
    from avsync_ray.lineage import evaluated_model
    from avsync_ray.tracking import ChildRun, log_parent_with_children

    model_id, model_ref = evaluated_model(source, provenance["model"]["files"], config.tracking.uri)
    common = {"model": config.model, "model_version": source.version, "model_ref": model_ref, "model_id": model_id or "", "protocol": config.protocol,
              "fid_batchnorm": provenance["fid_batchnorm"],
              "frechet": config.frechet, "test": str(config.test), "test_set": provenance["test_set"], "clips": provenance["clips"],
              "networks": provenance["networks"]}  # fmt: skip
    sampling = {s.name: s.sampling.model_dump(mode="json") for s in plan_settings(config)}
    children = []
    for entry in entries:
        metrics = _numbers({k: v for k, v in entry["summary"].items() if k not in ("undefined", "notes")})
        for category, summary in by_category.get(entry["name"], {}).items():
            metrics.update(_numbers({k: summary.get(k) for k in ("fid", "fvd", "ia", "it", "relsync", "alignsync")}, f"{_metric_name(category)}/"))
        params = {**common, "variant": entry["kind"], "setting": entry["name"], **entry["swept"]}
        if entry["kind"] != GT:
            params["sampling"] = sampling[entry["name"]]
        tags = {"avsync.variant": entry["kind"], "avsync.setting": entry["name"],
                **{f"avsync.undefined.{metric}": reason[:4000] for metric, reason in entry["summary"]["undefined"].items()}}  # fmt: skip
        children.append(ChildRun(entry["name"], params, metrics, tags))
    # The model's own settings, against the model and the test set: plain names, or <setting>/<metric> in a sweep.
    settings = [e for e in entries if e["kind"] == "model"]
    model_metrics = {f"{e['name']}/{k}" if len(settings) > 1 else k: v for e in settings for k, v in _numbers(e["summary"]).items() if k in METRIC_KEYS}
    parent_params = {**common, "sweep": json.dumps(config.sweep), "baselines": json.dumps(config.baselines), "output": config.output}
    return log_parent_with_children(config.tracking, "eval", parent_params, {"clips": provenance["clips"], "skipped_videos": provenance["skipped_videos"]},
                                    children, local, test_dataset, model_id, model_metrics)  # fmt: skip


def _model_identity(source) -> dict:
    folder = Path(source.path)
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return {"uri": source.uri, "version": source.version, "files": content_id(files)}
