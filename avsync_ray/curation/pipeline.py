"""``avsync curate`` on Ray Data: the only curation module that imports Ray.

    scoring:  sources -> scan (CPU task: shots, windows, cheap scores; yields the windows chunk by chunk)
                      -> embedding scorer (actor pool: semantic difference, ImageBind IA/IT)
                      -> sync scorer (actor pool: P_sync)
                      -> record (CPU task: the chunk's scores, stored)
    clips:    scanned sources -> materialize (CPU task: thresholds, merge, encode clips; bundle + scores + ledger)
    then: score table, ledger table, shards (Ray tasks), index, stats, report, MLflow run.

A task holds one chunk of a video's windows (10 s of window starts, with the frames and audio they sample) or
the clip being encoded (with the encoded bytes of the video's clips until its bundle is written), never a whole
video's frames, so hour-long sources curate in bounded memory. Each video is one
block of the scan, so retries, progress and resume are per video. A video with a ledger entry is done (clips
staged, zero survivors, or failed with a reason) and is skipped by a rerun; a video whose scan and chunks are
stored goes straight to its clips. The shards are then rebuilt from the staged bundles in a fixed order, so an
interrupted and an uninterrupted run end with the same bytes, on any number of nodes.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import ray
from ray.util.annotations import RayDeprecationWarning

from avsync_ray import faults
from avsync_ray.batch_jobs import actor_placement
from avsync_ray.config.base import ConfigError, dump_config, load_config, save_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import report as report_module
from avsync_ray.curation.scorers import EmbeddingScorer, SyncScorer
from avsync_ray.curation.stages import (
    LEDGER_SCHEMA,
    WORK,
    chunk_name,
    curation_id,
    materialize_video,
    record_chunk,
    record_video,
    rematerialize_video,
    scan_video,
    scoring_id,
    setting_differences,
    write_parquet,
)
from avsync_ray.errors import InputError
from avsync_ray.ray_runtime import ResourceRequest, actor_request, init_ray, require_resources
from avsync_ray.shards import SCORE_TABLE_SCHEMA, plan_bundles, shard_stats, write_bundled_shard, write_index
from avsync_ray.sources import list_inputs
from avsync_ray.storage import exists, filesystem, join_uri, list_files, uri_prefix, write_json_atomic
from avsync_ray.tracking import log_curation_run

logger = logging.getLogger(__name__)
# A task killed by a crash (a worker process dying) is retried this many times before the video is recorded
# as failed with reason 'worker_crashed'.
TASK_RETRIES = 3


def _map_task(ds: ray.data.Dataset, fn, flat: bool = False, **fn_kwargs) -> ray.data.Dataset:
    """A per-video (or, ``flat``, one video to many rows) CPU task with bounded retries. Ray Data retries crashed
    tasks forever by default, so a video that always kills its worker would hang the run. Ray 2.60 deprecates
    ``max_retries`` as a remote arg without a named replacement yet; the warning is silenced here on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RayDeprecationWarning)
        return (ds.flat_map if flat else ds.map)(fn, fn_kwargs=fn_kwargs, num_cpus=1, max_retries=TASK_RETRIES)


CONFIG_NAME = "curate.config.yaml"  # the resolved config of the output's latest run


class CurationError(InputError):
    """The output folder cannot continue this run (it holds videos curated with other settings)."""


def _json_records(folder: str) -> dict[str, dict]:
    """Every ``<name>.json`` in ``folder``, by name (read concurrently: object stores serve many small files in
    parallel)."""
    import json

    uris = list_files(folder, ".json")
    if not uris:
        return {}
    fs, _ = filesystem(uris[0])
    paths = [filesystem(uri)[1] for uri in uris]
    contents = fs.cat(paths)
    return {uri.rsplit("/", 1)[-1][: -len(".json")]: json.loads(contents[path]) for uri, path in zip(uris, paths)}


def _ledger_entries(output: str) -> dict[str, dict]:
    """Every recorded video, by source id (its ledger entry's file name)."""
    return _json_records(join_uri(output, WORK, "ledger"))


def _check_resumable(entries: dict[str, dict], config: CurateConfig, rethreshold: bool) -> None:
    """An output with recorded videos continues only with the settings that made them: the scores' (checked per
    video) and every other setting that changes a shard's bytes (against the output's saved config)."""
    if not entries:
        return
    saved_uri = join_uri(config.output, CONFIG_NAME)
    differences = []
    if exists(saved_uri):
        try:
            differences = setting_differences(load_config(CurateConfig, path=saved_uri), config, rethreshold)
        except ConfigError:  # written by another version of this package: the per-video scoring ids still decide
            logger.warning("%s does not validate with this version; checking the scoring settings only", saved_uri)
    other = {e["scoring_id"] for e in entries.values()} - {scoring_id(config)}
    if other and not differences:
        differences = [f"the scoring settings (shots, windows or models; ids {sorted(other)}, this run {scoring_id(config)})"]
    if differences:
        hint = "" if rethreshold else ", or --rethreshold to change only thresholds"
        raise CurationError(
            f"{config.output} holds {len(entries)} videos curated with other settings ({'; '.join(differences)}); "
            f"use those settings again, another output folder{hint}"
        )


