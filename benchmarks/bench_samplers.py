"""How close each sampler at few steps comes to the official PNDM at 50 steps, on the same initial latents and inputs.

For each conditioning clip (held-out synthetic clips: first frame, audio and class prompt, loaded as ``avsync
generate`` loads a video), one unit-noise draw and one first-frame latent are shared by every sampler; each sampler
scales the noise by its own initial sigma for its timesteps, then denoises. The measure is the mean absolute
difference of the decoded frames 1.. (frame 0 is the input image) to PNDM-50's, in [0, 1] units, next to two
yardsticks measured the same way: two PNDM-50 videos from different noise draws (how far apart two valid samples
of the model are) and PNDM at 100 steps (how far PNDM-50 itself is from its own converged answer). Wall time per
animation and the speed-up over PNDM-50 come from the same process.

    python benchmarks/bench_samplers.py --model demo_out/models/avsyncd         # a trained pipeline folder
    python benchmarks/bench_samplers.py --preset full --device cuda --dtype bfloat16   # full size, random weights
    python benchmarks/bench_samplers.py --preset full --size 64 --steps 10,25    # a reduced full-size run on a CPU

With random weights (``--preset full``) the UNet is not a denoiser: the comparison then measures how each solver's
discretisation error shrinks with steps on the real architecture, shapes and noise schedule, not whether it keeps
a trained model's sample quality.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from timing import report, synchronize

from avsync_ray.conditioning import load_conditioning
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.devices import resolve_device, torch_dtype
from avsync_ray.media import encode_mp4
from avsync_ray.pipelines import AVSyncDPipeline
from avsync_ray.pipelines.loading import load_pipeline
from avsync_ray.pipelines.schedulers import SCHEDULERS, make_scheduler
from avsync_ray.synth import generate_clip

REFERENCE = ("pndm", 50)


def conditioning_clips(count: int, config: GenerateConfig, seed: int) -> list[tuple]:
    """``count`` synthetic in-sync clips (seed ``seed``: not the training corpus's 0), as (conditioning, prompt)."""
    clips = []
    with tempfile.TemporaryDirectory(prefix="bench-samplers-") as folder:
        for index in range(count):
            clip = generate_clip("sync", seed=seed, index=index)
            path = os.path.join(folder, f"{index}.mp4")
            encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, path)
            clips.append((load_conditioning(config, video=path), clip.label))
    return clips


@torch.no_grad()
def initial_latents(pipe, image: np.ndarray, config: GenerateConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-frame latent (1, 4, 1, h, w), unit noise (1, 4, f-1, h, w)), drawn in the pipeline's own order."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, config.num_frames - 1, config.height // pipe.vae_scale_factor, config.width // pipe.vae_scale_factor)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    pixels = pipe.image_processor.preprocess(image, height=config.height, width=config.width)
    return pipe.encode_image(pixels, generator, device).to(dtype).unsqueeze(2), noise


def animate(pipe, base_scheduler_config, name: str, steps: int, *, first, noise, audio, condition: dict) -> tuple[np.ndarray, float]:
    """Frames (f, H, W, 3) in [0, 1] from sampler ``name`` at ``steps``, and the wall seconds it took."""
    pipe.scheduler = make_scheduler(name, base_scheduler_config)
    probe = make_scheduler(name, base_scheduler_config)
    probe.set_timesteps(steps)
    latents = torch.cat([first, noise * probe.init_noise_sigma], dim=2)
    synchronize(pipe.device.type)
    started = time.perf_counter()
    frames = pipe(audio=audio, latents=latents, num_inference_steps=steps, num_frames=latents.shape[2], output_type="np", **condition).frames[0]
    synchronize(pipe.device.type)
    return frames, time.perf_counter() - started


