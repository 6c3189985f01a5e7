"""Curation's driver against the corpus size N, on S3: a moto server behind the loopback proxy of
``tests/s3_proxy.py``, which adds a latency to every request (30 ms by default) and counts the requests of every
process (driver and Ray workers).

Per N it prints the driver's wall seconds outside Ray tasks (the run's wall time minus the time the driver waits
on Ray Data and on the shard tasks: what the cluster idles through; with its CPU seconds, and the seconds spent
listing the input, where moto is much slower than S3), the requests per video by kind, the driver's
resident memory (where the run starts, with Ray started and the package imported, and its peak growth during
the run, sampled every 20 ms; and Arrow's peak allocation), and driver seconds per video; then linear fits and
the projection to 200k and 2M videos (time, requests, request cost, driver memory).

Two kinds of corpus, each run in a fresh driver process with its own local Ray:

* ``--fabricated 500 2000 8000``: the per-video state is fabricated (one video record per video, with five scored
  windows, and for two videos in five one clip in a staged bundle of tiny placeholder members), so no media is
  decoded: the run lists the input, reads the records, writes the ledger and score table, plans and writes the
  shards (Ray tasks reading the bundles), commits, removes the bundles and writes the report. This is the
  driver's resume and finalize path at N, which media work does not change.
* ``--real 60 240``: tiny synthetic sources (3.5-s clips of 64x48 px, half in sync and kept, half static and
  rejected) curated for real, model stages off: what every request of a whole run costs per video.

    python benchmarks/bench_curate_driver.py --fabricated 500 2000 8000 --real 60 240 --latency-ms 30
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the proxy is shared with the tests

PUT_CLASS, GET_CLASS = ("PUT", "POST", "LIST"), ("GET", "HEAD")
PRICE = {"put": 0.005 / 1000, "get": 0.0004 / 1000}  # USD per request, S3 standard


def curate_config(inputs: str, output: str):
    from avsync_ray.config.curate import CurateConfig

    return CurateConfig.model_validate({
        "input": inputs, "output": output,
        "filters": {"semantic": {"enabled": False}, "imagebind": {"enabled": False}, "sync": {"enabled": False}},
        "shards": {"short_side": 64, "target_size_mb": 64, "crf": 30}, "tracking": {"enabled": False},
        "ray": {"progress_bars": False, "num_cpus": 2},
    })  # fmt: skip


def fabricate(count: int, inputs: str, output: str) -> None:
    """N input objects (placeholders: every video is recorded, so none is read) and their recorded state."""
    import fsspec

    from avsync_ray.config.base import save_config
    from avsync_ray.curation import work
    from avsync_ray.curation.records import SCORE_LISTS, VIDEO_SCHEMA, record_table, video_record
    from avsync_ray.curation.stages import scoring_id
    from avsync_ray.shards import sample_key, tar_bytes_and_ranges
    from avsync_ray.sources import source_id_for

    config = curate_config(inputs, output)
    fs = fsspec.filesystem("s3")
    labels = [f"label-{k:03d}" for k in range(30)]
    relative = [f"{labels[i % len(labels)]}/video-{i:07d}.mp4" for i in range(count)]
    fs.pipe({f"{inputs}/{path}".removeprefix("s3://"): b"placeholder" for path in relative})
    work.prepare(output)
    save_config(config, f"{output}/curate.config.yaml")
    starts = [0.0, 0.5, 1.0, 1.5, 2.0]
    rows, bundles = [], {}
    for index, path in enumerate(relative):
        source_id, label, kept = source_id_for(path), path.split("/")[0], index % 5 < 2
        keys = [sample_key(source_id, 0.0, 5.0)] if kept else []
        ranges = []
        if kept:
            data, ranges = tar_bytes_and_ranges([{"__key__": keys[0], "json": b"{}", "mp4": os.urandom(3000), "wav": os.urandom(1000)}])
            bundles[work.bundle_uri(output, source_id, 0).removeprefix("s3://")] = data
        rows.append(video_record(
            source_id=source_id, uri=f"{inputs}/{path}", label=label, status="done" if kept else "zero_survivors",
            reason="" if kept else "all_windows_rejected", scoring_id=scoring_id(config), windows=5, kept=5 if kept else 0, clips=len(keys),
            decoded_frames=200, fps=24.0, video_end=4.0, audio_start=0.0, skipped_rules="semantic_diff,ia,it,psync_a2v,psync_v2a",
            window_shot=[0] * 5, window_start=starts, window_end=[s + 3 for s in starts], **{n: [0.5] * 5 for n, _ in SCORE_LISTS},
            window_keep=[kept] * 5, window_reason=["" if kept else "too_static"] * 5, window_clip=keys * 5 if kept else [""] * 5,
            clip_key=keys, clip_shot=[0] * len(keys), clip_start=[0.0] * len(keys), clip_end=[5.0] * len(keys),
            clip_offset=[o for o, _ in ranges], clip_length=[n for _, n in ranges],
        ))  # fmt: skip
    fs.pipe(bundles)
    size = work.records_per_part(count)
    table = record_table(rows, VIDEO_SCHEMA)
    for lo in range(0, count, size):
        work.write_part(output, "videos", table.slice(lo, size))


def synthesize(count: int, inputs: str) -> None:
    import fsspec

    from avsync_ray.synth import synthesize_corpus

    with tempfile.TemporaryDirectory(prefix="bench-driver-") as folder:
        synthesize_corpus(folder, num_videos=count, seed=0, categories=["sync", "static"], duration=3.5, fps=12.0, size=(48, 64))
        fs = fsspec.filesystem("s3")
        fs.put([str(p) for p in sorted(Path(folder).rglob("*.mp4"))], [f"{inputs}/{p.parent.name}/{p.name}".removeprefix("s3://") for p in sorted(Path(folder).rglob("*.mp4"))])


class PeakMemory:
    """The process's resident memory, sampled every 20 ms in a thread: its peak above where it started."""

    def __init__(self):
        import threading

        import psutil

        self.process, self.stop = psutil.Process(), threading.Event()
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def close(self) -> dict:
        self.stop.set()
        self.thread.join()
        return {"rss_start_mb": self.start / 2**20, "rss_growth_mb": (self.peak - self.start) / 2**20}


