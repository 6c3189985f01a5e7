"""Training cost: ZeRO-0 versus ZeRO-2 on 2 Ray Train CPU workers, and one full-size AVSyncD step on a GPU.

CPU (default): the sync classifier at twice the official width (base width 128, 32 px frames, 5 clips, batch 2 per worker)
trained for a few steps on synthetic shards under ZeRO-0 and then ZeRO-2, back to back in one process; the loop's
own metrics give samples/s (the second logging window, after warm-up) and the largest rank's peak and current
(after the steps) resident memory.

GPU (``--gpu``, needs CUDA and DeepSpeed): the full-size AVSyncD architecture with random weights (SD1.5 UNet
inflated, SD1.5 VAE, ImageBind-huge audio branch), DeepSpeed ZeRO-2 bf16 training steps at batch B x 12 x 256 x 256,
exactly the training loop's computation (frozen encoders included, or precomputed features with ``--precomputed``),
eager (gradient checkpointing, as before) and optimized (UNet compiled inside the engine, fused AdamW,
checkpointing only where memory needs it) back to back: first step (the compile), median step time, samples/s,
peak memory, and model FLOPs utilisation (FLOPs of one step counted by torch without recomputation, over the GPU's
dense bf16 peak).

    python benchmarks/bench_train.py                 # CPU, ZeRO-0 vs ZeRO-2
    python benchmarks/bench_train.py --gpu --batch-size 8   # GPU, full-size steps, eager and optimized
    python benchmarks/bench_train.py --tiny-steps           # the same comparison with the tiny preset on the CPU
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import torch
from timing import median_seconds, report, synchronize

# Dense bf16 tensor-core peaks (NVIDIA datasheets; the PCIe H100 before the SXM one it would otherwise match).
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def cpu_zero_comparison(steps: int, base_width: int) -> dict:
    from mlflow.tracking import MlflowClient

    from avsync_ray.config.base import load_config
    from avsync_ray.config.train import TrainSyncConfig
    from avsync_ray.synth import synthesize_shards
    from avsync_ray.training.engine import read_checkpoint_meta
    from avsync_ray.training.launcher import launch

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        synthesize_shards(folder, "train", 8, seed=0)
        tracking = f"sqlite:///{folder}/mlruns.db"
        for stage in (0, 2):
            config = load_config(
                TrainSyncConfig,
                "train-sync-tiny",
                overrides=[
                    f"data.root={folder}", f"run.storage_path={folder}/runs", f"run.name=zero{stage}", f"tracking.uri={tracking}",
                    f"deepspeed.zero_stage={stage}", f"model.base_width={base_width}", "model.image_size=32", "clips.num_clips=5",
                    "loader.batch_size=2", f"max_steps={steps}", f"checkpoint.every_n_steps={steps}", f"log_every_n_steps={steps // 2}",
                ],
            )  # fmt: skip
            result = launch(config, "sync-classifier")
            run_id = read_checkpoint_meta(result["checkpoint"])["mlflow_run_id"]
            client = MlflowClient(tracking)
            steady = {name: client.get_metric_history(run_id, name)[-1].value for name in ("samples_per_s", "memory/peak_mb", "memory/current_mb")}
            results[f"zero{stage}"] = {
                "samples_per_s": round(steady["samples_per_s"], 3),
                "peak_rss_mb_max_rank": round(steady["memory/peak_mb"]),
                "rss_after_steps_mb_max_rank": round(steady["memory/current_mb"]),
            }
    zero0, zero2 = results["zero0"], results["zero2"]
    from avsync_ray.models.sync_classifier import SyncClassifier

    parameters = sum(p.numel() for p in SyncClassifier(base_width=base_width).parameters())
    return {
        "model": f"SyncClassifier base_width {base_width} ({parameters / 1e6:.1f} M parameters; 64 is the official size), 32 px, "
        "5 clips, batch 2 per worker, fp32, 2 gloo workers",
        "steps": steps,
        **results,
        "zero2_over_zero0": {
            "samples_per_s": round(zero2["samples_per_s"] / zero0["samples_per_s"], 3),
            "peak_rss": round(zero2["peak_rss_mb_max_rank"] / zero0["peak_rss_mb_max_rank"], 3),
            "rss_after_steps": round(zero2["rss_after_steps_mb_max_rank"] / zero0["rss_after_steps_mb_max_rank"], 3),
        },
    }


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name`` (None when unknown)."""
    return next((value for key, value in PEAK_BF16_FLOPS.items() if key in device_name), None)


