"""The evaluation report: tables shaped like the paper's Tab. 10 (one row per setting, baseline and GT) and Tab. 6
(one row per category), as Markdown and CSV, and a PNG per metric against each swept value (mean with the
standard deviation over clips as error bars; FID/FVD with their bootstrap interval)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

OVERALL_COLUMNS = ("fid", "ia", "it", "fvd", "alignsync", "relsync")  # Tab. 10's order
CATEGORY_COLUMNS = ("fid", "fvd", "ia", "it", "alignsync", "relsync")  # Tab. 6's order
SUMMARY_SUFFIXES = ("", "_std", "_ci_low", "_ci_high")  # a metric's value, its spread over clips, its interval
METRIC_KEYS = tuple(f"{metric}{suffix}" for metric in OVERALL_COLUMNS for suffix in SUMMARY_SUFFIXES)  # a setting's headline numbers
LABELS = {"fid": "FID↓", "fvd": "FVD↓", "ia": "IA↑", "it": "IT↑", "alignsync": "AlignSync↑", "relsync": "RelSync↑"}


def metric_cell(summary: dict, metric: str) -> str:
    """A metric as the tables show it: FID and FVD with their interval, the others with their spread, "–" if absent."""
    value = summary.get(metric)
    if value is None:
        return "–"
    if metric in ("fid", "fvd") and summary.get(f"{metric}_ci_low") is not None:
        return f"{value:.1f} [{summary[f'{metric}_ci_low']:.1f}, {summary[f'{metric}_ci_high']:.1f}]"
    if summary.get(f"{metric}_std") is not None:
        return f"{value:.2f} ± {summary[f'{metric}_std']:.2f}"
    return f"{value:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def overall_rows(entries: list[dict], swept: list[str]) -> tuple[list[str], list[list[str]], list[list]]:
    """(header, Markdown rows, CSV rows) of Tab. 10: ``entries`` are ``{"name", "swept", "summary"}``."""
    header = ["setting", *swept, *(LABELS[m] for m in OVERALL_COLUMNS), "clips"]
    csv_header = ["setting", *swept, *METRIC_KEYS, "clips"]
    shown, raw = [], []
    for entry in entries:
        summary, values = entry["summary"], [str(entry["swept"].get(k, "")) for k in swept]
        shown.append([entry["name"], *values, *(metric_cell(summary, m) for m in OVERALL_COLUMNS), str(summary["clips"])])
        raw.append([entry["name"], *values, *[summary.get(key) for key in METRIC_KEYS],
                    summary["clips"]])  # fmt: skip
    return header, shown, [csv_header, *raw]


def category_rows(by_category: dict[str, dict]) -> tuple[list[str], list[list[str]], list[list]]:
    header = ["category", *(LABELS[m] for m in CATEGORY_COLUMNS), "clips"]
    shown = [[name, *(metric_cell(s, m) for m in CATEGORY_COLUMNS), str(s["clips"])] for name, s in sorted(by_category.items())]
    raw = [["category", *CATEGORY_COLUMNS, "clips"]] + [[name, *(s.get(m) for m in CATEGORY_COLUMNS), s["clips"]] for name, s in sorted(by_category.items())]
    return header, shown, raw


def plot_sweep(entries: list[dict], key: str, metric: str, path: Path) -> None:
    """One metric against one swept value; the other swept keys, if any, give one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list] = {}
    for entry in entries:
        if key not in entry["swept"] or entry["summary"].get(metric) is None:
            continue
        others = ", ".join(f"{k}={v}" for k, v in entry["swept"].items() if k != key) or metric
        lines.setdefault(others, []).append((entry["swept"][key], entry["summary"]))
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, points in lines.items():
        numeric = all(isinstance(x, (int, float)) for x, _ in points)
        points = sorted(points, key=lambda p: p[0]) if numeric else points
        xs = [x if numeric else str(x) for x, _ in points]
        ys = [s[metric] for _, s in points]
        if metric in ("fid", "fvd") and points[0][1].get(f"{metric}_ci_low") is not None:
            err = [[y - s[f"{metric}_ci_low"] for y, (_, s) in zip(ys, points)], [s[f"{metric}_ci_high"] - y for y, (_, s) in zip(ys, points)]]
        else:
            err = [s.get(f"{metric}_std") or 0.0 for _, s in points]
        axis.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    axis.set_xlabel(key)
    axis.set_ylabel(LABELS[metric])
    if len(lines) > 1:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(folder: Path, entries: list[dict], by_category: dict[str, dict[str, dict]], swept: list[str], header_text: str) -> list[str]:
    """``report.md``, ``overall.csv``, ``per_category_<setting>.csv`` and the sweep plots into ``folder``; returns
    the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    header, shown, raw = overall_rows(entries, swept)
    parts = [header_text, "## Overall (Tab. 10 columns)\n", markdown_table(header, shown)]
    (folder / "overall.csv").write_text(csv_text(raw[0], raw[1:]))
    names = ["report.md", "overall.csv"]
    for setting, categories in by_category.items():
        c_header, c_shown, c_raw = category_rows(categories)
        parts += [f"\n## Per category: {setting} (Tab. 6 columns)\n", markdown_table(c_header, c_shown)]
        (folder / f"per_category_{setting}.csv").write_text(csv_text(c_raw[0], c_raw[1:]))
        names.append(f"per_category_{setting}.csv")
    for key in swept:
        for metric in OVERALL_COLUMNS:
            name = f"{metric}_vs_{key}.png"
            if any(e["summary"].get(metric) is not None for e in entries if key in e["swept"]):
                plot_sweep(entries, key, metric, folder / name)
                parts.append(f"\n![{metric} against {key}]({name})\n")
                names.append(name)
    (folder / "report.md").write_text("\n".join(parts))
    return names
