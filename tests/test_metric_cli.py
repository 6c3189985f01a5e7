"""`avsync metric` end to end on real media with a random classifier (and a tiny ImageBind for AlignSync)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.metrics.sync_metrics import relsync
from avsync_ray.models.sync_classifier import SyncClassifier, load_sync_classifier

runner = CliRunner()


def run_metric(*args) -> dict:
    result = runner.invoke(app, ["metric", *map(str, args)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def test_score_psync_relsync_on_real_media(media_dir, tiny_classifier_dir):
    grid = media_dir / "av_speech_grid"
    video, other = grid / "bbaf2n.mpg", grid / "brbk7n.mpg"
    score = run_metric("score", "--classifier", tiny_classifier_dir, "--audio", video, "--video", video)["value"]
    flac = media_dir / "audio_sfx" / "sonicpi_drum_roll.flac"  # 44.1 kHz FLAC: any format, any rate
    other_score = run_metric("score", "--classifier", tiny_classifier_dir, "--audio", flac, "--video", video)["value"]
    by_ref_audio = run_metric("relsync", "--classifier", tiny_classifier_dir, "--audio", video, "--video", video, "--ref-audio", flac)
    assert by_ref_audio["score"] == pytest.approx(score, abs=1e-5) and by_ref_audio["reference_score"] == pytest.approx(other_score, abs=1e-5)
    assert by_ref_audio["value"] == pytest.approx(float(relsync(torch.tensor(score), torch.tensor(other_score))), abs=1e-5)
    assert by_ref_audio["percent"] == pytest.approx(100 * by_ref_audio["value"])
    by_ref_video = run_metric("relsync", "--classifier", tiny_classifier_dir, "--audio", video, "--video", video, "--ref-video", other)
    assert 0.0 < by_ref_video["value"] < 1.0
    psync = run_metric("psync", "--classifier", tiny_classifier_dir, "--audio", video, "--video", video)
    assert 0.0 < psync["a2v"] < 1.0 and 0.0 < psync["v2a"] < 1.0 and len(psync["scores"]) == 3
    assert psync["clip_starts_s"] == pytest.approx([0.226, 0.476, 0.726], abs=1e-3)


def test_alignsync_with_imagebind(media_dir, tiny_classifier_dir, tiny_imagebind_checkpoint):
    path, _ = tiny_imagebind_checkpoint
    grid = media_dir / "av_speech_grid"
    result = run_metric(
        "alignsync", "--classifier", tiny_classifier_dir, "--audio", grid / "lbax4n.mpg", "--video", grid / "lbax4n.mpg",
        "--ref-video", grid / "lbbc2a.mpg", "--imagebind", path, "--imagebind-preset", "imagebind-tiny",
    )  # fmt: skip
    assert len(result["ia_generated"]) == 12
    align = torch.sigmoid(torch.tensor(result["ia_generated"][1:]) - result["ia_reference_first_frame"]).mean()
    assert result["value"] == pytest.approx(result["relsync"] * float(align), abs=1e-6)


def test_official_classifier_folder_and_bad_arguments(media_dir, tiny_classifier_dir, tmp_path):
    SyncClassifier.from_pretrained(tiny_classifier_dir).save_official(tmp_path / "modules")
    video = media_dir / "av_speech_grid" / "bbaf2n.mpg"
    loaded = load_sync_classifier(tmp_path / "modules")
    expected = SyncClassifier.from_pretrained(tiny_classifier_dir).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    # The official folders carry no image size: they load at the paper's 224 (this random model's score is
    # deterministic, which is all this run checks).
    official = run_metric("score", "--classifier", tmp_path / "modules", "--audio", video, "--video", video)["value"]
    assert official == pytest.approx(run_metric("score", "--classifier", tmp_path / "modules", "--audio", video, "--video", video)["value"])
    missing = runner.invoke(app, ["metric", "relsync", "--classifier", str(tiny_classifier_dir), "--audio", str(video), "--video", str(video)])
    assert missing.exit_code != 0 and "ref" in missing.output
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"")
    failed = runner.invoke(app, ["metric", "score", "--classifier", str(tiny_classifier_dir), "--audio", str(broken), "--video", str(video)])
    assert failed.exit_code == 2 and "zero bytes" in failed.output


def test_pair_scores_squash_frames_like_the_official_metric_script(media_dir, tiny_classifier_dir):
    from avsync_ray.metrics.pair_metrics import load_pair_audio, load_pair_frames, pair_metric

    video = str(media_dir / "av_speech_grid" / "bbaf2n.mpg")  # 360x288: squash and crop differ
    classifier = load_sync_classifier(tiny_classifier_dir)
    frames, audio = load_pair_frames(video), load_pair_audio(video)
    assert frames.shape == (12, 288, 360, 3) and len(audio) == 32_000
    with torch.no_grad():
        squashed = classifier(classifier.preprocess_audio(audio)[None], classifier.preprocess_video(frames, "squash")[None])
        cropped = classifier(classifier.preprocess_audio(audio)[None], classifier.preprocess_video(frames, "crop")[None])
    assert pair_metric("score", classifier, video, video)["value"] == pytest.approx(float(squashed), abs=1e-6)
    assert float(squashed) != pytest.approx(float(cropped), abs=1e-7)
