"""The summary of an ``avsync eval`` run, from the clips' feature files on storage (no Ray here: a runner is given).

Per setting: the per-clip metrics (IA, IT, RelSync, AlignSync; overall and per category), FID and FVD (overall and
per category) and their bootstrap interval over test videos; and the GT row (the real clips scored as if
generated). The work is split into steps, each a function of picklable arguments: reading the real clips' features
once, one step per setting that reads its clips' features and pairs them with the real ones, then one step per
distance (setting, metric, all clips or one category) and one per block of bootstrap replicates. A runner runs the
steps: :class:`SerialRunner` one after the other in this process; :class:`avsync_ray.evaluation.batch.RayRunner`
as Ray tasks, where the features stay in the object store between steps and the driver only sees small results.
Both give the same numbers: the replicates are drawn on the driver (:func:`~avsync_ray.metrics.frechet.bootstrap_counts`).

Nothing here stops the summary: a step that fails (a singular covariance, a storage error) makes its metric
*undefined* with the reason, and the other metrics are still reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from avsync_ray.evaluation.plan import GT
from avsync_ray.metrics.frechet import bootstrap_counts, bootstrap_replicates, percentile_interval
from avsync_ray.metrics.video_metrics import (
    DISTANCE_METRICS,
    LABELS,
    PERCENT_METRICS,
    ClipFeatures,
    DistanceRows,
    clip_scores,
    clip_summary,
    distance_rows,
    frechet,
    gt_scores,
    undefined_reason,
)
from avsync_ray.storage import filesystem

logger = logging.getLogger(__name__)

BOOTSTRAP_BLOCK = 8  # replicates per step: a 2048-d replicate is two symmetric eigenproblems (seconds on a core)


@dataclass(frozen=True)
class SummaryOptions:
    metrics: list[str]
    frechet: str = "sqrtm"
    bootstrap_samples: int = 0
    confidence: float = 0.95
    seed: int = 0
    min_videos: int = 10  # no interval from fewer test videos
    block: int = BOOTSTRAP_BLOCK


# ------------------------------------------------------------------------------------------------ runners


class SerialRunner:
    """Runs each step at once in this process; a step's error is raised by :meth:`get`, as Ray raises a task's."""

    def submit(self, fn: Callable, *args, num_returns: int = 1):
        try:
            for arg in args:  # a step given a failed step's output fails with its error, as a Ray task does
                self.get(arg)
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - kept for get(), as a Ray task's error is
            return _Failed(exc) if num_returns == 1 else tuple(_Failed(exc) for _ in range(num_returns))
        return result

    def get(self, handle):
        if isinstance(handle, _Failed):
            raise handle.error
        return handle


@dataclass
class _Failed:
    error: Exception


# ------------------------------------------------------------------------------------------------ steps


def read_features(uris: list[str]) -> list[ClipFeatures]:
    """The clips' feature files (read concurrently where the filesystem can)."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0])
    paths = [filesystem(uri)[1] for uri in uris]
    data = fs.cat(paths)
    return [ClipFeatures.from_bytes(data[path]) for path in paths]


def load_real(uris: list[str]) -> dict[str, ClipFeatures]:
    return {clip.key: clip for clip in read_features(uris)}


def describe_real(real: dict[str, ClipFeatures]) -> tuple[dict, list[dict]]:
    """The GT row's summary and its per-clip scores."""
    clips = sorted(real.values(), key=lambda c: c.key)
    return clip_summary(clips, real, is_real=True), [_clip_row(c, gt_scores(c)) for c in clips]


@dataclass
class DistanceShape:
    rows: int
    dim: int
    rows_per_clip: int
    by_category: dict[str, int]


@dataclass
class SettingView:
    """What the driver needs of a setting (small): per-clip scores, clip summaries, the test videos and the shape
    of each distance's rows."""

    summary: dict
    categories: dict[str, dict]
    per_clip: list[dict]
    videos: list[str]
    distances: dict[str, DistanceShape]


