"""``avsync curate`` on Ray Data: the only curation module that imports Ray.

    scoring:  pending sources -> scan (CPU task per video: shots, windows, cheap scores; yields the windows chunk by
                                 chunk)
                              -> embedding scorer (actor pool: semantic difference, ImageBind IA/IT)
                              -> sync scorer (actor pool: P_sync)
                              -> chunk records, stored in parts of many chunks
    clips:    scanned videos  -> materialize (CPU task per video: thresholds, merge, encode clips into its bundle)
                              -> video records, stored in parts of many videos
    then: shards (Ray tasks, in the order of a hash of each clip's key, from the staged bundles), index (the
    commit), the staged bundles go; ledger and score table (streamed from the video records), stats, report,
    MLflow run.

What the driver does per video is small and constant: it lists the input page by page into Arrow columns, reads
the stored parts (about N / 1,000 objects for N videos, a few thousand records at a time;
:mod:`avsync_ray.curation.work`), puts the pending videos into Ray Data in blocks of 1,000 (split on the workers
into one video per task, so each video is retried alone), and writes the ledger and score table a range of videos
at a time (:mod:`avsync_ray.curation.spill`), counting the report with Arrow on the way. It holds a few narrow
columns per video (ids, generations, the clip table), never every record's windows. A task holds one chunk of a video's windows (10 s of window starts, with the frames and audio they
sample) or the clip being encoded, never a whole video's frames, so hour-long sources curate in bounded memory.

A video with a stored video record is done (clips staged, zero survivors, or failed with a reason) and is skipped
by a rerun (a storage error is retried); a video whose scan is stored goes straight to its clips. The shards are
rebuilt from the bundles in a fixed order, so an interrupted and an uninterrupted run end with the same bytes, on
any number of nodes; a rerun that changes no clip leaves the committed shards as they are.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.util.annotations import RayDeprecationWarning

from avsync_ray import faults
from avsync_ray.batch_jobs import actor_placement
from avsync_ray.config.base import ConfigError, dump_config, load_config, save_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation import report as report_module, work
from avsync_ray.curation.records import (
    CHUNK_SCHEMA,
    LEDGER_ORDER,
    LEDGER_SCHEMA,
    SCORE_ORDER,
    SHARD_CLIPS_SCHEMA,
    VIDEO_SCHEMA,
    clip_table,
    final_ids,
    latest_rows,
    latest_videos,
    ledger_rows,
    record_table,
    scanned_ids,
    scanned_videos,
    score_rows,
    video_record,
)
from avsync_ray.curation.scorers import EmbeddingScorer, SyncScorer
from avsync_ray.curation.spill import RankedSpill
from avsync_ray.curation.stages import (
    chunk_record,
    curation_id,
    materialize_video,
    rematerialize_video,
    scan_video,
    scoring_id,
    setting_differences,
)
from avsync_ray.errors import InputError
from avsync_ray.ray_runtime import ResourceRequest, actor_request, init_ray, require_resources
from avsync_ray.shards import index_uri, plan_shards, shard_order, shard_stats, write_index, write_sourced_shard
from avsync_ray.shards.schema import SCORE_TABLE_SCHEMA
from avsync_ray.sources import list_inputs
from avsync_ray.storage import (
    exists,
    filesystem,
    join_uri,
    read_json,
    uri_prefix,
    write_json_atomic,
    write_parquet,
    write_parquet_batches,
)
from avsync_ray.tracking import log_curation_run

logger = logging.getLogger(__name__)
# A task killed by a crash (a worker process dying) is retried this many times before the video is recorded
# as failed with reason 'worker_crashed'.
TASK_RETRIES = 3
INPUT_BLOCK = 1000  # videos per block the driver hands to Ray Data
CONFIG_NAME = "curate.config.yaml"  # the resolved config of the output's latest run
LIGHT_COLUMNS = ["source_id", "status", "reason", "scoring_id", "generation"]


class CurationError(InputError):
    """The output folder cannot continue this run (it holds videos curated with other settings)."""


def _map_task(ds: ray.data.Dataset, fn, flat: bool = False, **fn_kwargs) -> ray.data.Dataset:
    """A per-video (or, ``flat``, one video to many rows) CPU task with bounded retries. Ray Data retries crashed
    tasks forever by default, so a video that always kills its worker would hang the run. Ray 2.60 deprecates
    ``max_retries`` as a remote arg without a named replacement yet; the warning is silenced here on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RayDeprecationWarning)
        return (ds.flat_map if flat else ds.map)(fn, fn_kwargs=fn_kwargs, num_cpus=1, max_retries=TASK_RETRIES)


