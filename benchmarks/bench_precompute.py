"""Training input cost per sample: decoding and encoding every clip versus reading ``avsync precompute``'s features.

The same samples of synthetic shards, at the paper's geometry (12 frames at 256x256) with the full-size frozen
encoders (SD1.5 VAE, ImageBind-huge audio branch; random weights, which do not change the speed), back to back
in one process:

- decode path (``precomputed=false``): ``avsyncd_sample`` (mp4 decode, resize and crop, mel; also timed alone:
  the DataLoader's share), then the VAE moments of the 12 frames, ImageBind's tokens and one latent draw, as
  ``AVSyncDTask`` does every step;
- precomputed path (``precomputed=true``): ``precomputed_sample`` (two float16 ``.npy`` members) and one latent
  draw from the stored moments.

It also times the one-time precompute of those samples (with ``--windows`` windows, unflipped) and reports the
bytes the features add per sample.

    python benchmarks/bench_precompute.py                       # CPU, fp32
    python benchmarks/bench_precompute.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial

import numpy as np
import torch
from bench_generate import full_frozen_encoders
from timing import report, synchronize


def per_sample_seconds(fn, samples: list[dict], device: str) -> float:
    """Median seconds of ``fn(sample)`` over the samples, after one untimed warm-up call."""
    fn(samples[0])
    times = []
    for sample in samples:
        synchronize(device)
        start = time.perf_counter()
        fn(sample)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="samples timed per path")
    parser.add_argument("--size", type=int, default=256, help="clip height and width")
    parser.add_argument("--windows", type=int, default=1, help="windows per sample the precompute stores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    from avsync_ray.config.train import PrecomputeConfig
    from avsync_ray.examples import avsyncd_sample, precomputed_sample
    from avsync_ray.shards import read_samples
    from avsync_ray.synth import synthesize_shards
    from avsync_ray.training.features import precompute_shard, sample_features
    from avsync_ray.training.objectives import sample_video_latents, vae_moments

    dtype = getattr(torch, args.dtype)
    encoders = full_frozen_encoders(dtype, args.device)
    vae, audio_encoder = encoders["vae"], encoders["audio_encoder"]
    scaling = vae.config.scaling_factor
    generator = torch.Generator(args.device).manual_seed(0)
    rng = np.random.default_rng(0)

    @torch.no_grad()
    def decode_path(raw: dict) -> None:
        sample = avsyncd_sample(raw, rng, size=(args.size, args.size))
        moments = vae_moments(vae, sample["video"][None].to(args.device))
        audio_encoder(sample["mel"][None].to(args.device, dtype))
        sample_video_latents(moments, scaling, generator)

    @torch.no_grad()
    def precomputed_path(raw: dict) -> None:
        sample = precomputed_sample(raw, rng)
        sample_video_latents(sample["vae_moments"][None].to(args.device), scaling, generator)
        sample["audio_tokens"].to(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as folder:
        synthesize_shards(f"{folder}/shards", "train", args.samples, seed=0, clips_per_shard=args.samples)
        source = read_samples(f"{folder}/shards/train-000000.tar")
        config = PrecomputeConfig.model_validate(
            {"input": {"root": f"{folder}/shards"}, "output": f"{folder}/out", "model": {"init": "tiny"}, "height": args.size, "width": args.size,
             "windows_per_clip": args.windows, "flip_variants": False, "batch_size": 12}  # fmt: skip
        )
        featurize = partial(sample_features, vae=vae, audio_encoder=audio_encoder, config=config)
        started = time.perf_counter()
        entry = precompute_shard(f"{folder}/shards/train-000000.tar", f"{folder}/out/train-000000.tar", featurize)
        precompute_seconds = (time.perf_counter() - started) / args.samples
        featurized = read_samples(f"{folder}/out/train-000000.tar")
        feature_bytes = statistics.mean(len(s["vae_moments.npy"]) + len(s["audio_tokens.npy"]) for s in featurized)
        media_bytes = statistics.mean(len(s["mp4"]) + len(s["wav"]) for s in source)
        decode_seconds = per_sample_seconds(decode_path, source, args.device)
        data_seconds = per_sample_seconds(lambda raw: avsyncd_sample(raw, rng, size=(args.size, args.size)), source, args.device)
        precomputed_seconds = per_sample_seconds(precomputed_path, featurized, args.device)

    result = {
        "setup": f"{args.samples} synthetic samples (96x128 source video), 12 frames at {args.size}x{args.size}, full-size SD1.5 VAE + "
        f"ImageBind-huge audio, {args.dtype} on {args.device}",
        "decode_path_s_per_sample": round(decode_seconds, 4),
        "of_which_clip_decode_s": round(data_seconds, 4),
        "precomputed_path_s_per_sample": round(precomputed_seconds, 5),
        "speedup": round(decode_seconds / precomputed_seconds, 1),
        "precompute_s_per_sample": round(precompute_seconds, 3),
        "windows_per_sample": args.windows,
        "feature_bytes_per_sample": int(feature_bytes),
        "media_bytes_per_sample": int(media_bytes),
        "samples_written": entry["nsamples"],
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
