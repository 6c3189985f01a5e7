"""Time per animation, eager against compiled, side by side in one process.

One animation = 12 frames at 6 fps, audio guidance 4.0 (two branches batched into one UNet call), text guidance
off, VAE decode of all frames. Rows, each measured back to back in this process:

- eager and compiled (``GenerateConfig.compile``: torch.compile of the UNet and the VAE decoder, CUDA graphs on a
  GPU with ``--compile-mode reduce-overhead``) at the official 50 PNDM steps; the compiled row's first call, which
  compiles, is reported separately from its steady state;
- the same two with a few-step sampler (``--fast``, default ``dpmpp-2m-karras:20``; it reuses the compiled graphs);
- throughput: batches of animations per call (``--batch-sizes``), animations per second and peak GPU memory;
- the eager UNet step with the two guidance branches stacked versus two separate calls.

CPU: the ``tiny`` preset. GPU: the full-size AVSyncD architecture (SD1.5 UNet + FF conv / temporal / audio
modules, SD1.5 VAE, ImageBind-huge audio branch) with random weights (speed does not depend on them).

    python benchmarks/bench_generate.py                                  # tiny preset on CPU
    python benchmarks/bench_generate.py --preset full --dtypes bfloat16  # full size on the GPU (needs CUDA)
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from timing import median_seconds, report, synchronize

from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.models.audio_encoder import ImageBindAudioEncoder
from avsync_ray.models.presets import SD15_SCHEDULER_CONFIG, tiny_components
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel
from avsync_ray.pipelines import AVSyncDPipeline
from avsync_ray.pipelines.sampling import configure_pipeline


def full_frozen_encoders(dtype: torch.dtype, device: str) -> dict:
    """The SD1.5 VAE and the ImageBind-huge audio branch at full size with random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )  # fmt: skip
    audio_encoder = ImageBindAudioEncoder(n_segment=12, pretrained_model_name="imagebind-huge")
    return {"vae": vae.to(device=device, dtype=dtype).eval(), "audio_encoder": audio_encoder.to(device=device, dtype=dtype).eval()}


def full_components(dtype: torch.dtype, device: str) -> dict:
    """The official architecture at full size with random weights (no text encoder: prompt_embeds are given)."""
    from diffusers import PNDMScheduler

    encoders = full_frozen_encoders(dtype, device)
    unet = AVSyncDUNet3DModel(sample_size=32).to(device=device, dtype=dtype)
    return dict(**encoders, unet=unet, scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG))


@torch.no_grad()
def guidance_ratio(unet, text_dim: int, audio_dim: int, size: int, device: str, dtype, repeats: int) -> dict:
    """One UNet call on the stacked [null audio, audio] batch versus two calls of batch 1, as in one step."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    latent = torch.randn(1, 4, 12, size, size, generator=generator).to(device, dtype)
    text = torch.randn(1, 77, text_dim, generator=generator).to(device, dtype)
    audio = torch.randn(2, 229, audio_dim, generator=generator).to(device, dtype)
    masks = torch.ones(2, 12, 229, dtype=torch.bool, device=device)
    t = torch.tensor(500, device=device)

    def batched():
        unet(latent.repeat(2, 1, 1, 1, 1), t, text.repeat(2, 1, 1), audio, audio_attention_mask=masks)

    def separate():
        for branch in range(2):
            unet(latent, t, text, audio[branch : branch + 1], audio_attention_mask=masks[branch : branch + 1])

    separate_s = median_seconds(separate, device, repeats)
    batched_s = median_seconds(batched, device, repeats)
    return {"unet_step_batched_s": batched_s, "unet_step_two_calls_s": separate_s, "batched_speedup": separate_s / batched_s}


def animation_call(pipe, batch: int, size: int, text_dim: int, steps: int, device: str):
    """A call that makes ``batch`` animations (random image, audio and prompt embeddings; seeded)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
    audios = [(rng.standard_normal(40_000) * 0.1).astype(np.float32) for _ in range(batch)]
    prompt_embeds = torch.randn(batch, 77, text_dim, generator=torch.Generator().manual_seed(0))

    def animate():
        generators = [torch.Generator(device=device).manual_seed(123 + i) for i in range(batch)]
        pipe(image=images, audio=audios, prompt_embeds=prompt_embeds, num_inference_steps=steps, audio_guidance_scale=4.0,
             generator=generators, output_type="np")  # fmt: skip

    return animate


