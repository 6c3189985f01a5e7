"""The curation report: the filter funnel (as in the paper's 1,102,158 -> 100,812 windows), score histograms
with the thresholds drawn, video outcomes, and Ray Data's execution stats."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation.windows import SCORE_RULES, funnel, rules
from avsync_ray.storage import join_uri, write_bytes_atomic, write_json_atomic

HISTOGRAM_BINS = 40


def _histogram_png(name: str, edges: np.ndarray, counts: np.ndarray, minimum: float | None, maximum: float | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.hist(edges[:-1], bins=edges, weights=counts, color="#4878a8")  # the bars of ``hist(values, bins=edges)``
    for bound, style in ((minimum, "--"), (maximum, ":")):
        if bound is not None:
            axis.axvline(bound, color="#c44e52", linestyle=style, label=f"{'min' if style == '--' else 'max'} {bound:g}")
    axis.set_title(f"{name} ({int(counts.sum())} windows)")
    axis.set_xlabel(name)
    if minimum is not None or maximum is not None:
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _counts(column: pa.ChunkedArray | pa.Array) -> Counter:
    """How often each value occurs (Arrow's value counts)."""
    return Counter({item["values"]: item["counts"] for item in pc.value_counts(column).to_pylist()} if len(column) else {})


def _sorted(counter: Counter) -> dict:
    return dict(sorted(counter.items()))


def score_ranges(scores: pa.Table) -> dict[str, tuple[float, float]]:
    """Each score's smallest and largest value among ``scores``' windows (NaN: not scored, left out)."""
    ranges = {}
    for name in SCORE_RULES:
        bounds = pc.min_max(scores[name]).as_py() if scores.num_rows else {"min": None}
        if bounds["min"] is not None and not math.isnan(bounds["min"]):
            ranges[name] = (bounds["min"], bounds["max"])
    return ranges


def merge_ranges(ranges: dict[str, tuple[float, float]], more: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    merged = dict(ranges)
    for name, (low, high) in more.items():
        merged[name] = (min(low, merged[name][0]), max(high, merged[name][1])) if name in merged else (low, high)
    return merged


class Tally:
    """The report's numbers, counted a batch of rows at a time (Arrow compute per batch, merged): window reasons,
    video outcomes, and each score's histogram, in :data:`HISTOGRAM_BINS` equal bins between the score's smallest
    and largest value (``ranges``, from :func:`score_ranges` over every window first), as one histogram of all
    the values would have them."""

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = ranges
        self.histograms = {name: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for name in ranges}
        self.edges = {name: np.histogram_bin_edges([], HISTOGRAM_BINS, bounds) for name, bounds in ranges.items()}
        self.window_reasons, self.statuses, self.failure_reasons, self.zero_survivor_reasons = Counter(), Counter(), Counter(), Counter()
        self.videos = 0

    def add_scores(self, scores: pa.Table) -> None:
        self.window_reasons.update(_counts(scores["reason"]))
        for name, counts in self.histograms.items():
            values = scores[name].to_numpy()
            counts += np.histogram(values[~np.isnan(values)], HISTOGRAM_BINS, self.ranges[name])[0]

    def add_ledger(self, ledger: pa.Table) -> None:
        self.videos += ledger.num_rows
        self.statuses.update(_counts(ledger["status"]))
        self.failure_reasons.update(_counts(ledger.filter(pc.equal(ledger["status"], "failed"))["reason"]))
        self.zero_survivor_reasons.update(_counts(ledger.filter(pc.equal(ledger["status"], "zero_survivors"))["reason"]))


def build_report(config: CurateConfig, tally: Tally, index: dict, stats: dict, ray_stats: str, skipped_inputs=()) -> dict:
    """Write ``<output>/report/`` (report.json, report.md, one histogram PNG per score, Ray Data stats), from the
    :class:`Tally` of the score table and the ledger. ``skipped_inputs`` are the input folder's entries that are
    not videos (:class:`~avsync_ray.sources.SkippedInput`)."""
    folder = join_uri(config.output, "report")
    reasons = _sorted(tally.window_reasons)
    active = rules(config)
    histograms = {}
    for name in SCORE_RULES:
        if name in tally.histograms:
            rule = active[name]
            png = _histogram_png(name, tally.edges[name], tally.histograms[name], rule.min if rule.enabled else None, rule.max if rule.enabled else None)
            write_bytes_atomic(join_uri(folder, f"hist_{name}.png"), png)
            histograms[name] = f"hist_{name}.png"
    report = {
        "funnel": funnel(reasons),
        "clips": index["nsamples"],
        "shards": len(index["shardlist"]),
        "videos": {"total": tally.videos, **_sorted(tally.statuses)},
        "failure_reasons": _sorted(tally.failure_reasons),
        "zero_survivor_reasons": _sorted(tally.zero_survivor_reasons),
        "window_reasons": {reason: count for reason, count in reasons.items() if reason},
        "thresholds": {name: rule.model_dump() for name, rule in active.items()},
        "skipped_rules": [name for name, rule in active.items() if not rule.enabled],
        "stats": stats,
        "histograms": histograms,
        "skipped_inputs": [{"uri": item.uri, "reason": item.reason} for item in skipped_inputs],
    }
    write_json_atomic(join_uri(folder, "report.json"), report)
    write_bytes_atomic(join_uri(folder, "report.md"), _markdown(report).encode())
    write_bytes_atomic(join_uri(folder, "ray_data_stats.txt"), (ray_stats or "(no Ray Data run: every video was already recorded)\n").encode())
    return report


def _markdown(report: dict) -> str:
    lines = ["# Curation report", "", "## Funnel (windows; each counted against the first rule it fails)", "", "| step | windows |", "|---|---|"]
    remaining = report["funnel"]["windows"]
    lines.append(f"| windows inside shots | {remaining} |")
    for name in SCORE_RULES:
        remaining -= report["funnel"][f"removed_by_{name}"]
        skipped = " (stage disabled: not applied)" if name in report["skipped_rules"] else ""
        lines.append(f"| after {name}{skipped} | {remaining} |")
    lines += ["", f"Kept windows merge into **{report['clips']} clips** in {report['shards']} shards.", "", "## Videos", ""]
    lines += [f"- {status}: {count}" for status, count in report["videos"].items()]
    if report["failure_reasons"]:
        lines += ["", "Failure reasons:", ""] + [f"- {reason}: {count}" for reason, count in report["failure_reasons"].items()]
    if report["zero_survivor_reasons"]:
        lines += ["", "Why videos have no clip:", ""] + [f"- {reason}: {count}" for reason, count in report["zero_survivor_reasons"].items()]
    if report["skipped_inputs"]:
        lines += ["", "Input entries that are not videos (not curated):", ""] + [f"- {s['uri']} ({s['reason']})" for s in report["skipped_inputs"]]
    lines += ["", "## Score histograms", ""] + [f"![{name}]({png})" for name, png in report["histograms"].items()]
    return "\n".join(lines) + "\n"


def summarize(report: dict, seconds: float) -> dict:
    videos = report["videos"]
    return {
        "videos": videos["total"],
        "done": videos.get("done", 0),
        "zero_survivors": videos.get("zero_survivors", 0),
        "failed": videos.get("failed", 0),
        "windows": report["funnel"]["windows"],
        "kept_windows": report["funnel"]["kept"],
        "clips": report["clips"],
        "shards": report["shards"],
        "skipped_inputs": dict(Counter(item["reason"] for item in report["skipped_inputs"])),
        "seconds": round(seconds, 1),
    }
