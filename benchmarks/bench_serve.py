"""Throughput of `avsync serve` with `@serve.batch` against batch size 1, at concurrency 8, in one run.

The same app is deployed twice on one local Ray, back to back: `batching.max_batch_size=1` (each request its own
pipeline call) and `=B`. Each time, 8 clients on loopback keep one `POST /v1/animations:sync` request each in
flight (image + sound, fixed steps, fixed seeds) until N requests are answered; requests/s is N over the wall
time of those N, after 8 warm-up requests. The model replica's own counters give the batch sizes it ran.

    python benchmarks/bench_serve.py                                   # tiny pipeline on this machine's CPUs
    python benchmarks/bench_serve.py --preset full --steps 50          # full-size random weights on a GPU (bf16)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import PIL.Image
import ray
from ray import serve
from timing import report

from avsync_ray.config.base import load_config
from avsync_ray.config.serve import ServeConfig
from avsync_ray.media import encode_wav
from avsync_ray.serve.app import deploy, deploy_config
from avsync_ray.synth import generate_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' port prober
from local_cluster import free_ports  # noqa: E402


def request_files(size: int) -> dict:
    """A synthetic in-sync clip's first frame (PNG) and its 3 s of clicks (WAV), as a client uploads them."""
    clip = generate_clip("sync", seed=0, duration=3.0, size=(size, size))
    image = io.BytesIO()
    PIL.Image.fromarray(clip.frames[0]).save(image, "PNG")
    return {"image": ("frame.png", image.getvalue()), "audio": ("sound.wav", encode_wav(clip.audio, clip.sample_rate))}


def full_pipeline_folder(folder: Path) -> Path:
    """The full-size architecture with random weights, saved in bf16 (the text encoder at CLIP-L size)."""
    import torch
    from bench_generate import full_components
    from transformers import CLIPTextConfig, CLIPTextModel

    from avsync_ray.models.presets import tiny_tokenizer
    from avsync_ray.pipelines import AVSyncDPipeline

    components = full_components(torch.bfloat16, "cpu")
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77, projection_dim=768)).to(torch.bfloat16)  # fmt: skip
    AVSyncDPipeline(**components, text_encoder=text_encoder, tokenizer=tiny_tokenizer()).save_pretrained(folder)
    return folder


async def closed_loop(url: str, total: int, concurrency: int, steps: int, files: dict) -> tuple[float, list[float], list[int]]:
    """(wall seconds, latencies, status codes) of ``total`` requests with ``concurrency`` always in flight."""
    queue = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)
    latencies, codes = [], []

    async def client(http: httpx.AsyncClient):
        while not queue.empty():
            index = queue.get_nowait()
            start = time.perf_counter()
            response = await http.post("/v1/animations:sync", data={"category": "dog barking", "num_inference_steps": str(steps), "seed": str(index)},
                                       files=files)  # fmt: skip
            latencies.append(time.perf_counter() - start)
            codes.append(response.status_code)

    async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, codes


def model_stats(url: str) -> dict:
    models = httpx.get(f"{url}/v1/models", timeout=60).json()["models"]
    return next(m for m in models if m["role"] == "animation")["stats"]


def measure(base: list[str], batch_size: int, args, port: int) -> dict:
    config = load_config(ServeConfig, "serve", overrides=[*base, f"batching.max_batch_size={batch_size}"])
    url = f"http://127.0.0.1:{port}"
    deploy(deploy_config(config), timeout_s=1800)
    try:
        files = request_files(config.sampling.height)
        asyncio.run(closed_loop(url, args.concurrency, args.concurrency, args.steps, files))  # warm-up: first calls, allocator, kernels
        before = model_stats(url)
        seconds, latencies, codes = asyncio.run(closed_loop(url, args.requests, args.concurrency, args.steps, files))
        after = model_stats(url)
    finally:
        serve.shutdown()
    latencies.sort()
    calls = after["pipeline_calls"] - before["pipeline_calls"]
    return {
        "max_batch_size": batch_size,
        "requests": args.requests,
        "errors": sum(code != 200 for code in codes),
        "seconds": round(seconds, 3),
        "requests_per_s": round(args.requests / seconds, 4),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "pipeline_calls": calls,
        "mean_batch": round((after["requests"] - before["requests"]) / max(1, calls), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="max_batch_size of the batched run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    (port,) = free_ports(1)
    base = [f"http.port={port}", "sync_classifier.source=null", f"limits.max_sync_steps={args.steps}", f"limits.max_active_jobs={4 * args.concurrency}",
            "deployments.ingress.num_cpus=0", f"deployments.model.max_ongoing_requests={max(8, 2 * args.batch_size)}"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.preset == "full":
            base += [f"model.source={full_pipeline_folder(Path(tmp) / 'avsyncd-full-random')}", "sampling.height=256", "sampling.width=256",
                     "dtype=bfloat16", "deployments.model.num_gpus=1", "deployments.model.num_cpus=1"]  # fmt: skip
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        else:
            base += ["deployments.model.num_cpus=2"]  # every core for the one pipeline
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        try:
            rows = [measure(base, 1, args, port), measure(base, args.batch_size, args, port)]
        finally:
            ray.shutdown()
    single, batched = rows
    report({"preset": args.preset, "steps": args.steps, "concurrency": args.concurrency, "rows": rows,
            "throughput_ratio": round(batched["requests_per_s"] / single["requests_per_s"], 3)}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
