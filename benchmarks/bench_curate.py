"""Throughput of curation's CPU path on a synthetic corpus, against a bare PyAV decode of the same files.

Measured in one process, back to back:
  * bare decode: PyAV decoding every video and audio frame of every file (no colour conversion): the floor;
  * curation, CPU path (probe, one decode, shots, windows, pixel/audio scores, thresholds, merge, clip encode,
    shard write; the model stages are off) on a local Ray with 1 and with 2 CPUs;
  * decoded frames per source frame: curation's one decode per video versus decoding each overlapping
    3-s window on its own (what a per-window pipeline does).

    python benchmarks/bench_curate.py --videos 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import av
import pyarrow.parquet as pq
import ray

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation.pipeline import run_curation
from avsync_ray.media import decode
from avsync_ray.synth import synthesize_corpus


def bare_decode(paths: list[Path]) -> tuple[float, int]:
    """Seconds to decode every frame of every file with PyAV, and the number of video frames."""
    frames = 0
    start = time.perf_counter()
    for path in paths:
        with av.open(str(path)) as container:
            for frame in container.decode(*container.streams):
                frames += isinstance(frame, av.VideoFrame)
    return time.perf_counter() - start, frames


def per_window_decode(scores_path: Path) -> tuple[float, int]:
    """Seconds and decoded frames when every scored window is decoded on its own (keyframe preroll included)."""
    table = pq.read_table(scores_path).to_pylist()
    decoded = 0
    start = time.perf_counter()
    for row in table:
        decoded += decode(row["uri"], fps=None, start=row["start"], end=row["end"], audio=True).num_decoded_frames
    return time.perf_counter() - start, decoded


def curate(corpus: Path, output: Path, cpus: int) -> tuple[float, dict]:
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        config = CurateConfig.model_validate({
            "input": str(corpus), "output": str(output),
            "filters": {"semantic": {"enabled": False}, "imagebind": {"enabled": False}, "sync": {"enabled": False}},
            "tracking": {"enabled": False}, "ray": {"progress_bars": False},
        })  # fmt: skip
        start = time.perf_counter()
        summary = run_curation(config)
        return time.perf_counter() - start, summary
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="avsync-bench-curate-"))
    try:
        truth = synthesize_corpus(work / "corpus", num_videos=args.videos, seed=0, duration=args.duration, size=(180, 320))
        bare_s, source_frames = bare_decode([work / "corpus" / t["uri"] for t in truth])
        runs = {cpus: curate(work / "corpus", work / f"out-{cpus}", cpus) for cpus in (1, 2)}
        ledger = pq.read_table(work / "out-1" / "ledger.parquet").to_pylist()
        our_decoded = sum(entry["decoded_frames"] for entry in ledger)
        window_s, window_decoded = per_window_decode(work / "out-1" / "scores.parquet")
        result = {
            "videos": args.videos,
            "seconds_per_video": args.duration,
            "source_frames": source_frames,
            "bare_decode_frames_per_s": source_frames / bare_s,
            "curation_frames_per_s": {cpus: source_frames / seconds for cpus, (seconds, _) in runs.items()},
            "curation_vs_bare_decode": {cpus: (source_frames / seconds) / (source_frames / bare_s) for cpus, (seconds, _) in runs.items()},
            "speedup_2_vs_1_cpu": runs[1][0] / runs[2][0],
            "decoded_per_source_frame": our_decoded / source_frames,
            "decoded_per_source_frame_per_window": window_decoded / source_frames,
            "per_window_decode_s": window_s,
            "clips": runs[1][1]["clips"],
            "windows": runs[1][1]["windows"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(
        f"{args.videos} videos x {args.duration:g} s ({source_frames} frames): bare decode {result['bare_decode_frames_per_s']:.0f} frames/s; "
        f"curation {result['curation_frames_per_s'][1]:.0f} frames/s on 1 CPU ({result['curation_vs_bare_decode'][1]:.2f}x bare), "
        f"{result['curation_frames_per_s'][2]:.0f} on 2 ({result['speedup_2_vs_1_cpu']:.2f}x); decoded frames per source frame "
        f"{result['decoded_per_source_frame']:.2f} (per-window decoding: {result['decoded_per_source_frame_per_window']:.2f})"
    )


if __name__ == "__main__":
    main()