def measure(pipe, config: GenerateConfig, batch: int, size: int, text_dim: int, device: str, repeats: int) -> dict:
    """Configure ``pipe`` by ``config``; time its first call (which compiles, when compiled) and the steady state."""
    configure_pipeline(pipe, config)
    animate = animation_call(pipe, batch, size, text_dim, config.num_inference_steps, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    started = time.perf_counter()
    animate()
    synchronize(device)
    first_call = time.perf_counter() - started
    steady = median_seconds(animate, device, repeats, warmup=1 if config.compile else 0)
    return {
        "mode": f"compiled ({config.compile_mode})" if config.compile else "eager",
        "scheduler": config.scheduler, "steps": config.num_inference_steps, "batch": batch,
        "first_call_s": round(first_call, 3), "compile_s": round(first_call - steady, 1) if config.compile else None,
        "seconds_per_call": round(steady, 4), "seconds_per_animation": round(steady / batch, 4),
        "animations_per_s": round(batch / steady, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }  # fmt: skip


def rows_for(pipe, args, size: int, text_dim: int, device: str) -> list[dict]:
    fast_name, fast_steps = args.fast.split(":")
    official = GenerateConfig(compile_mode=args.compile_mode)
    fast = official.model_copy(update={"scheduler": fast_name, "num_inference_steps": int(fast_steps)})
    variants = [official, official.model_copy(update={"compile": True})] if args.compile else [official]
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for base in variants:
            configs = [base, fast.model_copy(update={"compile": base.compile})] if batch == 1 else [base]
            for config in configs:
                rows.append(measure(pipe, config, batch, size, text_dim, device, args.repeats))
                print(json.dumps(rows[-1]), flush=True)
    configure_pipeline(pipe, official)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="bfloat16", help="full preset only")
    parser.add_argument("--batch-sizes", default="1", help="animations per call; batch 1 also runs the --fast sampler")
    parser.add_argument("--fast", default="dpmpp-2m-karras:20", help="few-step sampler and steps (the match bench_samplers.py found)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    results = {"preset": args.preset, "machine": platform.processor() or platform.machine()}
    rows = []
    if args.preset == "tiny":
        device, size = "cpu", 64
        results["threads"] = torch.get_num_threads()
        components = tiny_components(seed=0)
        pipe = AVSyncDPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        audio_dim = components["audio_encoder"].imagebind_config.audio_embed_dim
        results["guidance_batching"] = {"float32": guidance_ratio(pipe.unet, 32, audio_dim, size // 8, device, torch.float32, args.repeats * 5)}
        rows += [{"dtype": "float32", "size": size, **row} for row in rows_for(pipe, args, size, 32, device)]
    else:
        results["guidance_batching"] = {}
        if not torch.cuda.is_available():
            raise SystemExit("--preset full needs a CUDA GPU")
        device, size = "cuda", 256
        results["gpu"] = torch.cuda.get_device_name()
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            pipe = AVSyncDPipeline(**full_components(dtype, device))
            pipe.set_progress_bar_config(disable=True)
            results["guidance_batching"][name] = guidance_ratio(pipe.unet, 768, 768, size // 8, device, dtype, args.repeats * 5)
            rows += [{"dtype": name, "size": size, **row} for row in rows_for(pipe, args, size, 768, device)]
            del pipe
            torch.cuda.empty_cache()
    results["rows"] = rows
    report(results, args.out)
    print(f"\n{'dtype':9} {'mode':26} {'sampler':>16} {'batch':>5} {'s/animation':>12} {'anim/s':>8} {'compile (s)':>12} {'peak GiB':>9}")
    for row in rows:
        compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        memory = "" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        print(f"{row['dtype']:9} {row['mode']:26} {row['scheduler'] + '-' + str(row['steps']):>16} {row['batch']:5d} "
              f"{row['seconds_per_animation']:12.3f} {row['animations_per_s']:8.2f} {compile_s:>12} {memory:>9}")  # fmt: skip
    for dtype, ratio in results["guidance_batching"].items():
        print(f"{dtype}: eager UNet step, branches batched {ratio['unet_step_batched_s'] * 1e3:.1f} ms, two calls "
              f"{ratio['unet_step_two_calls_s'] * 1e3:.1f} ms ({ratio['batched_speedup']:.2f}x)")  # fmt: skip
    for dtype in dict.fromkeys(row["dtype"] for row in rows):
        by_key = {(r["mode"].startswith("compiled"), r["scheduler"], r["steps"], r["batch"]): r for r in rows if r["dtype"] == dtype}
        for (compiled, scheduler, steps, batch), row in by_key.items():
            eager = by_key.get((False, scheduler, steps, batch))
            if compiled and eager:
                print(f"{dtype}: {scheduler}-{steps} batch {batch}: compiled / eager time per animation = "
                      f"{row['seconds_per_animation'] / eager['seconds_per_animation']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