def training_step(preset: str, repeats: int, batch_size: int, optimized: bool, checkpointing: bool, precomputed: bool,
                  flops: float | None = None) -> dict:
    """Training steps of AVSyncD as ``training.loops.AVSyncDTask`` computes them: ``full`` on the GPU (the full-size
    architecture, random weights, 12 x 256 x 256, bf16 engine and frozen encoders) or ``tiny`` on the CPU (the tiny
    preset, 12 x 64 x 64, fp32), in one DeepSpeed ZeRO-2 process; the Stable Diffusion layers frozen.

    Eager: the previous recipe (gradient checkpointing, torch's default AdamW kernels). Optimized: the UNet's
    forward and backward compiled inside the engine (``deepspeed.compile``), fused AdamW, and checkpointing only
    when ``checkpointing``. ``precomputed``: the latents and audio tokens come from stored features (``avsync
    precompute``) instead of the frozen VAE and ImageBind. Model FLOPs are counted once per setting by
    ``torch.utils.flop_counter`` on the eager step at batch 1 without recomputation (recomputed FLOPs are not
    useful work) and scaled by the batch (every operation is per sample); the optimized step reuses the eager
    step's count (``flops``): a compiled graph computes the same operations but hides them from the counter."""
    import torch.distributed as dist
    from bench_generate import full_components
    from torch.utils.flop_counter import FlopCounterMode

    from avsync_ray.config.train import TrainConfig
    from avsync_ray.models.presets import TINY_TEXT_DIM, tiny_components
    from avsync_ray.training import engine as ds
    from avsync_ray.training.objectives import avsyncd_loss, sample_video_latents, training_scheduler, video_latents

    gpu = preset == "full"
    device, size, text_dim = ("cuda", 256, 768) if gpu else ("cpu", 64, TINY_TEXT_DIM)
    frozen_dtype = torch.bfloat16 if gpu else torch.float32
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # what a launcher (Ray Train, torchrun) sets; DeepSpeed checks them
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo", init_method=f"file://{tempfile.mkdtemp()}/store", rank=0, world_size=1)
    components = full_components(frozen_dtype, device) if gpu else tiny_components(seed=0)
    vae, audio_encoder = components["vae"].eval(), components["audio_encoder"].eval()
    unet = components["unet"].to(torch.float32)
    unet.freeze_image_params()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    deepspeed = {"zero_stage": 2, "precision": "bf16" if gpu else "fp32", "gradient_checkpointing": checkpointing, "compile": optimized}
    config = TrainConfig.model_validate(
        {"max_steps": 1, "data": {"root": "unused"}, "run": {"name": "bench"}, "tracking": {"experiment": "bench", "enabled": False},
         "model": {"init": "tiny"}, "loader": {"batch_size": batch_size}, "scaling": {"num_workers": 1, "use_gpu": gpu},
         "deepspeed": deepspeed, "optimizer": {"implementation": "fused" if optimized else "foreach"}}  # fmt: skip
    )
    engine = ds.initialize(unet, config, world_size=1)
    scheduler = training_scheduler()
    generator = torch.Generator(device).manual_seed(0)
    video = torch.rand(batch_size, 3, 12, size, size, device=device)
    mel = torch.randn(batch_size, 1, 128, 204, device=device, dtype=frozen_dtype)
    text = torch.randn(batch_size, 77, text_dim, device=device, dtype=frozen_dtype)
    moments = torch.randn(batch_size, 8, 12, size // 8, size // 8, device=device)  # stored VAE moments (mean, log-variance)
    null_audio = audio_encoder.null_audio_encodings(device, frozen_dtype)
    stored_audio = audio_encoder(mel, num_segments=12) if precomputed else None

    @torch.no_grad()
    def encode(batch: int = batch_size):
        if precomputed:
            latents = sample_video_latents(moments[:batch], vae.config.scaling_factor, generator)
            return latents, stored_audio.audio_encodings[:batch], stored_audio.audio_segment_masks[:batch]
        audio = audio_encoder(mel[:batch], num_segments=12)
        return video_latents(vae, video[:batch], generator), audio.audio_encodings, audio.audio_segment_masks

    def step(batch: int = batch_size):
        latents, tokens, masks = encode(batch)
        loss = avsyncd_loss(engine, latents, text[:batch], tokens, masks, null_audio, scheduler, generator)
        engine.backward(loss)
        engine.step()

    synchronize(device)
    started = time.perf_counter()
    step()  # compiles, when optimized
    synchronize(device)
    first_step = time.perf_counter() - started
    step_seconds = median_seconds(step, device, repeats, warmup=1)
    encode_seconds = median_seconds(encode, device, repeats)
    peak_gb = None
    if gpu:
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak_gb = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    if flops is None:
        if checkpointing:
            engine.module.disable_gradient_checkpointing()
        with FlopCounterMode(display=False) as counter:
            step(batch=1)
        flops = counter.get_total_flops() * batch_size
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    peak = peak_bf16_flops(name) if gpu else None
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {
        "device": name,
        "variant": "optimized" if optimized else "eager",
        "setup": f"{'full-size' if gpu else 'tiny'} AVSyncD (random weights), batch {batch_size} x 12 x {size} x {size}, "
        + f"DeepSpeed ZeRO-2 {deepspeed['precision']}, SDPA, "
        + ("compiled UNet, fused AdamW" if optimized else "eager UNet, foreach AdamW")
        + (", gradient checkpointing" if checkpointing else ", no gradient checkpointing")
        + (", precomputed features" if precomputed else ", frozen encoders in the step"),
        "batch_size": batch_size,
        "trainable_parameters": trainable,
        "first_step_seconds": round(first_step, 2),
        "step_seconds": round(step_seconds, 4),
        "samples_per_s": round(batch_size / step_seconds, 2),
        "frozen_encoders_seconds": round(encode_seconds, 4),
        "peak_memory_gb": peak_gb,
        "model_tflops_per_step": round(flops / 1e12, 4),
        "achieved_tflops": round(flops / step_seconds / 1e12, 3),
        "mfu": round(flops / step_seconds / peak, 4) if peak else None,
        "peak_bf16_tflops_assumed": peak / 1e12 if peak else None,
        "_flops": flops,
    }


def step_comparison(preset: str, repeats: int, batch_size: int, checkpointing: str, precomputed: bool) -> dict:
    """The eager step (with gradient checkpointing, as before) and the optimized one at the same batch, back to
    back. ``checkpointing`` for the optimized step: on, off, or auto (off, and on only if the batch runs out of
    memory without it)."""
    eager = training_step(preset, repeats, batch_size, optimized=False, checkpointing=True, precomputed=precomputed)
    flops = eager.pop("_flops")
    gc.collect()
    torch.cuda.empty_cache()
    attempts = {"on": [True], "off": [False], "auto": [False, True]}[checkpointing]
    optimized = None
    for recompute in attempts:
        try:
            optimized = training_step(preset, repeats, batch_size, optimized=True, checkpointing=recompute, precomputed=precomputed, flops=flops)
            break
        except torch.cuda.OutOfMemoryError:
            if recompute is attempts[-1]:
                raise
            print(f"batch {batch_size} runs out of memory without gradient checkpointing; retrying with it", flush=True)
        gc.collect()  # the failed attempt's engine and graphs, once its traceback is gone
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    optimized.pop("_flops")
    return {"eager": eager, "optimized": optimized, "optimized_over_eager_samples_per_s": round(optimized["samples_per_s"] / eager["samples_per_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size AVSyncD steps on the GPU, eager and optimized, instead of the CPU comparison")
    parser.add_argument("--tiny-steps", action="store_true", help="CPU: tiny AVSyncD steps, eager and optimized, instead of the ZeRO comparison")
    parser.add_argument("--steps", type=int, default=10, help="CPU: optimizer steps per run (even)")
    parser.add_argument("--base-width", type=int, default=128, help="CPU: classifier width (optimizer state grows with its square)")
    parser.add_argument("--repeats", type=int, default=5, help="GPU: timed steps")
    parser.add_argument("--batch-size", type=int, default=4, help="GPU: clips per step (the paper trains with 4 per GPU)")
    parser.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto", help="GPU: gradient checkpointing of the optimized step")
    parser.add_argument("--precomputed", action="store_true", help="GPU: latents and audio tokens from stored features (no frozen encoders)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    if args.gpu or args.tiny_steps:
        result = step_comparison("full" if args.gpu else "tiny", args.repeats, args.batch_size, args.checkpointing, args.precomputed)
    else:
        result = cpu_zero_comparison(args.steps, args.base_width)
    report(result, args.out)


if __name__ == "__main__":
    main()
