"""Training cost: ZeRO-0 versus ZeRO-2 on 2 Ray Train CPU workers, and one full-size AVSyncD step on a GPU.

CPU (default): the sync classifier at twice the official width (base width 128, 32 px frames, 5 clips, batch 2 per worker)
trained for a few steps on synthetic shards under ZeRO-0 and then ZeRO-2, back to back in one process; the loop's
own metrics give samples/s (the second logging window, after warm-up) and the largest rank's peak and current
(after the steps) resident memory.

GPU (``--gpu``, needs CUDA and DeepSpeed): the full-size AVSyncD architecture with random weights (SD1.5 UNet
inflated, SD1.5 VAE, ImageBind-huge audio branch), one DeepSpeed ZeRO-2 bf16 training step at batch 1 x 12 x
256 x 256 with gradient checkpointing, exactly the training loop's computation (frozen encoders included): median
step time, peak memory, and model FLOPs utilisation (FLOPs of one step counted by torch without recomputation,
over the GPU's dense bf16 peak).

    python benchmarks/bench_train.py                 # CPU, ZeRO-0 vs ZeRO-2
    python benchmarks/bench_train.py --gpu           # GPU, one full-size step
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from timing import median_seconds, report

# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM parts).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def cpu_zero_comparison(steps: int, base_width: int) -> dict:
    from mlflow.tracking import MlflowClient

    from avsync_ray.config import TrainSyncConfig, load_config
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


def gpu_full_step(repeats: int, batch_size: int = 1) -> dict:
    """One training step of the full-size model, as ``training.loops.AVSyncDTask`` computes it."""
    import torch.distributed as dist

    from avsync_ray.config import TrainConfig
    from avsync_ray.training import engine as ds
    from avsync_ray.training.objectives import avsyncd_loss, training_scheduler, video_latents
    from bench_generate import full_components

    device = "cuda"
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # what a launcher (Ray Train, torchrun) sets; DeepSpeed checks them
    if not dist.is_initialized():
        dist.init_process_group("nccl", init_method=f"file://{tempfile.mkdtemp()}/store", rank=0, world_size=1)
    components = full_components(torch.bfloat16, device)
    vae, audio_encoder = components["vae"].eval(), components["audio_encoder"].eval()
    unet = components["unet"].to(torch.float32)
    unet.freeze_image_params()
    unet.enable_gradient_checkpointing()
    config = TrainConfig.model_validate(
        {"max_steps": 1, "data": {"root": "unused"}, "run": {"name": "bench"}, "tracking": {"experiment": "bench", "enabled": False},
         "model": {"init": "tiny"}, "loader": {"batch_size": batch_size}, "scaling": {"num_workers": 1, "use_gpu": True},
         "deepspeed": {"zero_stage": 2, "precision": "bf16", "gradient_checkpointing": True}}  # fmt: skip
    )
    engine = ds.initialize(unet, config, world_size=1)
    scheduler = training_scheduler()
    generator = torch.Generator(device).manual_seed(0)
    video = torch.rand(batch_size, 3, 12, 256, 256, device=device)
    mel = torch.randn(batch_size, 1, 128, 204, device=device, dtype=torch.bfloat16)
    text = torch.randn(batch_size, 77, 768, device=device, dtype=torch.bfloat16)

    @torch.no_grad()
    def encode():
        latents = video_latents(vae, video, generator)
        audio = audio_encoder(mel, num_segments=12)
        return latents, audio, audio_encoder.null_audio_encodings(device, torch.bfloat16)

    def step():
        latents, audio, null_audio = encode()
        loss = avsyncd_loss(engine, latents, text, audio.audio_encodings, audio.audio_segment_masks, null_audio, scheduler, generator)
        engine.backward(loss)
        engine.step()

    step_seconds = median_seconds(step, device, repeats, warmup=2)
    encode_seconds = median_seconds(encode, device, repeats)
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak_gb = torch.cuda.max_memory_allocated() / 2**30

    # Model FLOPs: one step without activation recomputation (recomputed FLOPs are not useful work).
    from torch.utils.flop_counter import FlopCounterMode

    engine.module.disable_gradient_checkpointing()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    name = torch.cuda.get_device_name()
    peak = next((value for key, value in PEAK_BF16_FLOPS.items() if key in name), None)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return {
        "device": name,
        "setup": f"full-size AVSyncD (random weights), batch {batch_size} x 12 x 256 x 256, DeepSpeed ZeRO-2 bf16, gradient checkpointing, SDPA",
        "trainable_parameters": trainable,
        "step_seconds": round(step_seconds, 4),
        "frozen_encoders_seconds": round(encode_seconds, 4),
        "peak_memory_gb": round(peak_gb, 2),
        "model_tflops_per_step": round(flops / 1e12, 2),
        "achieved_tflops": round(flops / step_seconds / 1e12, 1),
        "mfu": round(flops / step_seconds / peak, 4) if peak else None,
        "peak_bf16_tflops_assumed": peak / 1e12 if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="one full-size AVSyncD step on the GPU instead of the CPU comparison")
    parser.add_argument("--steps", type=int, default=10, help="CPU: optimizer steps per run (even)")
    parser.add_argument("--base-width", type=int, default=128, help="CPU: classifier width (optimizer state grows with its square)")
    parser.add_argument("--repeats", type=int, default=5, help="GPU: timed steps")
    parser.add_argument("--batch-size", type=int, default=1, help="GPU: clips per step (the paper trains with 4 per GPU)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    result = gpu_full_step(args.repeats, args.batch_size) if args.gpu else cpu_zero_comparison(args.steps, args.base_width)
    report(result, args.out)


if __name__ == "__main__":
    main()