def driver(inputs: str, output: str) -> dict:
    """In this fresh process: ``avsync curate inputs output``, timing what the driver waits on Ray for."""
    from avsync_ray.ray_runtime import use_system_arrow_pool

    use_system_arrow_pool()  # as ``avsync curate`` does, before pyarrow loads
    import pyarrow as pa
    import ray

    from avsync_ray.curation import pipeline

    spent = {"ray_wait_s": 0.0, "ray_wait_cpu_s": 0.0, "listing_s": 0.0}

    def timed(function, wall: str, cpu: str | None = None):
        def wrapper(*args, **kwargs):
            started, started_cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[wall] += time.perf_counter() - started
                if cpu:
                    spent[cpu] += time.process_time() - started_cpu

        return wrapper

    config = curate_config(inputs, output)
    pipeline.init_ray(config.ray)  # Ray's start is not the driver's per-video work
    pipeline._drain = timed(pipeline._drain, "ray_wait_s", "ray_wait_cpu_s")
    pipeline.ray.get = timed(ray.get, "ray_wait_s", "ray_wait_cpu_s")
    pipeline.list_inputs = timed(pipeline.list_inputs, "listing_s")
    memory = PeakMemory()
    started, started_cpu = time.perf_counter(), time.process_time()
    summary = pipeline.run_curation(config)
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return {"wall_s": wall, **spent, "driver_s": wall - spent["ray_wait_s"], "driver_cpu_s": cpu - spent["ray_wait_cpu_s"], **memory.close(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
            "videos": summary["videos"], "clips": summary["clips"], "shards": summary["shards"]}  # fmt: skip


def measure(kind: str, count: int, proxy, env: dict, latency_s: float) -> dict:
    import boto3

    from avsync_ray.curation.work import records_per_part

    bucket = f"bench-{kind}-{count}"  # a bucket per run: moto's listings cost the bucket's size, S3's do not
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    inputs, output = f"s3://{bucket}/in", f"s3://{bucket}/out"
    (fabricate(count, inputs, output) if kind == "fabricated" else synthesize(count, inputs))
    proxy.reset()
    proxy.latency_s = latency_s
    done = subprocess.run([sys.executable, __file__, "--driver", inputs, output], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    counts, areas = dict(proxy.counts), dict(proxy.by_area)
    parts = {k: v for (area, k), v in areas.items() if area == "parts"}
    result.update(kind=kind, n=count, records_per_part=records_per_part(count), requests=counts, part_requests=parts,
                  requests_per_video=sum(counts.values()) / count, part_requests_per_video=sum(parts.values()) / count,
                  put_class_per_video=sum(counts.get(k, 0) for k in PUT_CLASS) / count, get_class_per_video=sum(counts.get(k, 0) for k in GET_CLASS) / count,
                  driver_ms_per_video=1000 * result["driver_s"] / count)  # fmt: skip
    return result


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y against x."""
    import numpy as np

    x, y = np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(x, y, 1) if len(x) > 1 else (y[0] / x[0], 0.0)
    return float(intercept), float(slope)


def projection(results: list[dict]) -> dict:
    """Driver time and memory: a linear fit of the fabricated runs. Requests: the real runs' requests that are not
    record parts (source reads, bundles, shards, listings), fitted against N; the parts' requests per record, scaled
    by the records a part holds at the projected N (1,000 from 200k videos on, against 1 or 2 in a small run)."""
    from avsync_ray.curation.work import records_per_part

    fabricated = [r for r in results if r["kind"] == "fabricated"]
    real = [r for r in results if r["kind"] == "real"] or fabricated
    time_fit = fit([(r["n"], r["driver_s"]) for r in fabricated]) if fabricated else (0.0, 0.0)
    cpu_fit = fit([(r["n"], r["driver_cpu_s"]) for r in fabricated]) if fabricated else (0.0, 0.0)
    memory_fit = fit([(r["n"], r["rss_growth_mb"]) for r in fabricated]) if fabricated else (0.0, 0.0)
    baseline = max(r["rss_start_mb"] for r in fabricated) if fabricated else 0.0
    fits = {}
    for name, kinds in (("put", PUT_CLASS), ("get", GET_CLASS)):
        other = fit([(r["n"], sum(v for k, v in r["requests"].items() if k in kinds) - sum(v for k, v in r["part_requests"].items() if k in kinds)) for r in real])
        per_record = max(sum(v for k, v in r["part_requests"].items() if k in kinds) * r["records_per_part"] / r["n"] for r in real)
        fits[name] = (other, per_record)
    out = {"driver_seconds_fit": {"intercept": round(time_fit[0], 2), "per_video_ms": round(1000 * time_fit[1], 4)},
           "driver_cpu_seconds_fit": {"intercept": round(cpu_fit[0], 2), "per_video_ms": round(1000 * cpu_fit[1], 4)},
           "driver_rss_growth_fit": {"intercept_mb": round(memory_fit[0], 1), "per_video_kb": round(1024 * memory_fit[1], 3), "baseline_mb": round(baseline)}}  # fmt: skip
    for n in (200_000, 2_000_000):
        requests = {name: other[0] + other[1] * n + per_record * n / records_per_part(n) for name, (other, per_record) in fits.items()}
        out[str(n)] = {
            "driver_minutes": round((time_fit[0] + time_fit[1] * n) / 60, 2), "driver_cpu_minutes": round((cpu_fit[0] + cpu_fit[1] * n) / 60, 2), "driver_peak_rss_gb": round((baseline + memory_fit[0] + memory_fit[1] * n) / 1024, 2),
            "requests_millions": round(sum(requests.values()) / 1e6, 3), "requests_per_video": round(sum(requests.values()) / n, 2),
            "request_cost_usd": round(requests["put"] * PRICE["put"] + requests["get"] * PRICE["get"], 2),
        }  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fabricated", type=int, nargs="*", default=[500, 2000, 8000])
    parser.add_argument("--real", type=int, nargs="*", default=[60, 240])
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--out")
    parser.add_argument("--driver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        print(json.dumps(driver(*args.driver)))
        return
    from local_cluster import free_ports
    from moto.server import ThreadedMotoServer
    from s3_proxy import S3Proxy

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log: a line per request

    (moto_port,) = free_ports(1)
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(credentials, AWS_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}")  # set-up goes straight to moto
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
    server.start()
    proxy = S3Proxy(f"http://127.0.0.1:{moto_port}").start()
    proxy.areas = {"parts": re.compile(r"/_work/(chunks|videos)/")}
    env = {**os.environ, **credentials, "AWS_ENDPOINT_URL": proxy.url, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    results = []
    try:
        for kind, sizes in (("fabricated", args.fabricated), ("real", args.real)):
            for count in sizes:
                results.append(measure(kind, count, proxy, env, args.latency_ms / 1000))
                r = results[-1]
                print(f"{kind:>10} N={count:>6}: driver {r['driver_s']:7.1f} s outside Ray ({r['driver_ms_per_video']:.2f} ms/video; wall {r['wall_s']:.1f} s; "
                      f"CPU {r['driver_cpu_s']:.1f} s; listing the input {r['listing_s']:.1f} s), "
                      f"{r['requests_per_video']:.2f} requests/video {r['requests']} ({r['part_requests_per_video']:.2f} of them record parts), RSS "
                      f"{r['rss_start_mb']:.0f} MB +{r['rss_growth_mb']:.0f} MB during the run (Arrow peak {r['arrow_peak_mb']:.0f} MB)", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        proxy.stop()
        server.stop()
    fabricated = [r for r in results if r["kind"] == "fabricated"]
    summary = {"latency_ms": args.latency_ms, "results": results, "projection": projection(results)}
    if len(fabricated) > 1:
        summary["per_video_driver_time_ratio_largest_over_smallest"] = round(fabricated[-1]["driver_ms_per_video"] / fabricated[0]["driver_ms_per_video"], 3)
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