def _check_output(output: str) -> None:
    """The output must be a folder this process can write (checked before any video is read)."""
    fs, path = filesystem(output)
    if fs.isfile(path):
        raise InputError(f"output {output} is a file; give a folder (new or from an earlier run)")
    if not uri_prefix(fs):
        existing = next(p for p in [path, *map(str, Path(path).parents)] if os.path.exists(p))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"output {output}: {existing} is not writable")


def _actor_requests(config: CurateConfig) -> list[ResourceRequest]:
    """The actor pools of the model stages :func:`_scoring` runs, for the resource check at start."""
    stages = config.filters
    pools = {"imagebind_actor": stages.semantic.enabled or stages.imagebind.enabled, "sync_actor": stages.sync.enabled}
    return [actor_request(name, getattr(config, name)) for name, used in pools.items() if used]


def _scoring(ds: ray.data.Dataset, config: CurateConfig) -> ray.data.Dataset:
    """The scoring graph on a dataset of sources (one video per block); its rows are the recorded chunks."""
    plan = faults.plan_from_env()
    scan = faults.video_task_with_faults(scan_video, plan, join_uri(config.output, WORK)) if plan else scan_video
    ds = _map_task(ds, scan, flat=True, config=config)
    stages, length = config.filters, config.windows.length_s
    if stages.semantic.enabled or stages.imagebind.enabled:
        kwargs = {"semantic": stages.semantic, "imagebind": stages.imagebind, "actor": config.imagebind_actor, "window_length": length}
        ds = ds.map(EmbeddingScorer, fn_constructor_kwargs=kwargs, **actor_placement(config.imagebind_actor))
    if stages.sync.enabled:
        kwargs = {"sync": stages.sync, "actor": config.sync_actor, "window_length": length}
        ds = ds.map(SyncScorer, fn_constructor_kwargs=kwargs, **actor_placement(config.sync_actor))
    return _map_task(ds, record_chunk, config=config)


def _drain(ds: ray.data.Dataset, total: int, verb: str) -> str:
    """Run the graph; the driver only counts finished videos (their state is already on storage), with a progress
    line every tenth of them. A scoring row is one chunk of a video (``chunk``, ``chunks``); others one video."""
    rows: collections.Counter = collections.Counter()
    finished, step = 0, math.ceil(total / 10)
    for row in ds.iter_rows():
        rows[row["source_id"]] += 1
        if rows[row["source_id"]] == max(1, row.get("chunks", 1)):
            finished += 1
            if finished % step == 0 or finished == total:
                logger.info("%s %d of %d videos", verb, finished, total)
    try:
        return ds.stats()
    except Exception:  # noqa: BLE001 - stats are a report nicety
        return ""


def _record_crashed(sources: list[dict], entries: dict[str, dict], config: CurateConfig) -> None:
    """Videos whose tasks failed every retry (their worker kept dying) get a ledger entry, never silence."""
    for source in sources:
        if source["source_id"] not in entries:
            counts = {"windows": 0, "kept": 0, "clips": 0, "decoded_frames": 0}
            record_video(source, config, "failed", "worker_crashed", f"its task failed {TASK_RETRIES + 1} times", counts)


def _scanned(config: CurateConfig, sources: list[dict]) -> list[dict]:
    """The sources whose scan and every chunk of it are stored (one listing of the chunks, the scans read at once)."""
    scans = _json_records(join_uri(config.output, WORK, "scans"))
    fs, path = filesystem(join_uri(config.output, WORK, "chunks"))
    stored = {"/".join(p.rstrip("/").rsplit("/", 2)[-2:]) for p in fs.find(path)} if fs.exists(path) else set()
    return [s for s in sources if s["source_id"] in scans and all(chunk_name(s["source_id"], n) in stored for n in scans[s["source_id"]]["chunks"])]


