"""Clips per second of ``avsync eval`` on Ray Data against a serial per-clip loop like the official scripts
(``animation_gen.py`` then ``animation_eval.py``: batch 1, one clip at a time, generate, write the mp4, read it
back, run each feature network on it), in the same process, and the Ray Data job's scaling with actors.

Both paths do the same work on the same clips: decode the real clips, generate, encode, decode, score real and
generated clips with every network of ``--metrics``. CPU: the tiny pipeline and tiny random feature networks
(the FID Inception at its real size, whose layout fixes every shape).

    python benchmarks/bench_eval.py --videos 4 --steps 5 --actors 1 2
    python benchmarks/bench_eval.py --preset full --device cuda --videos 8 --steps 50 --size 256 --actors 1 2

``--preset full`` saves the full-size AVSyncD architecture with random weights (SD1.5-sized UNet and VAE, a
CLIP-L-sized text encoder, ImageBind-huge's audio branch) as the model; the feature networks stay the small random
ones (the FID Inception at its real size). On a GPU each actor pool gets half of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from timing import report

from avsync_ray.config.base import load_config
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.evaluation.batch import run_eval
from avsync_ray.evaluation.clips import eval_clip_rows, from_bytes
from avsync_ray.evaluation.generation import ClipGenerator, generation_row
from avsync_ray.evaluation.plan import list_eval_inputs, plan_settings
from avsync_ray.evaluation.scoring import FeatureNetworks, read_generated
from avsync_ray.metrics.protocol import clip_seed, float_frames
from avsync_ray.models.feature_networks import write_tiny_feature_networks
from avsync_ray.models.sync_classifier import SyncClassifier
from avsync_ray.pipelines.presets import save_tiny_pipeline
from avsync_ray.ray_runtime import init_ray
from avsync_ray.synth import synthesize_shards


def serial_loop(config: EvalConfig) -> int:
    """The official scripts' structure: every clip alone, generation first, then each clip's features."""
    setting = plan_settings(config)[0]
    settings = {setting.name: {"kind": setting.kind, "sampling": setting.sampling.model_dump()}}
    folder = {setting.name: f"{config.output}/generated/{setting.name}"}
    generator = ClipGenerator(config.model, config.tracking.uri, config.generate_actor, settings, 1, folder)
    networks = FeatureNetworks(config.features, config.metrics, torch.device(config.feature_actor.device if config.feature_actor.num_gpus else "cpu"))
    items, _ = list_eval_inputs(config)
    sampling = config.sampling
    clips = 0
    for item in items:
        for gt in eval_clip_rows(item.to_row(), sampling.num_frames, sampling.fps, (sampling.height, sampling.width), config.clips_per_video):
            job = generation_row(gt, setting.name, clip_seed(sampling.seed, gt["video"], gt["clip"]))
            path = generator({k: [v] for k, v in job.items()})["path"][0]
            frames, audio = read_generated(path, sampling.num_frames, sampling.fps)
            networks.clip_features([(float_frames(from_bytes(gt["frames"])), from_bytes(gt["audio"]), gt["category"])], config.protocol)
            networks.clip_features([(float_frames(frames), audio, gt["category"])], config.protocol)
            clips += 1
    return clips


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
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actors per pool for the Ray Data runs")
    parser.add_argument("--metrics", default="fid,fvd,ia,it,relsync,alignsync")
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: each actor pool gets a GPU share")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
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

    def config(out: str, actors: int) -> EvalConfig:
        share = max(0.25, (cpus - 1) / (2 * actors))  # leave a CPU for the decode tasks
        gpu_share = gpus / (2 * actors) if gpus else 0
        overrides = [*(f"features.{k}={v}" for k, v in networks.items()), f"features.sync_classifier={work / 'classifier'}",
                     f"metrics=[{args.metrics}]", f"sampling.height={args.size}", f"sampling.width={args.size}",
                     f"sampling.num_inference_steps={args.steps}", "bootstrap.samples=0", "frechet=eigen", "tracking.enabled=false",
                     f"cache={work / out / 'cache'}", f"ray.num_cpus={cpus}", "ray.progress_bars=false",
                     *(f"{a}.{k}" for a in ("generate_actor", "feature_actor") for k in (f"num_gpus={gpu_share}", f"num_cpus={share}",
                                                                                          f"concurrency={actors}", f"dtype={args.dtype}"))]  # fmt: skip
        return load_config(EvalConfig, "eval", overrides=overrides, values={"model": str(work / "model"), "test": str(work / "shards"),
                                                                             "output": str(work / out)})  # fmt: skip

    torch.set_num_threads(cpus)
    init_ray(config("ray", 1).ray)  # started before either clock runs
    start = time.perf_counter()
    clips = serial_loop(config("serial", 1))
    serial_rate = clips / (time.perf_counter() - start)
    rates = {}
    for actors in args.actors:
        start = time.perf_counter()
        summary = run_eval(config(f"ray-{actors}", actors))
        rates[actors] = summary["clips"] / (time.perf_counter() - start)
    result = {
        "device": torch.cuda.get_device_name() if gpus else f"cpu ({cpus} cores)",
        "preset": args.preset,
        "videos": args.videos,
        "clips": clips,
        "steps": args.steps,
        "size": args.size,
        "metrics": args.metrics,
        "clips_per_s_serial": serial_rate,
        "clips_per_s_ray": {str(k): v for k, v in rates.items()},
        "speedup_vs_serial": {str(k): v / serial_rate for k, v in rates.items()},
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
