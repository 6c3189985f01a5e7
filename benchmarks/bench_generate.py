"""Time per animation, and the speed-up of running the guidance branches as one batched UNet call.

CPU: the ``tiny`` preset. GPU (when present): the full-size AVSyncD architecture (SD1.5 UNet + FF conv /
temporal / audio modules, SD1.5 VAE, ImageBind-huge audio branch) with random weights, in bf16 and fp16.
Both numbers of each ratio come from the same process, back to back.

    python benchmarks/bench_generate.py                 # tiny preset on CPU
    python benchmarks/bench_generate.py --preset full   # full size on the GPU (needs CUDA)
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from avsync_ray.models.audio_encoder import ImageBindAudioEncoder
from avsync_ray.models.presets import SD15_SCHEDULER_CONFIG, tiny_components
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel
from avsync_ray.pipelines import AVSyncDPipeline
from timing import median_seconds


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


@torch.no_grad()
def animation_seconds(pipe, size: int, text_dim: int, steps: int, device: str, repeats: int) -> float:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    audio = (rng.standard_normal(40_000) * 0.1).astype(np.float32)
    prompt_embeds = torch.randn(1, 77, text_dim, generator=torch.Generator().manual_seed(0))

    def animate():
        pipe(image=image, audio=audio, prompt_embeds=prompt_embeds, num_inference_steps=steps, audio_guidance_scale=4.0,
             generator=torch.Generator(device=device).manual_seed(123), output_type="np")  # fmt: skip

    return median_seconds(animate, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="bfloat16,float16", help="full preset only")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    results = {"preset": args.preset, "steps": args.steps, "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    rows = []
    if args.preset == "tiny":
        device, size = "cpu", 64
        results["threads"] = torch.get_num_threads()
        components = tiny_components(seed=0)
        pipe = AVSyncDPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        audio_dim = components["audio_encoder"].imagebind_config.audio_embed_dim
        ratio = guidance_ratio(pipe.unet, 32, audio_dim, size // 8, device, torch.float32, args.repeats * 5)
        rows.append({"dtype": "float32", "device": device, "size": size, **ratio,
                     "animation_s": animation_seconds(pipe, size, 32, args.steps, device, args.repeats)})  # fmt: skip
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--preset full needs a CUDA GPU")
        device, size = "cuda", 256
        results["gpu"] = torch.cuda.get_device_name()
        for name in args.dtypes.split(","):
            dtype = getattr(torch, name)
            pipe = AVSyncDPipeline(**full_components(dtype, device))
            pipe.set_progress_bar_config(disable=True)
            torch.cuda.reset_peak_memory_stats()
            ratio = guidance_ratio(pipe.unet, 768, 768, size // 8, device, dtype, args.repeats * 5)
            animation = animation_seconds(pipe, size, 768, args.steps, device, args.repeats)
            rows.append({"dtype": name, "device": device, "size": size, **ratio, "animation_s": animation,
                         "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30})  # fmt: skip
            del pipe
            torch.cuda.empty_cache()
    results["rows"] = rows
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))
    print(f"{'dtype':9} {'size':>5} {'animation (s)':>14} {'UNet step batched (ms)':>23} {'two calls (ms)':>15} {'speed-up':>9}")
    for row in rows:
        print(
            f"{row['dtype']:9} {row['size']:5d} {row['animation_s']:14.3f} {row['unet_step_batched_s'] * 1e3:23.2f} "
            f"{row['unet_step_two_calls_s'] * 1e3:15.2f} {row['batched_speedup']:8.2f}x"
        )


if __name__ == "__main__":
    main()