def _score(config: CurateConfig, sources: list[dict], entries: dict[str, dict]) -> str:
    pending = [s for s in sources if s["source_id"] not in entries]
    logger.info("%d videos, %d already recorded, %d to curate", len(sources), len(sources) - len(pending), len(pending))
    if not pending:
        return ""
    # A block that keeps failing (its worker dying) is dropped rather than fatal: its video then lacks a scan or a
    # chunk, and is recorded as failed below, never lost silently.
    ray.data.DataContext.get_current().max_errored_blocks = -1
    scanned = {s["source_id"] for s in _scanned(config, pending)}
    to_scan = [s for s in pending if s["source_id"] not in scanned]
    stats = []
    if to_scan:
        stats.append(_drain(_scoring(ray.data.from_items(to_scan, override_num_blocks=len(to_scan)), config), len(to_scan), "scored"))
    ready = _scanned(config, pending)
    if ready:
        clips = _map_task(ray.data.from_items(ready, override_num_blocks=len(ready)), materialize_video, config=config)
        stats.append(_drain(clips, len(ready), "curated"))
    _record_crashed(pending, _ledger_entries(config.output), config)
    return "\n".join(stats)


def _rethreshold(config: CurateConfig, entries: dict[str, dict]) -> str:
    scored = [e for e in entries.values() if e["windows"] > 0 and (e["status"] != "failed" or e["reason"] == "rethreshold_error")]
    if not scored:
        raise CurationError(f"{config.output} has no scored videos to re-threshold")
    ds = ray.data.from_items(scored, override_num_blocks=len(scored))
    ds = _map_task(ds, rematerialize_video, config=config)
    return _drain(ds, len(scored), "re-thresholded")


def _score_table(output: str) -> pa.Table:
    fs, path = filesystem(join_uri(output, WORK, "scores"))
    if not fs.exists(path):
        return SCORE_TABLE_SCHEMA.empty_table()
    table = pads.dataset(path, filesystem=fs, format="parquet", schema=SCORE_TABLE_SCHEMA).to_table()
    return table.sort_by([("source_id", "ascending"), ("start", "ascending")])


def _assemble(config: CurateConfig, entries: dict[str, dict]) -> tuple[dict, dict]:
    """Shards from the staged bundles (one Ray task per shard), then the index (the commit) and stats."""
    bundles = list_files(join_uri(config.output, WORK, "clips"), ".tar")
    fs = filesystem(bundles[0])[0] if bundles else None
    sized = [(uri, fs.size(filesystem(uri)[1]), entries[uri.rsplit("/", 1)[-1][: -len(".tar")]]["clips"]) for uri in bundles]
    plan = plan_bundles(sized, config.shards.target_size_mb * 2**20, config.shards.max_samples)
    writer = ray.remote(num_cpus=1)(write_bundled_shard)
    shardlist = ray.get([writer.remote(config.output, config.shards.split, number, uris) for number, uris in enumerate(plan)])
    index = write_index(config.output, config.shards.split, shardlist, {"curation_id": curation_id(config)})
    return index, shard_stats(config.output, index)


def run_curation(config: CurateConfig, rethreshold: bool = False) -> dict:
    """Curate ``config.input`` into shards at ``config.output``; returns the run summary."""
    started = time.perf_counter()
    _check_output(config.output)
    listing = list_inputs(config.input, config.video_extensions)
    if not listing.sources:
        raise InputError(f"no input videos found at {config.input} (extensions {config.video_extensions})")
    if listing.skipped:
        logger.warning("%d entries of the input are not videos and are skipped (listed in the report)", len(listing.skipped))
    sources = [asdict(s) for s in listing.sources]
    recorded = _ledger_entries(config.output)
    _check_resumable(recorded, config, rethreshold)  # before the saved config is replaced
    init_ray(config.ray)
    if not rethreshold:  # rethresholding runs no model
        require_resources(_actor_requests(config), config.ray)
    save_config(config, join_uri(config.output, CONFIG_NAME))
    ray_stats = _rethreshold(config, recorded) if rethreshold else _score(config, sources, recorded)
    entries = _ledger_entries(config.output)
    scores = _score_table(config.output)
    write_parquet(join_uri(config.output, "scores.parquet"), scores)
    write_parquet(join_uri(config.output, "ledger.parquet"), pa.Table.from_pylist(sorted(entries.values(), key=lambda e: e["source_id"]), schema=LEDGER_SCHEMA))
    index, stats = _assemble(config, entries)
    write_json_atomic(join_uri(config.output, f"{config.shards.split}.stats.json"), stats)
    report = report_module.build_report(config, scores, list(entries.values()), index, stats, ray_stats, listing.skipped)
    summary = report_module.summarize(report, time.perf_counter() - started)
    summary["mlflow_run_id"] = log_curation_run(config, report, summary, index, dump_config(config), sources) if config.tracking.enabled else None
    write_json_atomic(join_uri(config.output, "report", "summary.json"), summary)
    return summary