def prepare_setting(uris: list[str], real: dict[str, ClipFeatures], metrics: list[str]) -> tuple[SettingView, dict[str, DistanceRows]]:
    """Read a setting's clips (those with a real clip) and pair them with the real ones: its :class:`SettingView`
    and the distance rows the later steps use."""
    clips = sorted((c for c in read_features(uris) if c.key in real), key=lambda c: c.key)
    categories = sorted({c.category for c in clips})
    rows = {name: r for name in DISTANCE_METRICS if name in metrics and (r := distance_rows(clips, real, name)) is not None}
    view = SettingView(
        clip_summary(clips, real),
        {category: clip_summary([c for c in clips if c.category == category], real) for category in categories},
        [_clip_row(c, clip_scores(c, real[c.key])) for c in clips],
        sorted({c.video for c in clips}),
        {name: DistanceShape(len(r.real), r.real.shape[1], r.rows_per_clip, {c: int((r.categories == c).sum()) for c in categories})
         for name, r in rows.items()},  # fmt: skip
    )
    return view, rows


def distance_step(rows: dict[str, DistanceRows], name: str, category: str | None, method: str) -> tuple[float, bool]:
    return frechet(rows[name].subset(category), method)


def bootstrap_step(rows: dict[str, DistanceRows], name: str, counts: np.ndarray) -> np.ndarray:
    """The replicates of one block of ``counts`` (columns: the setting's test videos in sorted order)."""
    selected = rows[name]
    _, video_index = np.unique(selected.videos, return_inverse=True)
    return bootstrap_replicates(selected.real, selected.generated, video_index, counts)


def _clip_row(clip: ClipFeatures, scores: dict) -> dict:
    return {"key": clip.key, "video": clip.video, "clip": clip.clip, "start": clip.start, "category": clip.category,
            "sync_score": clip.sync, **scores}  # fmt: skip


# ------------------------------------------------------------------------------------------------ the summary


@dataclass
class EvaluationSummary:
    settings: dict[str, dict]  # setting -> its summary (``undefined``: metric -> reason; ``notes``: metric -> interval note)
    categories: dict[str, dict[str, dict]]  # setting -> category -> summary
    gt: dict
    per_clip: dict[str, list[dict]] = field(default_factory=dict)  # setting (and GT) -> per-clip scores

    def undefined(self) -> dict[str, dict[str, str]]:
        """The undefined metrics of each setting's overall row (setting -> metric -> reason; settings with none left out)."""
        return {name: summary["undefined"] for name, summary in self.settings.items() if summary["undefined"]}


def _empty_summary(metrics: list[str], reason: str) -> dict:
    summary = {"clips": 0, "videos": 0, **{name: None for name in PERCENT_METRICS}, **{f"{name}_std": None for name in PERCENT_METRICS}}
    summary["undefined"] = {name: f"{LABELS[name]} undefined: {reason}" for name in metrics}
    summary["notes"] = {}
    return summary