def frame_difference(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean |difference| of frames 1.. in [0, 1] units."""
    return float(np.abs(frames[1:].astype(np.float64) - reference[1:]).mean())


def build_pipeline(args) -> tuple[AVSyncDPipeline, str]:
    if args.model:
        return load_pipeline(args.model, args.device, args.dtype), f"trained pipeline {args.model}"
    from bench_generate import full_components

    device = resolve_device(args.device)
    pipe = AVSyncDPipeline(**full_components(torch_dtype(args.dtype), str(device)))
    pipe.set_progress_bar_config(disable=True)
    return pipe, "full-size AVSyncD architecture, random weights (SD1.5 UNet + temporal/audio modules, SD1.5 VAE, ImageBind-huge audio)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a pipeline folder (e.g. a trained tiny model's export)")
    parser.add_argument("--preset", choices=["full"], help="instead of --model: the full-size architecture with random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, help="frame side in pixels (default: 64 for --model, 256 for --preset full)")
    parser.add_argument("--clips", type=int, default=3, help="conditioning clips (each gets its own noise)")
    parser.add_argument("--schedulers", default=",".join(name for name in SCHEDULERS if name != "pndm") + ",pndm")
    parser.add_argument("--steps", default="10,15,20,25")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out clips and of the noise")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if bool(args.model) == bool(args.preset):
        raise SystemExit("give either --model FOLDER or --preset full")

    pipe, model = build_pipeline(args)
    size = args.size or (256 if args.preset else 64)
    config = GenerateConfig(height=size, width=size)
    base = pipe.scheduler.config
    prompt_embeds = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)) if args.preset else None
    candidates = [(name, int(steps)) for name in args.schedulers.split(",") for steps in args.steps.split(",")]
    differences: dict[str, list[float]] = {f"{name}-{steps}": [] for name, steps in candidates}
    seconds: dict[str, list[float]] = {f"{name}-{steps}": [] for name, steps in [*candidates, REFERENCE]}
    yardsticks: dict[str, list[float]] = {"pndm-50, other noise": [], "pndm-100": []}

    for index, (conditioning, prompt) in enumerate(conditioning_clips(args.clips, config, args.seed)):
        condition = {"prompt_embeds": prompt_embeds} if prompt_embeds is not None else {"prompt": prompt}
        first, noise = initial_latents(pipe, conditioning.image, config, seed=args.seed * 1000 + index)
        inputs = dict(first=first, audio=conditioning.audio, condition=condition)
        reference, took = animate(pipe, base, *REFERENCE, noise=noise, **inputs)
        seconds["pndm-50"].append(took)
        other_noise = initial_latents(pipe, conditioning.image, config, seed=args.seed * 1000 + index + 500)[1]
        yardsticks["pndm-50, other noise"].append(frame_difference(animate(pipe, base, "pndm", 50, noise=other_noise, **inputs)[0], reference))
        yardsticks["pndm-100"].append(frame_difference(animate(pipe, base, "pndm", 100, noise=noise, **inputs)[0], reference))
        for name, steps in candidates:
            frames, took = animate(pipe, base, name, steps, noise=noise, **inputs)
            differences[f"{name}-{steps}"].append(frame_difference(frames, reference))
            seconds[f"{name}-{steps}"].append(took)
        print(f"clip {index + 1}/{args.clips} done", flush=True)

    reference_s = statistics.median(seconds["pndm-50"])
    rows = [
        {
            "scheduler": name, "steps": steps,
            "mean_abs_frame_difference": round(statistics.mean(differences[f"{name}-{steps}"]), 5),
            "range_over_clips": [round(min(differences[f"{name}-{steps}"]), 5), round(max(differences[f"{name}-{steps}"]), 5)],
            "seconds_per_animation": round(statistics.median(seconds[f"{name}-{steps}"]), 3),
            "speedup_over_pndm50": round(reference_s / statistics.median(seconds[f"{name}-{steps}"]), 2),
        }
        for name, steps in candidates
    ]  # fmt: skip
    result = {
        "model": model,
        "device": str(pipe.device) + (f" ({torch.cuda.get_device_name()})" if pipe.device.type == "cuda" else ""),
        "dtype": args.dtype, "size": size, "frames": config.num_frames, "clips": args.clips,
        "audio_guidance_scale": config.audio_guidance_scale,
        "reference": "pndm-50", "pndm50_seconds_per_animation": round(reference_s, 3),
        "yardsticks": {name: {"mean": round(statistics.mean(v), 5), "range": [round(min(v), 5), round(max(v), 5)]} for name, v in yardsticks.items()},
        "rows": rows,
    }  # fmt: skip
    report(result, args.out)
    print(f"\n{'sampler':16} {'steps':>5} {'MAD to PNDM-50':>15} {'range over clips':>20} {'s/anim':>8} {'speed-up':>9}")
    for row in rows:
        low, high = row["range_over_clips"]
        print(f"{row['scheduler']:16} {row['steps']:5d} {row['mean_abs_frame_difference']:15.5f} {f'{low:.5f}-{high:.5f}':>20} "
              f"{row['seconds_per_animation']:8.3f} {row['speedup_over_pndm50']:8.2f}x")  # fmt: skip
    for name, values in result["yardsticks"].items():
        print(f"yardstick {name}: {values['mean']:.5f} ({values['range'][0]:.5f}-{values['range'][1]:.5f})")


if __name__ == "__main__":
    main()
