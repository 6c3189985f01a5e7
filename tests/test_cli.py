"""The `avsync` CLI end to end on the tiny preset."""

from __future__ import annotations

import json

import av
import numpy as np
import torch
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.media import encode_mp4, encode_wav
from avsync_ray.synth import bouncing_ball

runner = CliRunner()


def _json(output: str) -> dict:
    return json.loads(output[output.index("{") :])


def test_generate_writes_twelve_frames_at_six_fps_with_two_seconds_of_audio(tiny_model_dir, tmp_path):
    clip = bouncing_ball(duration=3.0, fps=24, size=(96, 128), seed=1)
    video = tmp_path / "input.mp4"
    encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(video))
    out = tmp_path / "out.mp4"
    result = runner.invoke(
        app,
        ["generate", "--model", str(tiny_model_dir), "--video", str(video), "--category", "ball bouncing",
         "--out", str(out), "--steps", "3", "--seed", "7", "--set", "height=64", "--set", "width=64"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = _json(result.output)
    assert summary["frames"] == 12 and summary["size"] == [64, 64]
    with av.open(str(out)) as container:
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        assert video_stream.frames == 12 and float(video_stream.average_rate) == 6.0
        assert (video_stream.codec_context.width, video_stream.codec_context.height) == (64, 64)
        assert float(audio_stream.duration * audio_stream.time_base) == 2.0
    snapshot = (tmp_path / "out.mp4.config.yaml").read_text()
    assert "seed: 7" in snapshot and "num_inference_steps: 3" in snapshot


def test_generate_from_separate_image_and_audio_files(tiny_model_dir, tmp_path):
    import PIL.Image

    PIL.Image.fromarray(np.full((50, 80, 3), 120, dtype=np.uint8)).save(tmp_path / "first.png")
    (tmp_path / "sound.wav").write_bytes(encode_wav(np.zeros(48_000, dtype=np.float32), 16_000))
    result = runner.invoke(
        app,
        ["generate", "--model", str(tiny_model_dir), "--image", str(tmp_path / "first.png"), "--audio",
         str(tmp_path / "sound.wav"), "--category", "silence", "--out", str(tmp_path / "o.mp4"), "--steps", "2",
         "--set", "height=32", "--set", "width=48"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _json(result.output)["size"] == [32, 48]


def test_bad_override_is_a_readable_error(tiny_model_dir, tmp_path):
    result = runner.invoke(
        app, ["generate", "--model", str(tiny_model_dir), "--video", "x.mp4", "--category", "c", "--out", "o.mp4", "--set", "stepz=3"]
    )
    assert result.exit_code == 2 and "stepz" in result.output


def test_config_show_and_probe(tmp_path):
    shown = runner.invoke(app, ["config", "show", "generate", "--set", "seed=3"])
    assert shown.exit_code == 0 and "seed: 3" in shown.output
    path = tmp_path / "a.wav"
    path.write_bytes(encode_wav(np.zeros(16_000, dtype=np.float32)))
    probed = runner.invoke(app, ["probe", str(path)])
    assert probed.exit_code == 0 and _json(probed.output)["audio"]["sample_rate"] == 16_000
    missing = runner.invoke(app, ["probe", str(tmp_path / "nope.mp4")])
    assert missing.exit_code == 2 and "nope.mp4: not found" in missing.output


def test_convert_official_assembles_a_pipeline_that_generates(tiny_components, tiny_imagebind_checkpoint, write_official_unet, tmp_path):
    """SD1.5 folder + official UNet folder + imagebind .pth -> one pipeline folder -> `avsync generate`."""
    sd15 = tmp_path / "stable-diffusion-v1-5"
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        tiny_components[name].save_pretrained(sd15 / name)
    unet_dir = write_official_unet(tiny_components["unet"], tmp_path / "checkpoint-37000" / "modules" / "unet", weights="bin")
    imagebind_path, _ = tiny_imagebind_checkpoint
    converted = runner.invoke(
        app,
        ["convert-official", "--sd15", str(sd15), "--unet", str(unet_dir), "--imagebind", str(imagebind_path),
         "--imagebind-preset", "imagebind-tiny", "--out", str(tmp_path / "model")],
    )  # fmt: skip
    assert converted.exit_code == 0, converted.output
    from avsync_ray.pipelines import AVSyncDPipeline

    pipe = AVSyncDPipeline.from_pretrained(tmp_path / "model", local_files_only=True)
    assert all(torch.equal(v, tiny_components["unet"].state_dict()[k]) for k, v in pipe.unet.state_dict().items())
    clip = bouncing_ball(duration=2.5, fps=12, size=(64, 64), seed=2)
    encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(tmp_path / "in.mp4"))
    generated = runner.invoke(
        app,
        ["generate", "--model", str(tmp_path / "model"), "--video", str(tmp_path / "in.mp4"), "--category", "ball",
         "--out", str(tmp_path / "out.mp4"), "--steps", "2", "--set", "height=32", "--set", "width=32"],
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output


def test_the_curate_driver_takes_arrow_memory_from_malloc_and_leaves_workers_the_default():
    """``avsync curate``'s driver process: Arrow's system pool (mimalloc kept what the driver's steps freed, so its
    memory grew with the corpus), without passing the choice on to the workers; a pool the user chose wins."""
    import os
    import subprocess
    import sys

    probe = (
        "import os; from avsync_ray.ray_runtime import use_system_arrow_pool; use_system_arrow_pool(); import pyarrow; "
        "print(pyarrow.default_memory_pool().backend_name, os.environ.get('ARROW_DEFAULT_MEMORY_POOL'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    chosen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert chosen == ["system", "None"]
    user = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}, capture_output=True, text=True, check=True)
    assert user.stdout.split() == ["mimalloc", "mimalloc"]
