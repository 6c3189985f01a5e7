"""The registered AVSyncD pyfunc model: params reach the pipeline (its signature declares them), a DataFrame may
mix video rows and image + audio rows (pandas fills the gaps with NaN), and a bad row gets its own error."""

from __future__ import annotations

import av
import mlflow
import numpy as np
import pandas as pd
import pytest

from avsync_ray.media import encode_mp4, encode_wav
from avsync_ray.mlflow_models import register_model
from avsync_ray.synth import bouncing_ball


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyfunc")
    tracking = f"sqlite:///{folder}/mlruns.db"
    registered = register_model(str(tiny_model_dir), "tiny-avsyncd", "avsyncd", tracking)
    mlflow.set_tracking_uri(tracking)
    return mlflow.pyfunc.load_model(registered["model_uri"]), folder


def test_signature_declares_the_request_columns_and_generation_params(served):
    model, _ = served
    signature = model.metadata.signature
    assert {spec.name for spec in signature.params} >= {"num_inference_steps", "height", "width", "scheduler", "audio_guidance_scale"}
    assert {col.name for col in signature.inputs} == {"category", "out", "video", "image", "audio", "seed"}


def test_mixed_rows_generate_with_the_params_and_a_bad_row_reports_its_error(served):
    model, folder = served
    clip = bouncing_ball(duration=3.0, fps=24, size=(64, 64), seed=2)
    encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(folder / "in.mp4"))
    import PIL.Image

    PIL.Image.fromarray(clip.frames[0]).save(folder / "first.png")
    (folder / "sound.wav").write_bytes(encode_wav(clip.audio, clip.sample_rate))
    requests = pd.DataFrame([
        {"category": "ball", "out": str(folder / "a.mp4"), "video": str(folder / "in.mp4")},
        {"category": "ball", "out": str(folder / "b.mp4"), "image": str(folder / "first.png"), "audio": str(folder / "sound.wav"), "seed": 3},
        {"category": "ball", "out": str(folder / "c.mp4"), "video": str(folder / "missing.mp4")},
    ])  # fmt: skip
    result = model.predict(requests, params={"num_inference_steps": 2, "height": 32, "width": 48})
    assert result["error"][:2].isna().all() and "missing.mp4" in result["error"][2]
    for name in ("a.mp4", "b.mp4"):
        with av.open(str(folder / name)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.height, stream.codec_context.width, stream.frames) == (32, 48, 12)
    assert not (folder / "c.mp4").exists()
    assert np.isnan(requests["seed"][0])  # the row the model read as "no seed" really held pandas' NaN
