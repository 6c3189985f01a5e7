"""``avsync demo``: the main job end to end on an embedded default, on one machine, with no download."""

from __future__ import annotations

import time
from pathlib import Path

from avsync_ray.config import DemoConfig, save_config
from avsync_ray.generate import run_generate
from avsync_ray.media import encode_mp4
from avsync_ray.models.presets import save_tiny_pipeline
from avsync_ray.synth import bouncing_ball


def run_demo(config: DemoConfig) -> dict:
    """Synthesise an input video, build the tiny AVSyncD model, animate the video's first frame with its audio."""
    started = time.perf_counter()
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "demo.config.yaml")

    clip = bouncing_ball(duration=3.0, fps=24.0, size=(128, 128), seed=config.seed)
    source = out_dir / "inputs" / "bouncing_ball.mp4"
    source.parent.mkdir(exist_ok=True)
    encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(source))

    model_dir = save_tiny_pipeline(out_dir / "model", seed=config.seed)
    result = run_generate(model_dir, out_dir / "generated.mp4", clip.label, config.generate, video=str(source))
    return {
        "input_video": str(source),
        "model": str(model_dir),
        "generated_video": result["output"],
        "generated": {k: result[k] for k in ("frames", "fps", "size", "audio_seconds", "prompt")},
        "config": str(out_dir / "demo.config.yaml"),
        "seconds": round(time.perf_counter() - started, 1),
    }