def _store(ds: ray.data.Dataset, writer, output: str, count: int) -> ray.data.Dataset:
    """Records stored by ``writer`` (:mod:`~avsync_ray.curation.work`) in parts of many records; its rows are
    one per part."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RayDeprecationWarning)
        return ds.map_batches(writer, batch_size=work.records_per_part(count), batch_format="numpy", fn_kwargs={"output": output},
                              num_cpus=1, max_retries=TASK_RETRIES)  # fmt: skip


def _blocks(table: pa.Table) -> list[pa.Table]:
    return [table.slice(start, INPUT_BLOCK) for start in range(0, table.num_rows, INPUT_BLOCK)]


def _videos(blocks: list[pa.Table] | list[ray.ObjectRef]) -> ray.data.Dataset:
    """Videos as a Ray Dataset: the driver hands over blocks of ``INPUT_BLOCK`` videos (tables, or tables already
    in the object store), which the workers split into one video per block, so that each video is its own task
    (retried, and failing, alone)."""
    dataset = ray.data.from_arrow_refs(blocks) if blocks and isinstance(blocks[0], ray.ObjectRef) else ray.data.from_arrow(blocks)
    return dataset.repartition(target_num_rows_per_block=1)


def _scanned(output: str, pending: pa.Table) -> tuple[list[ray.ObjectRef], int]:
    """The pending videos whose scan is stored (rows of :func:`scanned_videos`), put in the object store in blocks
    of ``INPUT_BLOCK``; with their count. The chunk records are read part by part and spilled by their video's
    place in ``pending``, then grouped a range of videos at a time: the driver never holds every video's windows."""
    uris = work.part_uris(output, "chunks")  # a fresh listing: the parts the tasks wrote
    refs, count = [], 0
    with tempfile.TemporaryDirectory(prefix="avsync-scans-") as folder:
        spill = RankedSpill(folder, pending.num_rows)
        try:
            for part in work.iter_parts(uris, CHUNK_SCHEMA):
                ranks = pc.index_in(part["source_id"], value_set=pending["source_id"])
                listed = pc.is_valid(ranks)
                spill.add("chunks", part.filter(listed), ranks.filter(listed).to_numpy())
            for chunks in spill.sorted_tables("chunks"):
                videos = scanned_videos(chunks)
                refs += [ray.put(block) for block in _blocks(videos)]
                count += videos.num_rows
        finally:
            spill.close()
    return refs, count


