"""Wall-clock timing shared by the benchmark scripts (device work is synchronised before each clock read)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(result: dict, out: str | None = None) -> None:
    """Print a benchmark's result as JSON, with the torch version and the machine; also write it to ``out``."""
    result = {**result, "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as handle:
            handle.write(text)
