"""The evaluation jobs on Ray Data (the only evaluation module that imports Ray): each runs the actors of the pure
evaluation modules over test shards with :mod:`avsync_ray.batch_jobs` and logs one MLflow run."""

from __future__ import annotations

import functools
import io
import json
import re
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from avsync_ray.batch_jobs import ActorStage, BatchJob, log_batch_run, shard_sample_rows
from avsync_ray.config.base import save_config
from avsync_ray.config.evaluate import EvalConfig, EvalSyncConfig
from avsync_ray.config.sampling import InputLimits
from avsync_ray.evaluation.clips import eval_clip_rows, from_bytes
from avsync_ray.evaluation.generation import ClipGenerator, generation_row
from avsync_ray.evaluation.plan import GT, claim_setting_folders, list_eval_inputs, plan_settings, real_cache_key, setting_record
from avsync_ray.evaluation.report import METRIC_KEYS, write_report
from avsync_ray.evaluation.scoring import ClipScorer, check_feature_networks
from avsync_ray.evaluation.sync_eval import SyncEvaluator, eval_spec, summarize
from avsync_ray.metrics.protocol import clip_seed
from avsync_ray.metrics.video_metrics import ClipFeatures, clip_scores, gt_scores, summarize as summarize_clips
from avsync_ray.nested import content_id
from avsync_ray.pipelines.loading import check_pipeline_folder
from avsync_ray.pipelines.sampling import with_model_size
from avsync_ray.shards import shard_urls
from avsync_ray.storage import exists, filesystem, join_uri, list_files, write_bytes_atomic, write_json_atomic
from avsync_ray.tracking import resolve_model


def run_eval_sync(config: EvalSyncConfig, out: str | None = None) -> dict:
    """Score every clip of the test shards; returns (and logs to MLflow, writes to ``out``) the summary."""
    job = BatchJob(
        items=[{"url": url} for url in shard_urls(config.data.root, config.data.split)],
        expand=shard_sample_rows,
        stages=[ActorStage(SyncEvaluator, {"classifier": config.classifier, "actor": config.actor, "spec": eval_spec(config),
                                           "tolerance": config.tolerance}, config.actor, config.batch_size)],  # fmt: skip
        ray_config=config.ray,
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


def _clip_jobs(item: dict, config: dict, seeds: dict[str, int], with_gt: bool) -> list[dict]:
    """``expand`` of the eval job: an input item -> its GT clip rows (when their features are not cached) and
    one generation row per clip and setting (``seeds``: setting -> its base seed)."""
    sampling = config["sampling"]
    rows = eval_clip_rows(item, sampling["num_frames"], sampling["fps"], (sampling["height"], sampling["width"]), config["clips_per_video"],
                          InputLimits.model_validate(config["limits"]))  # fmt: skip
    jobs = []
    for gt in rows:
        if gt["error"] or with_gt:
            jobs.append(gt)
        if gt["error"]:
            continue
        for name, base in seeds.items():
            seed = base if config["clip_seeds"] == "shared" else clip_seed(base, gt["video"], gt["clip"])
            jobs.append(generation_row(gt, name, seed))
    return jobs


def _features(row: dict) -> ClipFeatures:
    def array(name):
        return from_bytes(row[name]) if row[name] else None

    sync = row["sync"]
    return ClipFeatures(row["key"], row["video"], row["category"], array("fid"), array("fvd"), array("ia"), array("it"),
                        None if sync is None or sync != sync else float(sync))  # fmt: skip


REAL_TABLE = "real.parquet"


def _read_real_cache(uri: str) -> dict[str, ClipFeatures] | None:
    if not exists(uri):
        return None
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as handle:
        rows = pq.read_table(handle).to_pylist()
    return {row["key"]: _features(row) for row in rows}


def _write_real_cache(uri: str, rows: list[dict]) -> None:
    columns = ("key", "video", "category", "fid", "fvd", "ia", "it", "sync")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{c: row[c] for c in columns} for row in rows]), buffer)
    write_bytes_atomic(uri, buffer.getvalue())


def _model_identity(source) -> dict:
    folder = Path(source.path)
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return {"uri": source.uri, "version": source.version, "files": content_id(files)}


def _numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", text)


