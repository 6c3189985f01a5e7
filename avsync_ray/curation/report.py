"""The curation report: the filter funnel (as in the paper's 1,102,158 -> 100,812 windows), score histograms
with the thresholds drawn, video outcomes, and Ray Data's execution stats."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation.windows import SCORE_RULES, funnel, rules
from avsync_ray.storage import join_uri, write_bytes_atomic, write_json_atomic


def _histogram_png(name: str, values: np.ndarray, minimum: float | None, maximum: float | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.hist(values, bins=40, color="#4878a8")
    for bound, style in ((minimum, "--"), (maximum, ":")):
        if bound is not None:
            axis.axvline(bound, color="#c44e52", linestyle=style, label=f"{'min' if style == '--' else 'max'} {bound:g}")
    axis.set_title(f"{name} ({len(values)} windows)")
    axis.set_xlabel(name)
    if minimum is not None or maximum is not None:
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """How often each value occurs (Arrow's value counts), sorted by value."""
    pairs = pc.value_counts(column).to_pylist() if len(column) else []
    return {item["values"]: item["counts"] for item in sorted(pairs, key=lambda item: item["values"])}


def _reasons_of(ledger: pa.Table, status: str) -> dict[str, int]:
    return _counts(ledger.filter(pc.equal(ledger["status"], status))["reason"])


def build_report(config: CurateConfig, scores: pa.Table, ledger: pa.Table, index: dict, stats: dict, ray_stats: str, skipped_inputs=()) -> dict:
    """Write ``<output>/report/`` (report.json, report.md, one histogram PNG per score, Ray Data stats), from the
    score table and the ledger with Arrow compute (no Python row per window or video).
    ``skipped_inputs`` are the input folder's entries that are not videos (:class:`~avsync_ray.sources.SkippedInput`)."""
    folder = join_uri(config.output, "report")
    reasons = _counts(scores["reason"])
    active = rules(config)
    histograms = {}
    for name in SCORE_RULES:
        values = scores[name].to_numpy()
        values = values[~np.isnan(values)]
        if len(values):
            rule = active[name]
            png = _histogram_png(name, values, rule.min if rule.enabled else None, rule.max if rule.enabled else None)
            write_bytes_atomic(join_uri(folder, f"hist_{name}.png"), png)
            histograms[name] = f"hist_{name}.png"
    report = {
        "funnel": funnel(reasons),
        "clips": index["nsamples"],
        "shards": len(index["shardlist"]),
        "videos": {"total": ledger.num_rows, **_counts(ledger["status"])},
        "failure_reasons": _reasons_of(ledger, "failed"),
        "zero_survivor_reasons": _reasons_of(ledger, "zero_survivors"),
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