def summarize_evaluation(
    real_uris: list[str], setting_uris: dict[str, list[str]], options: SummaryOptions, runner, no_clips: dict[str, str] | None = None
) -> EvaluationSummary:
    """Every setting's summary from the feature files (``setting_uris``: setting -> its clips' feature files).
    ``no_clips``: setting -> why it has no clip (the undefined reason when it has none)."""
    no_clips = no_clips or {}
    real_ref = runner.submit(load_real, real_uris)
    gt_ref = runner.submit(describe_real, real_ref)
    prepared = {name: runner.submit(prepare_setting, uris, real_ref, options.metrics, num_returns=2) for name, uris in setting_uris.items()}
    try:
        gt_summary, gt_rows = runner.get(gt_ref)
    except Exception as exc:  # noqa: BLE001 - without the real features nothing can be summarised
        reason = f"the real clips' features could not be read: {type(exc).__name__}: {str(exc)[:300]}"
        return EvaluationSummary({name: _empty_summary(options.metrics, reason) for name in setting_uris}, {}, _empty_summary([], reason))
    gt_summary.update(undefined={}, notes={})

    views: dict[str, SettingView] = {}
    summaries: dict[str, dict] = {}
    for name, (view_ref, _) in prepared.items():
        try:
            views[name] = runner.get(view_ref)
        except Exception as exc:  # noqa: BLE001 - that setting's metrics are undefined, the others go on
            summaries[name] = _empty_summary(options.metrics, f"its clips' features could not be read: {type(exc).__name__}: {str(exc)[:300]}")
    jobs, blocks = {}, {}
    for name, view in views.items():
        rows_ref = prepared[name][1]
        for metric in view.distances:
            for category in [None, *view.categories]:
                jobs[name, metric, category] = runner.submit(distance_step, rows_ref, metric, category, options.frechet)
            if options.bootstrap_samples and len(view.videos) >= options.min_videos:
                counts = bootstrap_counts(len(view.videos), options.bootstrap_samples, options.seed)
                blocks[name, metric] = [runner.submit(bootstrap_step, rows_ref, metric, counts[start : start + options.block])
                                        for start in range(0, len(counts), options.block)]  # fmt: skip
    logger.info("evaluation statistics: %d distances and %d bootstrap blocks over %d settings", len(jobs), sum(map(len, blocks.values())), len(views))

    categories: dict[str, dict[str, dict]] = {}
    for name, view in views.items():
        summary = {**view.summary, "undefined": {}, "notes": {}}
        by_category = {c: {**s, "undefined": {}, "notes": {}} for c, s in view.categories.items()}
        if not view.summary["clips"]:
            summary = _empty_summary(options.metrics, no_clips.get(name, "no clip of this setting was generated and scored"))
        for metric in PERCENT_METRICS:
            if metric in options.metrics and summary.get(metric) is None and metric not in summary["undefined"]:
                summary["undefined"][metric] = f"{LABELS[metric]} undefined: no clip has it"
        for metric in DISTANCE_METRICS:
            if metric not in options.metrics or not view.summary["clips"]:
                continue
            shape = view.distances.get(metric)
            if shape is None:
                summary["undefined"][metric] = f"{LABELS[metric]} undefined: a clip or its real clip lacks {LABELS[metric]} features"
                continue
            for category, target in [(None, summary), *by_category.items()]:
                rows = shape.rows if category is None else shape.by_category[category]
                try:
                    target[metric], target[f"{metric}_eps_retry"] = runner.get(jobs[name, metric, category])
                except Exception as exc:  # noqa: BLE001 - reported with its reason; the run goes on
                    target[metric] = None
                    target["undefined"][metric] = undefined_reason(metric, rows, shape.dim, shape.rows_per_clip, exc)
            _interval(summary, metric, blocks.get((name, metric)), len(view.videos), options, runner)
        summaries[name] = summary
        categories[name] = by_category
    per_clip = {name: view.per_clip for name, view in views.items()}
    per_clip[GT] = gt_rows
    return EvaluationSummary({name: summaries[name] for name in setting_uris}, categories, gt_summary, per_clip)


def _interval(summary: dict, metric: str, blocks: list | None, videos: int, options: SummaryOptions, runner) -> None:
    """``<metric>_ci_low``, ``_ci_high``, ``_boot_std`` from the bootstrap blocks, or a note saying why there is none."""
    if not options.bootstrap_samples or summary.get(metric) is None:
        return
    if blocks is None:
        summary["notes"][metric] = (f"no {options.confidence:.0%} interval for {LABELS[metric]}: a bootstrap over test videos needs at least "
                                    f"{options.min_videos} of them, this set has {videos}")  # fmt: skip
        return
    try:
        values = np.concatenate([runner.get(block) for block in blocks])
    except Exception as exc:  # noqa: BLE001
        summary["notes"][metric] = f"no interval for {LABELS[metric]}: a bootstrap step failed: {type(exc).__name__}: {str(exc)[:300]}"
        return
    interval = percentile_interval(values, options.confidence)
    summary.update({f"{metric}_ci_low": interval.low, f"{metric}_ci_high": interval.high, f"{metric}_boot_std": interval.std})

