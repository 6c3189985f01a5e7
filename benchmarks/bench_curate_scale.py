"""Curation at scale: a worker's peak memory against the source's length, and the CPU path's throughput against
decode + RGB + encode of the kept clips, on sources where about 10 % of the windows survive (as in the paper).

Sources are synthetic, made of 10-s scenes (each its own shot): one scene in ten is a synchronised bouncing ball
(its windows pass the pixel and audio rules); the others are static or silent (rejected by them).

  * memory: each source curated by one worker process, the per-video steps called as a Ray worker calls them
    (scan, the chunks recorded, clips encoded), with every model stage marked enabled so the chunks carry the
    frames the stages would read (the stages themselves are not run, and the clips are chosen by the cheap rules);
    its peak RSS. Beside it, the peak RSS of
    holding one decode of the whole file (what a task held before chunking) for the shorter sources.
  * throughput: ``avsync curate`` on a local Ray (model stages off) against Ray tasks that decode every frame
    to RGB at the working size and encode the clips curation kept, same corpus, same CPUs, same process.

    python benchmarks/bench_curate_scale.py --lengths 10 120 1200 --corpus 4x120
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avsync_ray.config.curate import CurateConfig
from avsync_ray.curation.windows import clip_audio_span
from avsync_ray.media import decode, encode_mp4, encode_wav
from avsync_ray.synth import synthesize_long_video

SIZE, FPS = (288, 512), 24.0  # scaled to the 256-px working size
SHORT_SIDE = 256


def make_source(path: Path, duration: float, seed: int = 0) -> Path:
    """A cached synthetic source: 10-s scenes, one in ten kept."""
    return path if path.exists() else synthesize_long_video(path, duration, seed=seed, fps=FPS, size=SIZE)


def config(source_or_folder: str, output: str, model_stages: bool = False) -> CurateConfig:
    """Model stages off, or marked on (so chunks carry their frames) with placeholders the memory run never loads."""
    stages = {"semantic": {"enabled": model_stages, "checkpoint": "unused"}, "imagebind": {"enabled": model_stages, "checkpoint": "unused"},
              "sync": {"enabled": model_stages, "classifier": "unused"}}  # fmt: skip
    return CurateConfig.model_validate({
        "input": source_or_folder, "output": output, "filters": stages, "shards": {"short_side": SHORT_SIDE},
        "tracking": {"enabled": False}, "ray": {"progress_bars": False},
    })  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_memory(source: str, output: str, mode: str) -> dict:
    """In this (fresh) process: curate one source as a worker would, or hold one decode of it; peak RSS."""
    from avsync_ray.curation.stages import chunk_record, curate_video, scan_video

    before = peak_rss_mb()
    started = time.perf_counter()
    if mode == "one-decode":
        decoded = decode(source, fps=None, size=SHORT_SIDE)
        held_mb = (decoded.frames.nbytes + decoded.audio.nbytes) / 2**20
        return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": before, "held_mb": held_mb, "seconds": time.perf_counter() - started}
    cfg = config(source, output, model_stages=True)
    item = {"uri": source, "source_id": "source", "label": "ball bouncing"}
    chunks, largest = 0, 0
    for row in scan_video(item, cfg):
        chunks += row["chunk"] >= 0
        largest = max(largest, row["frames"].nbytes + row["audio"].nbytes)
        chunk_record(row)
        del row
    # The stages' scores are missing (not run), so the clips are chosen by the cheap rules alone (a second scan,
    # as the scan task and the clip task of a run are two tasks).
    entry = curate_video(item, config(source, output, model_stages=False))
    return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": before, "chunks": chunks, "largest_row_mb": largest / 2**20,
            "windows": entry["windows"], "kept": entry["kept"], "clips": entry["clips"], "seconds": time.perf_counter() - started}  # fmt: skip


def measure_memory(source: Path, work: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(source), str(work / f"mem-{source.stem}-{mode}"), mode],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_task(source: str, clips: list[tuple[float, float]]) -> int:
    """Decode every frame to RGB at the working size and encode the given clips (as curation encodes them)."""
    decoded = decode(source, fps=None, size=SHORT_SIDE)
    fps = len(decoded.frames) / (decoded.source_frame_times[-1] + 1e-9) if len(decoded.frames) > 1 else FPS
    for start, end in clips:
        chosen = decoded.frames[(decoded.source_frame_times >= start - 1e-6) & (decoded.source_frame_times < end - 1e-6)]
        sound = decoded.audio[slice(*clip_audio_span(start, end, decoded.audio_start, 16_000))]
        encode_mp4(chosen, round(fps), sound, 16_000, crf=18, preset="medium")
        encode_wav(sound)
    return len(decoded.source_frame_times)


def throughput(corpus: list[Path], work: Path, cpus: int) -> dict:
    import pyarrow.parquet as pq
    import ray

    from avsync_ray.curation.pipeline import run_curation

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        summary = run_curation(config(str(corpus[0].parent), str(work / "curated")))
        curate_s = time.perf_counter() - started
        rows = pq.read_table(work / "curated" / "scores.parquet").to_pylist()
        clips: dict[str, set] = {}
        for row in rows:
            if row["clip"]:
                start_ms, end_ms = row["clip"].rsplit("_", 2)[-2:]  # the sample key ends <start_ms>_<end_ms>
                clips.setdefault(row["uri"], set()).add((int(start_ms) / 1000, int(end_ms) / 1000))
        task = ray.remote(num_cpus=1)(baseline_task)
        started = time.perf_counter()
        frames = sum(ray.get([task.remote(str(path), sorted(clips.get(str(path), ()))) for path in corpus]))
        baseline_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    windows, kept = summary["windows"], sum(r["keep"] for r in rows)
    return {"source_frames": frames, "windows": windows, "kept_windows": kept, "keep_rate": kept / max(windows, 1), "clips": summary["clips"],
            "curation_frames_per_s": frames / curate_s, "baseline_frames_per_s": frames / baseline_s, "curation_over_baseline_time": curate_s / baseline_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="*", default=[10, 120, 1200], help="source lengths (s) for the memory runs")
    parser.add_argument("--one-decode-up-to", type=float, default=120, help="hold one whole decode only for sources up to this long (s)")
    parser.add_argument("--corpus", default="4x120", help="throughput corpus: <sources>x<seconds>")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--media", default=str(Path(tempfile.gettempdir()) / "avsync-bench-scale"), help="where the synthetic sources are cached")
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs=3, metavar=("SOURCE", "OUTPUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_memory(*args.worker)))
        return
    media = Path(args.media)
    with tempfile.TemporaryDirectory(prefix="avsync-bench-scale-") as tmp:
        work = Path(tmp)
        memory = {}
        for length in args.lengths:
            source = make_source(media / f"source-{int(length)}s.mp4", length)
            memory[f"{length:g}s"] = {"chunked": measure_memory(source, work, "chunked")}
            if length <= args.one_decode_up_to:
                memory[f"{length:g}s"]["one_decode"] = measure_memory(source, work, "one-decode")
            print(f"{length:g}-s source: {json.dumps(memory[f'{length:g}s'])}", file=sys.stderr)
        count, seconds = (int(x) for x in args.corpus.split("x"))
        corpus = [make_source(media / f"corpus-{seconds}s" / f"source-{i}.mp4", seconds, seed=i) for i in range(count)]
        result = {"memory": memory, "throughput": throughput(corpus, work, args.cpus), "cpus": args.cpus}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    rates = result["throughput"]
    print(f"curation {rates['curation_frames_per_s']:.0f} source frames/s, decode+RGB+encode {rates['baseline_frames_per_s']:.0f}: "
          f"{rates['curation_over_baseline_time']:.2f}x its time at keep rate {rates['keep_rate']:.1%}", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