def _check_resumable(recorded: pa.Table, config: CurateConfig, rethreshold: bool) -> None:
    """An output with recorded videos continues only with the settings that made them: the scores' (checked per
    video) and every other setting that changes a shard's bytes (against the output's saved config)."""
    if not recorded.num_rows:
        return
    saved_uri = join_uri(config.output, CONFIG_NAME)
    differences = []
    if exists(saved_uri):
        try:
            differences = setting_differences(load_config(CurateConfig, path=saved_uri), config, rethreshold)
        except ConfigError:  # written by another version of this package: the per-video scoring ids still decide
            logger.warning("%s does not validate with this version; checking the scoring settings only", saved_uri)
    other = set(pc.unique(recorded["scoring_id"]).to_pylist()) - {scoring_id(config)}
    if other and not differences:
        differences = [f"the scoring settings (shots, windows or models; ids {sorted(other)}, this run {scoring_id(config)})"]
    if differences:
        hint = "" if rethreshold else ", or --rethreshold to change only thresholds"
        raise CurationError(
            f"{config.output} holds {recorded.num_rows} videos curated with other settings ({'; '.join(differences)}); "
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


def _scoring(ds: ray.data.Dataset, config: CurateConfig, count: int) -> ray.data.Dataset:
    """The scoring graph on a dataset of sources (one video per block); its rows are one per stored part."""
    plan = faults.plan_from_env()
    scan = faults.video_task_with_faults(scan_video, plan, work.marker_dir(config.output)) if plan else scan_video
    ds = _map_task(ds, scan, flat=True, config=config)
    stages, length = config.filters, config.windows.length_s
    if stages.semantic.enabled or stages.imagebind.enabled:
        kwargs = {"semantic": stages.semantic, "imagebind": stages.imagebind, "actor": config.imagebind_actor, "window_length": length}
        ds = ds.map(EmbeddingScorer, fn_constructor_kwargs=kwargs, **actor_placement(config.imagebind_actor))
    if stages.sync.enabled:
        kwargs = {"sync": stages.sync, "actor": config.sync_actor, "window_length": length}
        ds = ds.map(SyncScorer, fn_constructor_kwargs=kwargs, **actor_placement(config.sync_actor))
    return _store(_map_task(ds, chunk_record), work.store_chunk_records, config.output, count)


def _drain(ds: ray.data.Dataset, total: int, verb: str, failures: dict[str, str]) -> str:
    """Run the graph; the driver only reads one row per stored part (the records are on storage), with a progress
    line every tenth of the videos. A part that storage refused every retry adds its videos to ``failures``."""
    finished, step, last = 0, math.ceil(total / 10), 0
    for row in ds.iter_rows():
        finished += int(row["videos"])
        if row["error"]:
            failures.update(dict.fromkeys(row["failed"].split("\n"), row["error"]))
        if finished // step > last // step or (finished >= total > last):
            logger.info("%s %d of %d videos", verb, min(finished, total), total)
        last = finished
    try:
        return ds.stats()
    except Exception:  # noqa: BLE001 - stats are a report nicety
        return ""


def _record_missing(config: CurateConfig, pending: pa.Table, generation: int, failures: dict[str, str]) -> None:
    """Videos of this run without a record of this run's ``generation``: their part could not be stored
    (``storage_error``, retried by the next run), or their task failed every retry, its worker dying each time
    (``worker_crashed``); never silence."""
    stored = work.read_records(config.output, "videos", ["source_id", "generation"])
    recorded = stored.filter(pc.equal(stored["generation"], generation))["source_id"].combine_chunks()
    missing = pending.filter(pc.invert(pc.is_in(pending["source_id"], value_set=recorded)))
    if not missing.num_rows:
        return
    rows = []
    for source in missing.select(["source_id", "uri", "label"]).to_pylist():
        error = failures.get(source["source_id"])
        reason, detail = ("storage_error", error) if error else ("worker_crashed", f"its task failed {TASK_RETRIES + 1} times")
        rows.append(video_record(**source, status="failed", reason=reason, detail=detail, scoring_id=scoring_id(config), generation=generation))
    work.write_part(config.output, "videos", record_table(rows, VIDEO_SCHEMA))
    logger.warning("%d videos could not be curated (recorded as failed: %s)", len(rows), sorted({r["reason"] for r in rows}))


def _score(config: CurateConfig, sources: pa.Table, recorded: pa.Table, generation: int) -> str:
    pending = sources.filter(pc.invert(pc.is_in(sources["source_id"], value_set=final_ids(recorded))))
    logger.info("%d videos, %d already recorded, %d to curate", sources.num_rows, sources.num_rows - pending.num_rows, pending.num_rows)
    if not pending.num_rows:
        return ""
    # A block that keeps failing (its worker dying) is dropped rather than fatal: its video then has no record
    # and is recorded as failed below, never lost silently.
    ray.data.DataContext.get_current().max_errored_blocks = -1
    scanned = scanned_ids(work.read_records(config.output, "chunks", ["source_id", "reason", "chunk", "chunks"]))
    to_scan = pending.filter(pc.invert(pc.is_in(pending["source_id"], value_set=scanned)))
    stats, failures = [], {}
    if to_scan.num_rows:
        stats.append(_drain(_scoring(_videos(_blocks(to_scan)), config, to_scan.num_rows), to_scan.num_rows, "scored", failures))
    ready, count = _scanned(config.output, pending)
    if count:
        clips = _map_task(_videos(ready), materialize_video, config=config, generation=generation)
        stats.append(_drain(_store(clips, work.store_video_records, config.output, count), count, "curated", failures))
    del ready  # the blocks leave the object store once the run has them
    _record_missing(config, pending, generation, failures)
    work.remove_parts(work.part_uris(config.output, "chunks"))  # every listed video is recorded: the scans are spent
    return "\n".join(stats)


def _clip_locations(config: CurateConfig, videos: pa.Table, committed: dict | None) -> pa.Table:
    """``videos`` with ``clip_uri`` (and ``clip_offset``, ``clip_length``) saying where each clip's members are now:
    the video's bundle, or, once the shards holding them committed and the bundles went, the committed shard."""
    in_shards = committed is not None and committed["bundles"] == "removed"
    located = {}
    if in_shards and pc.any(pc.less_equal(videos["generation"], committed["generation"])).as_py():
        table = work.read_parts([work.shard_clips_uri(config.output, committed["plan_id"])], SHARD_CLIPS_SCHEMA)
        located = dict(zip(table["key"].to_pylist(), zip(table["shard"].to_pylist(), table["offset"].to_pylist(), table["length"].to_pylist())))
    uris, offsets, lengths = [], [], []
    for video in videos.select(["source_id", "generation", "clip_key", "clip_offset", "clip_length"]).to_pylist():
        if in_shards and video["generation"] <= committed["generation"]:
            found = [located[key] for key in video["clip_key"]]
            uris.append([join_uri(config.output, shard) for shard, _, _ in found])
            offsets.append([offset for _, offset, _ in found])
            lengths.append([length for _, _, length in found])
        else:
            uris.append([work.bundle_uri(config.output, video["source_id"], video["generation"])] * len(video["clip_key"]))
            offsets.append(video["clip_offset"])
            lengths.append(video["clip_length"])
    table = videos.drop_columns(["clip_offset", "clip_length"])
    return table.append_column("clip_uri", pa.array(uris, pa.list_(pa.string()))).append_column(
        "clip_offset", pa.array(offsets, pa.list_(pa.int64()))).append_column("clip_length", pa.array(lengths, pa.list_(pa.int64())))  # fmt: skip


def _rematerialize(config: CurateConfig, videos: pa.Table, generation: int, committed: dict | None, verb: str) -> str:
    """Re-apply thresholds to recorded videos, reading their current clips from where they are."""
    ds = _map_task(_videos(_blocks(_clip_locations(config, videos, committed))), rematerialize_video, config=config, generation=generation)
    failures: dict[str, str] = {}
    stats = _drain(_store(ds, work.store_video_records, config.output, videos.num_rows), videos.num_rows, verb, failures)
    _record_missing(config, videos.select(["source_id", "uri", "label"]), generation, failures)
    return stats


def _rethreshold(config: CurateConfig, generation: int, committed: dict | None) -> str:
    videos = latest_videos(work.read_records(config.output, "videos"))
    retried = pc.is_in(videos["reason"], value_set=pa.array(["rethreshold_error", "storage_error"]))
    scored = videos.filter(pc.and_(pc.greater(videos["windows"], 0), pc.or_(pc.not_equal(videos["status"], "failed"), retried)))
    if not scored.num_rows:
        raise CurationError(f"{config.output} has no scored videos to re-threshold")
    ray.data.DataContext.get_current().max_errored_blocks = -1
    return _rematerialize(config, scored, generation, committed, "re-thresholded")


def _strings(column: pa.ChunkedArray, batch: int = 10_000):
    """The values of a column, a batch at a time: never all of them as Python objects at once."""
    for start in range(0, len(column), batch):
        yield from column.slice(start, batch).to_pylist()


def _plan_id(config: CurateConfig, clips: pa.Table) -> str:
    """What the shards hold, in order: the settings that make their bytes, every clip's key and size."""
    digest = hashlib.sha256(curation_id(config).encode())
    for key, length in zip(_strings(clips["key"]), _strings(clips["length"])):
        digest.update(f"\n{key} {length}".encode())
    return digest.hexdigest()[:32]


def _write_shards(config: CurateConfig, clips: pa.Table, plan_id: str) -> dict:
    """One Ray task per shard, each fetching its clips' members from their bundles; then where each clip is in
    the shards, and the index (the commit)."""
    split = config.shards.split
    numbers = plan_shards(clips["length"].to_numpy(), config.shards.target_size_mb * 2**20, config.shards.max_samples)
    bounds = np.flatnonzero(np.r_[True, numbers[1:] != numbers[:-1], True]) if len(numbers) else np.zeros(1, dtype=np.int64)
    writer = ray.remote(num_cpus=1)(write_sourced_shard)
    refs = []
    for number, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = clips.slice(lo, hi - lo)
        uris = [work.bundle_uri(config.output, s, g) for s, g in zip(part["source_id"].to_pylist(), part["generation"].to_pylist())]
        refs.append(writer.remote(config.output, split, number, part["key"].to_pylist(), uris, part["offset"].to_pylist(), part["length"].to_pylist()))
    results = ray.get(refs)
    located = pa.table({
        "key": clips["key"], "shard": pa.array(np.repeat(np.array([r["entry"]["url"] for r in results], object), [r["entry"]["nsamples"] for r in results]), pa.string()),
        "offset": pa.array(np.concatenate([np.asarray(r["offsets"], np.int64) for r in results] or [np.zeros(0, np.int64)])),
        "length": pa.array(np.concatenate([np.asarray(r["lengths"], np.int64) for r in results] or [np.zeros(0, np.int64)])),
    })  # fmt: skip
    write_parquet(work.shard_clips_uri(config.output, plan_id), located.cast(SHARD_CLIPS_SCHEMA))
    return write_index(config.output, split, [r["entry"] for r in results], {"curation_id": curation_id(config), "plan_id": plan_id})


# What the finalize reads of every stored video record: enough to choose the latest records and plan the shards.
PLAN_COLUMNS = ["source_id", "label", "generation", "clips", "clip_key", "clip_start", "clip_end", "clip_offset", "clip_length"]


@dataclass(frozen=True)
class _Recorded:
    """The stored video records as the finalize reads them: the parts, the records each holds, and per stored
    record (in the parts' order) its rank among the latest records in source-id order (-1: superseded); with the
    latest records' :data:`PLAN_COLUMNS`. The whole records are read part by part (:meth:`latest`), never held."""

    uris: list[str]
    sizes: np.ndarray
    ranks: np.ndarray
    videos: pa.Table

    @classmethod
    def read(cls, output: str) -> _Recorded:
        uris = work.part_uris(output, "videos")
        parts = list(work.iter_parts(uris, VIDEO_SCHEMA, PLAN_COLUMNS))
        records = pa.concat_tables(parts) if parts else work.columns_schema(VIDEO_SCHEMA, PLAN_COLUMNS).empty_table()
        rows = latest_rows(records) if records.num_rows else np.zeros(0, dtype=np.int64)
        ranks = np.full(records.num_rows, -1, dtype=np.int64)
        ranks[rows] = np.arange(len(rows))
        return cls(uris, np.array([part.num_rows for part in parts], dtype=np.int64), ranks, records.take(pa.array(rows)))

    @property
    def superseded(self) -> bool:
        """Most stored records are old (re-thresholds, retries): the parts are worth compacting."""
        return len(self.ranks) > 2 * self.videos.num_rows

    def latest(self) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """Each part's latest records, whole, with their ranks, part by part."""
        starts = np.r_[0, np.cumsum(self.sizes)]
        for number, part in enumerate(work.iter_parts(self.uris, VIDEO_SCHEMA)):
            ranks = self.ranks[starts[number] : starts[number + 1]]
            chosen = np.flatnonzero(ranks >= 0)
            yield part.take(pa.array(chosen)), ranks[chosen]


def _unstaged(videos: pa.Table, committed: dict) -> pa.Array:
    """Which of ``videos`` have clips only in the committed shards (their bundles went)."""
    return pc.and_(pc.greater(videos["clips"], 0), pc.less_equal(videos["generation"], committed["generation"]))


def _assemble(config: CurateConfig, generation: int, committed: dict | None) -> tuple[_Recorded, dict, pa.Table]:
    """The recorded videos, the shards (rewritten only when their clips changed; clips of committed shards
    whose bundles went are staged again first), the index, and the clips; then the staged bundles go."""
    recorded = _Recorded.read(config.output)
    clips = clip_table(recorded.videos)  # by key
    if config.shards.order == "hash":
        clips = clips.take(pa.array(shard_order(_strings(clips["key"]), clips.num_rows)))
    plan_id = _plan_id(config, clips)
    uri = index_uri(config.output, config.shards.split)
    index = read_json(uri) if exists(uri) else None
    if index is None or index.get("plan_id") != plan_id:
        if committed is not None and committed["bundles"] == "removed" and pc.any(_unstaged(recorded.videos, committed)).as_py():
            # the clips changed: the committed shards are rewritten, so their clips are staged first
            unstaged = pa.concat_tables([videos.filter(_unstaged(videos, committed)) for videos, _ in recorded.latest()])
            _rematerialize(config, unstaged, generation, committed, "staged again")
            return _assemble(config, generation, None)
        index = _write_shards(config, clips, plan_id)
    kept = None
    if config.keep_staged_clips:
        kept = sorted({work.bundle_uri(config.output, s, g) for s, g in zip(_strings(clips["source_id"]), _strings(clips["generation"]))})
    work.commit(config.output, plan_id, pc.max(clips["generation"]).as_py() if clips.num_rows else -1, kept)
    return recorded, index, clips


def _counted(tables: Iterator[pa.Table], count) -> Iterator[pa.Table]:
    """``tables``, each given to ``count`` (the report's tally) on its way to the file."""
    for table in tables:
        count(table)
        yield table


def _write_tables(output: str, recorded: _Recorded) -> report_module.Tally:
    """``ledger.parquet`` and ``scores.parquet`` from the latest records, streamed: each part's records become
    ledger and score rows spilled to local files by their video's rank, which come back in source-id order a
    range of videos at a time into the two files; the report's numbers are counted on the way."""
    with tempfile.TemporaryDirectory(prefix="avsync-tables-") as folder:
        spill = RankedSpill(folder, recorded.videos.num_rows)
        try:
            ranges = {}
            for videos, ranks in recorded.latest():
                scores = score_rows(videos)
                spill.add("ledger", ledger_rows(videos), ranks)
                spill.add("scores", scores, np.repeat(ranks, pc.list_value_length(videos["window_start"]).to_numpy()))
                ranges = report_module.merge_ranges(ranges, report_module.score_ranges(scores))
            tally = report_module.Tally(ranges)
            ledger = _counted(spill.sorted_tables("ledger", LEDGER_ORDER), tally.add_ledger)
            write_parquet_batches(join_uri(output, "ledger.parquet"), LEDGER_SCHEMA, ledger)
            scores = _counted((table.drop_columns(["window"]) for table in spill.sorted_tables("scores", SCORE_ORDER)), tally.add_scores)
            write_parquet_batches(join_uri(output, "scores.parquet"), SCORE_TABLE_SCHEMA, scores)
        finally:
            spill.close()
    return tally


def run_curation(config: CurateConfig, rethreshold: bool = False) -> dict:
    """Curate ``config.input`` into shards at ``config.output``; returns the run summary."""
    started = time.perf_counter()
    _check_output(config.output)
    listing = list_inputs(config.input, config.video_extensions)
    sources, skipped = listing.sources, listing.skipped
    if not sources.num_rows:
        raise InputError(f"no input videos found at {config.input} (extensions {config.video_extensions})")
    if skipped:
        logger.warning("%d entries of the input are not videos and are skipped (listed in the report)", len(skipped))
    work.prepare(config.output)
    recorded = latest_videos(work.read_records(config.output, "videos", LIGHT_COLUMNS))
    _check_resumable(recorded, config, rethreshold)  # before the saved config is replaced
    generation = (pc.max(recorded["generation"]).as_py() + 1) if recorded.num_rows else 0
    committed = work.read_committed(config.output)
    init_ray(config.ray)
    if not rethreshold:  # rethresholding runs no model
        require_resources(_actor_requests(config), config.ray)
    save_config(config, join_uri(config.output, CONFIG_NAME))
    ray_stats = _rethreshold(config, generation, committed) if rethreshold else _score(config, sources, recorded, generation)
    del recorded  # the finalize reads the records again, as the tasks left them
    recorded, index, clips = _assemble(config, generation, committed)
    tally = _write_tables(config.output, recorded)
    if recorded.superseded:
        work.compact_videos(config.output, recorded.uris, (videos for videos, _ in recorded.latest()))
    stats = shard_stats(index, clips)
    write_json_atomic(join_uri(config.output, f"{config.shards.split}.stats.json"), stats)
    report = report_module.build_report(config, tally, index, stats, ray_stats, skipped)
    summary = report_module.summarize(report, time.perf_counter() - started)
    if config.tracking.enabled:  # the listed videos, a batch at a time (never all as Python objects)
        listed = (row for batch in sources.to_batches(10_000) for row in batch.to_pylist())
        summary["mlflow_run_id"] = log_curation_run(config, report, summary, index, dump_config(config), listed)
    else:
        summary["mlflow_run_id"] = None
    write_json_atomic(join_uri(config.output, "report", "summary.json"), summary)
    return summary