def run_eval(config: EvalConfig) -> dict:
    """Generate every test clip in every setting (resuming: existing clips are kept), score real and generated
    clips, write the per-clip table and the report to ``config.output`` and log the MLflow runs; returns a summary."""
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
    cache_uri = join_uri(config.cache, real_cache_key(config, test_set, checksums), REAL_TABLE)
    cached_real = _read_real_cache(cache_uri)
    folders = {s.name: join_uri(config.output, "generated", s.name) for s in settings}
    existing = {name: len(list_files(uri, ".mp4")) for name, uri in folders.items()}

    generator = ActorStage(
        ClipGenerator,
        {"model": config.model, "tracking_uri": config.tracking.uri, "actor": config.generate_actor, "batch_size": config.generate_batch_size,
         "settings": {s.name: {"kind": s.kind, "sampling": s.sampling.model_dump()} for s in settings}, "output_paths": folders},
        config.generate_actor, config.generate_batch_size, "generate_actor",
    )  # fmt: skip
    scorer = ActorStage(
        ClipScorer,
        {"features": config.features.model_dump(), "metrics": config.metrics, "protocol": config.protocol, "actor": config.feature_actor,
         "num_frames": config.sampling.num_frames, "fps": config.sampling.fps},
        config.feature_actor, config.feature_batch_size, "feature_actor",
    )  # fmt: skip
    job = BatchJob(
        items=[item.to_row() for item in items],
        expand=functools.partial(_clip_jobs, config=config.model_dump(mode="json"), seeds={s.name: s.sampling.seed for s in settings},
                                 with_gt=cached_real is None),
        stages=[generator, scorer],
        ray_config=config.ray,
    )  # fmt: skip
    rows = sorted(job.run(), key=lambda r: (r["variant"], r["key"]))

    skipped_videos = {r["video"]: r["error"] for r in rows if r["variant"] == GT and r["clip"] < 0}
    failed = [{"key": r["key"], "variant": r["variant"], "reason": r["error"]} for r in rows if r["error"] and r["clip"] >= 0]
    real_rows = [r for r in rows if r["variant"] == GT and not r["error"]]
    real = cached_real if cached_real is not None else {r["key"]: _features(r) for r in real_rows}
    if cached_real is None and real_rows:
        _write_real_cache(cache_uri, real_rows)
    by_variant: dict[str, list[ClipFeatures]] = {s.name: [] for s in settings}
    for r in rows:
        if r["variant"] != GT and not r["error"] and r["key"] in real:
            by_variant[r["variant"]].append(_features(r))
    if not real:
        raise RuntimeError(f"no test clip could be evaluated: {len(skipped_videos)} videos skipped ({sorted(set(skipped_videos.values()))[:3]})")

    stats = dict(frechet=config.frechet, bootstrap_samples=config.bootstrap.samples, confidence=config.bootstrap.confidence, seed=config.bootstrap.seed)
    entries, by_category = [], {}
    for setting in settings:
        clips = by_variant[setting.name]
        summary = summarize_clips(clips, real, **stats)
        categories = {c: summarize_clips([x for x in clips if x.category == c], real, frechet=config.frechet) for c in sorted({x.category for x in clips})}
        entries.append({"name": setting.name, "kind": setting.kind, "swept": setting.swept, "summary": summary})
        by_category[setting.name] = categories
    real_clips = sorted(real.values(), key=lambda c: c.key)
    gt_summary = summarize_clips(real_clips, real, is_real=True)
    entries.append({"name": GT, "kind": GT, "swept": {}, "summary": gt_summary})

    per_clip = _per_clip_table(rows, real, settings)
    provenance = {"protocol": config.protocol, "frechet": config.frechet, "networks": checksums, "test_set": test_set,
                  "model": identity, "clips": len(real), "videos": len({c.video for c in real.values()}),
                  "skipped_videos": len(skipped_videos), "failed_clips": len(failed)}  # fmt: skip
    header = (
        f"# avsync eval\n\nModel `{config.model}` (version {source.version}), test set `{config.test}` ({provenance['videos']} videos, "
        f"{provenance['clips']} clips; {len(skipped_videos)} videos skipped, {len(failed)} clips failed), protocol `{config.protocol}`, "
        f"Fréchet `{config.frechet}`, networks {json.dumps(checksums)}. IA, IT, AlignSync and RelSync are x100 (mean ± std over clips); "
        f"FID and FVD carry a {config.bootstrap.confidence:.0%} bootstrap interval over test videos ({config.bootstrap.samples} replicates).\n"
    )
    with tempfile.TemporaryDirectory(prefix="avsync-eval-") as folder:
        local = Path(folder)
        write_report(local / "report", entries, by_category, list(config.sweep), header)
        pq.write_table(pa.Table.from_pylist(per_clip), local / "per_clip.parquet")
        (local / "report" / "summary.json").write_text(json.dumps({"entries": entries, "provenance": provenance, "skipped_videos": skipped_videos,
                                                                   "failed_clips": failed}, indent=1, default=str))  # fmt: skip
        fs, path = filesystem(config.output)
        fs.makedirs(f"{path.rstrip('/')}/report", exist_ok=True)
        for file in [*(local / "report").iterdir(), local / "per_clip.parquet"]:
            fs.put_file(str(file), f"{path.rstrip('/')}/{file.relative_to(local)}")
        parent_id, child_ids = None, []
        if config.tracking.enabled:
            parent_id, child_ids = log_eval_runs(config, source, entries, by_category, provenance, local, test_dataset)
    return {
        "output": config.output,
        "report": join_uri(config.output, "report", "report.md"),
        "per_clip": join_uri(config.output, "per_clip.parquet"),
        "settings": [e["name"] for e in entries],
        "test_set": {"name": test_dataset.name, "digest": test_dataset.digest},
        "metrics": {e["name"]: {k: e["summary"].get(k) for k in ("fid", "fvd", "ia", "it", "relsync", "alignsync")} for e in entries},
        "clips": len(real),
        "skipped_videos": len(skipped_videos),
        "failed_clips": len(failed),
        "generated": {name: len(by_variant[name]) + sum(f["variant"] == name for f in failed) - existing[name] for name in folders},
        "reused": existing,
        "real_features_cached": cached_real is not None,
        "mlflow_run_id": parent_id,
        "mlflow_child_run_ids": child_ids,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _per_clip_table(rows: list[dict], real: dict[str, ClipFeatures], settings) -> list[dict]:
    swept = {s.name: s.swept for s in settings}
    table = []
    for r in rows:
        if r["clip"] < 0:
            continue
        scores = {"ia": None, "it": None, "relsync": None, "alignsync": None}
        if not r["error"] and r["key"] in real:
            features = _features(r)
            scores = gt_scores(features) if r["variant"] == GT else clip_scores(features, real[r["key"]])
        table.append({"key": r["key"], "video": r["video"], "clip": int(r["clip"]), "start": float(r["start"]), "category": r["category"],
                      "variant": r["variant"], "setting": json.dumps(swept.get(r["variant"], {})), "path": r["path"],
                      "sync_score": None if r["sync"] != r["sync"] else float(r["sync"]), **scores, "error": r["error"]})  # fmt: skip
    return table


def _test_dataset(config: EvalConfig, items: list):
    """The test set as an MLflow dataset: the shards (the first ``max_videos`` of them) or the raw videos listed."""
    from avsync_ray.lineage import corpus_dataset, shard_dataset

    if items[0].shard:
        return shard_dataset(config.test, config.test_split, take=sum(item.take for item in items))
    return corpus_dataset(config.test, [(item.uri, item.key, item.label) for item in items])


def log_eval_runs(config: EvalConfig, source, entries, by_category, provenance, local: Path, test_dataset) -> tuple[str, list[str]]:
    """The evaluation's MLflow runs: a parent (with the report folder `local` as artifacts) and one nested run per setting,
    baseline and GT row, each with the test set as its dataset; the model's own settings are logged against its
    LoggedModel (see :func:`avsync_ray.tracking.log_parent_with_children`). Returns the parent's and children's ids."""
    from avsync_ray.lineage import evaluated_model
    from avsync_ray.tracking import ChildRun, log_parent_with_children

    model_id, model_ref = evaluated_model(source, provenance["model"]["files"], config.tracking.uri)
    common = {"model": config.model, "model_version": source.version, "model_ref": model_ref, "model_id": model_id or "", "protocol": config.protocol,
              "frechet": config.frechet, "test": str(config.test), "test_set": provenance["test_set"], "clips": provenance["clips"],
              "networks": provenance["networks"]}  # fmt: skip
    children = []
    for entry in entries:
        metrics = _numbers(entry["summary"])
        for category, summary in by_category.get(entry["name"], {}).items():
            metrics.update(_numbers({k: summary.get(k) for k in ("fid", "fvd", "ia", "it", "relsync", "alignsync")}, f"{_metric_name(category)}/"))
        params = {**common, "variant": entry["kind"], "setting": entry["name"], **entry["swept"]}
        if entry["kind"] != GT:
            params["sampling"] = next(s.sampling.model_dump(mode="json") for s in plan_settings(config) if s.name == entry["name"])
        children.append(ChildRun(entry["name"], params, metrics, {"avsync.variant": entry["kind"], "avsync.setting": entry["name"]}))
    # The model's own settings, against the model and the test set: plain names, or <setting>/<metric> in a sweep.
    settings = [e for e in entries if e["kind"] == "model"]
    model_metrics = {f"{e['name']}/{k}" if len(settings) > 1 else k: v for e in settings for k, v in _numbers(e["summary"]).items() if k in METRIC_KEYS}
    parent_params = {**common, "sweep": json.dumps(config.sweep), "baselines": json.dumps(config.baselines), "output": config.output}
    return log_parent_with_children(config.tracking, "eval", parent_params, {"clips": provenance["clips"], "skipped_videos": provenance["skipped_videos"]},
                                    children, str(local), test_dataset, model_id, model_metrics)  # fmt: skip
