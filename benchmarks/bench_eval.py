"""Clips per second of ``avsync eval`` on Ray Data against a serial per-clip loop like the official scripts
(``animation_gen.py`` then ``animation_eval.py``: batch 1, one clip at a time, generate, write the mp4, read it
back, run each feature network on it), in the same process, and the Ray Data job's scaling with actors; and
(``--statistics``) the summary's statistics run serially in this process against the same steps as Ray tasks.

Both paths do the same work on the same clips: decode the real clips, generate, encode, decode, score real and
generated clips with every network of ``--metrics``. CPU: the tiny pipeline and tiny random feature networks
(the FID Inception at its real size, whose layout fixes every shape).

    python benchmarks/bench_eval.py --videos 4 --steps 5 --pools 1:1 2
    python benchmarks/bench_eval.py --preset full --device cuda --videos 8 --steps 50 --size 256 --pools 1:1 2:2 2

``--pools G:F`` runs the job with G generating and F feature actors; ``--pools N`` with N actors that each generate
and score (``colocate: true``); ``--pools threads:N`` in the command's own process, N threads that each generate
and score (``ray.in_process``, which a small job on one machine gets by default; cold, no Ray at all). ``--start warm`` times both paths in this process after everything is imported
(the serial loop's imports are then free, an actor's are not); ``--start cold`` times each path as a person runs
it, from a fresh process: ``python`` running the serial loop (as the official scripts are run) against ``avsync
eval`` joining the Ray this benchmark started (no ``ray start`` in the clock), so both pay their imports and
network loading; ``both`` does both.

    python benchmarks/bench_eval.py --statistics --settings 2 --clips 450 --categories 15 --samples 32

``--statistics`` writes random feature files shaped like the paper's test set (``--clips`` clips of 11 FID frames of
2048 dimensions and a 400-d FVD vector, 3 clips per video, ``--categories`` categories) for ``--settings`` settings,
then times the summary (FID and FVD overall and per category with ``frechet``, ``--samples`` bootstrap replicates)
with :class:`~avsync_ray.evaluation.statistics.SerialRunner` and with Ray tasks, and checks they give the same
numbers.

``--preset full`` saves the full-size AVSyncD architecture with random weights (SD1.5-sized UNet and VAE, a
CLIP-L-sized text encoder, ImageBind-huge's audio branch) as the model; the feature networks stay the small random
ones (the FID Inception at its real size). On a GPU each actor pool gets half of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import report

from avsync_ray.config.base import RayConfig, load_config, save_config
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.evaluation.batch import run_eval
from avsync_ray.evaluation.clips import eval_video_rows, generation_row, video_clips
from avsync_ray.evaluation.generation import ClipGenerator
from avsync_ray.evaluation.plan import list_eval_inputs, plan_settings
from avsync_ray.evaluation.scoring import FeatureNetworks, read_generated
from avsync_ray.metrics.protocol import clip_seed, float_frames
from avsync_ray.models.feature_networks import write_tiny_feature_networks
from avsync_ray.models.sync_classifier import SyncClassifier
from avsync_ray.pipelines.presets import save_tiny_pipeline
from avsync_ray.ray_runtime import init_ray
from avsync_ray.synth import synthesize_shards


def serial_loop(config: EvalConfig) -> int:
    """The official scripts' structure: every clip alone, generation first, then each clip's features (a test
    video's real clips in one FID forward, as ``eval.py``)."""
    setting = plan_settings(config)[0]
    settings = {setting.name: {"kind": setting.kind, "sampling": setting.sampling.model_dump()}}
    folder = {setting.name: f"{config.output}/generated/{setting.name}"}
    generator = ClipGenerator(config.model, config.tracking.uri, config.generate_actor, settings, 1, folder)
    device = torch.device(config.feature_actor.device if config.feature_actor.num_gpus else "cpu")
    networks = FeatureNetworks(config.features, config.metrics, device, config.protocol)
    items, _ = list_eval_inputs(config)
    sampling = config.sampling
    clips = 0
    for item in items:
        for video in eval_video_rows(item.to_row(), sampling.num_frames, sampling.fps, (sampling.height, sampling.width), config.clips_per_video):
            real = video_clips(video)
            networks.clip_features([[(float_frames(c["frames"]), c["audio"], video["category"]) for c in real]])
            for clip in real:
                job = generation_row(clip, video, setting.name, clip_seed(sampling.seed, video["video"], clip["clip"]), generate=True)
                path = generator({k: [v] for k, v in job.items()})["path"][0]
                frames, audio = read_generated(path, sampling.num_frames, sampling.fps, config.protocol)
                networks.clip_features([[(float_frames(frames), audio, video["category"])]])
                clips += 1
    return clips


def write_feature_files(folder: Path, clips: int, categories: int, seed: int, scale: float) -> list[str]:
    """Random feature files shaped like real ones: 11 x 2048 FID rows (non-negative, as pool features are) and 400 FVD."""
    from avsync_ray.metrics.video_metrics import ClipFeatures

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for index in range(clips):
        video, clip = divmod(index, 3)
        key = f"video{video:04d}_clip-{clip:02d}"
        features = ClipFeatures(key, f"video{video:04d}", f"category{video % categories}", np.abs(rng.normal(0, scale, (11, 2048))).astype(np.float32),
                                rng.normal(0, scale, 400).astype(np.float32), rng.uniform(0, 0.3, 12), rng.uniform(0, 0.3, 12), float(rng.normal()), clip)  # fmt: skip
        (folder / f"{key}.features.npz").write_bytes(features.to_bytes())
        uris.append(str(folder / f"{key}.features.npz"))
    return uris


def bench_statistics(args, work: Path) -> dict:
    from avsync_ray.evaluation.batch import RayRunner
    from avsync_ray.evaluation.statistics import SerialRunner, SummaryOptions, summarize_evaluation
    from avsync_ray.metrics.video_metrics import DISTANCE_METRICS

    real = write_feature_files(work / "real", args.clips, args.categories, 0, 1.0)
    settings = {f"setting-{i}": write_feature_files(work / f"setting-{i}", args.clips, args.categories, i + 1, 1.0 + 0.1 * i) for i in range(args.settings)}
    options = SummaryOptions(["fid", "fvd", "ia"], args.frechet, args.samples, min_videos=2)
    init_ray(RayConfig(num_cpus=os.cpu_count(), progress_bars=False))
    start = time.perf_counter()
    serial = summarize_evaluation(real, settings, options, SerialRunner())
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    tasks = summarize_evaluation(real, settings, options, RayRunner())
    tasks_s = time.perf_counter() - start
    numbers = [(s[k], t[k]) for name in settings for s, t in [(serial.settings[name], tasks.settings[name]),
               *zip(serial.categories[name].values(), tasks.categories[name].values())] for k in s if isinstance(s[k], float)]  # fmt: skip
    largest = max(abs(a - b) / max(abs(a), 1e-12) for a, b in numbers)
    distances = len(settings) * len(DISTANCE_METRICS) * (1 + args.categories)
    return {"device": f"cpu ({os.cpu_count()} cores)", "settings": args.settings, "clips": args.clips, "categories": args.categories,
            "bootstrap_samples": args.samples, "frechet": args.frechet, "distances": distances, "serial_s": serial_s, "tasks_s": tasks_s,
            "speedup": serial_s / tasks_s, "largest_relative_difference": largest,
            "undefined": {n: list(s["undefined"]) for n, s in serial.settings.items() if s["undefined"]}}  # fmt: skip


def save_full_pipeline(folder: Path) -> None:
    """The full-size architecture with random weights, as a pipeline folder (for GPU timing only)."""
    from bench_generate import full_components
    from transformers import CLIPTextConfig, CLIPTextModel

    from avsync_ray.models.presets import tiny_tokenizer
    from avsync_ray.pipelines import AVSyncDPipeline

    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))  # fmt: skip
    AVSyncDPipeline(**full_components(torch.float32, "cpu"), text_encoder=text_encoder.eval(), tokenizer=tokenizer).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pools", nargs="+", default=["1:1", "1:2", "2", "threads:2"],
                        help="generating:feature actors of each Ray Data run, N colocated actors, or threads:N in process")
    parser.add_argument("--start", choices=["warm", "cold", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=1, help="time the serial loop and every job this many times, in turn")
    parser.add_argument("--metrics", default="fid,fvd,ia,it,relsync,alignsync")
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: each actor pool gets a GPU share")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out")
    parser.add_argument("--statistics", action="store_true", help="time the summary's statistics instead (serial vs Ray tasks)")
    parser.add_argument("--settings", type=int, default=2)
    parser.add_argument("--clips", type=int, default=450)
    parser.add_argument("--categories", type=int, default=15)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--frechet", choices=["sqrtm", "eigen"], default="sqrtm")
    parser.add_argument("--serial-config", help=argparse.SUPPRESS)  # the cold serial run's child process
    args = parser.parse_args()

    if args.serial_config:
        torch.set_num_threads(os.cpu_count() or 2)
        print(json.dumps({"clips": serial_loop(load_config(EvalConfig, "eval", path=args.serial_config))}))
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    if args.statistics:
        report({**bench_statistics(args, work), "load_average": os.getloadavg()}, args.out)
        return
    synthesize_shards(work / "shards", "test", args.videos, seed=1)
    if args.preset == "full":
        save_full_pipeline(work / "model")
    else:
        save_tiny_pipeline(work / "model")
    networks = write_tiny_feature_networks(work / "networks")
    torch.manual_seed(0)
    SyncClassifier(image_size=64, base_width=8).save_pretrained(work / "classifier")
    cpus = os.cpu_count() or 2
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0

    def config(out: str, generating: int, scoring: int, address: str | None = None, in_process: bool = False) -> EvalConfig:
        actors = generating + scoring  # scoring == 0: the generating actors score too (colocate)
        share = max(0.25, (cpus - 1) / actors)  # leave a CPU for the decode tasks
        gpu_share = gpus / actors if gpus else 0
        pools = {"generate_actor": generating, "feature_actor": max(scoring, 1)}
        overrides = [*(f"features.{k}={v}" for k, v in networks.items()), f"features.sync_classifier={work / 'classifier'}",
                     f"metrics=[{args.metrics}]", f"sampling.height={args.size}", f"sampling.width={args.size}",
                     f"sampling.num_inference_steps={args.steps}", "bootstrap.samples=0", "frechet=eigen", "tracking.enabled=false", f"colocate={scoring == 0}",
                     f"cache={work / out / 'cache'}", f"ray.num_cpus={cpus}", "ray.progress_bars=false", *([f"ray.address={address}"] if address else []),
                     f"ray.in_process={in_process}",
                     *(f"{a}.{k}" for a, n in pools.items() for k in (f"num_gpus={gpu_share}", f"num_cpus={share}", f"concurrency={n}", f"dtype={args.dtype}"))]  # fmt: skip
        return load_config(EvalConfig, "eval", overrides=overrides, values={"model": str(work / "model"), "test": str(work / "shards"),
                                                                             "output": str(work / out)})  # fmt: skip

    def timed_process(command: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        return time.perf_counter() - start

    def label(generating: int, scoring: int, in_process: bool) -> str:
        return f"{generating} threads" if in_process else f"{generating}:{scoring}" if scoring else f"{generating} colocated"

    def pool(spec: str) -> tuple[int, int, bool]:
        if spec.startswith("threads:"):
            return int(spec.split(":")[1]), 0, True
        return (int(spec), 0, False) if ":" not in spec else (*(int(n) for n in spec.split(":")), False)

    pools = [pool(spec) for spec in args.pools]
    torch.set_num_threads(cpus)
    init_ray(config("ray", 1, 1).ray)  # started before any clock runs
    clips = args.videos * 3
    seconds: dict[str, dict[str, list[float]]] = {}
    for repeat in range(args.repeats):  # the serial loop and each job in turn, so a slow spell of the machine hits all of them
        if args.start in ("warm", "both"):
            runs = seconds.setdefault("warm", {})
            start = time.perf_counter()
            clips = serial_loop(config(f"serial-warm-{repeat}", 1, 1))
            runs.setdefault("serial", []).append(time.perf_counter() - start)
            for generating, scoring, in_process in pools:
                name = label(generating, scoring, in_process)
                start = time.perf_counter()
                run_eval(config(f"warm-{name}-{repeat}".replace(" ", "-"), generating, scoring, in_process=in_process))
                runs.setdefault(name, []).append(time.perf_counter() - start)
        if args.start in ("cold", "both"):
            import ray

            address = ray.get_runtime_context().gcs_address
            runs = seconds.setdefault("cold", {})
            serial = save_config(config(f"serial-cold-{repeat}", 1, 1), work / f"serial-{repeat}.yaml")
            runs.setdefault("serial", []).append(timed_process([sys.executable, __file__, "--serial-config", serial]))
            for generating, scoring, in_process in pools:
                name = label(generating, scoring, in_process)
                out = f"cold-{name}-{repeat}".replace(" ", "-")
                path = save_config(config(out, generating, scoring, None if in_process else address, in_process), work / f"{out}.yaml")
                runs.setdefault(name, []).append(timed_process([sys.executable, "-m", "avsync_ray", "eval", str(work / "model"), str(work / "shards"),
                                                                "--out", str(work / out), "--config", path]))  # fmt: skip
    # Each repeat's ratio against the serial run just before it: the spread is what a person should expect.
    ratios = {start: {name: [s / t for s, t in zip(runs["serial"], times)] for name, times in runs.items() if name != "serial"} for start, runs in seconds.items()}
    result = {
        "device": torch.cuda.get_device_name() if gpus else f"cpu ({cpus} cores)",
        "preset": args.preset,
        "videos": args.videos,
        "clips": clips,
        "steps": args.steps,
        "size": args.size,
        "metrics": args.metrics,
        "repeats": args.repeats,
        "seconds": seconds,
        "clips_per_s": {start: {path: clips / statistics.median(times) for path, times in runs.items()} for start, runs in seconds.items()},
        "speedup_vs_serial": {start: {path: {"median": statistics.median(r), "min": min(r), "max": max(r)} for path, r in runs.items()}
                              for start, runs in ratios.items()},  # fmt: skip
    }
    report({**result, "load_average": os.getloadavg()}, args.out)


if __name__ == "__main__":
    main()
