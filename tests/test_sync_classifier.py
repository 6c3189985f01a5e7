"""Sync classifier: official keys, official folders, AVID-CMA init, one-unit save/load, pairwise scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsync_ray.models.sync_classifier import SyncClassifier

SIZE = 64  # the R(2+1)D works at any resolution; small keeps the CPU suite fast


def randomize_(model: SyncClassifier, seed: int = 0) -> SyncClassifier:
    """Random weights and BatchNorm statistics, so every tensor of a checkpoint matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=generator) if "running_var" in name else torch.randn(tensor.shape, generator=generator)
                tensor.copy_(0.5 + noise if "running_var" in name else tensor + 0.05 * noise)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SyncClassifier:
    torch.manual_seed(0)
    return randomize_(SyncClassifier(image_size=SIZE))


def inputs(batch=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 128, 204, generator=generator), torch.randn(batch, 3, 12, SIZE, SIZE, generator=generator)


def test_state_dict_equals_official_manifest(manifests_dir):
    manifest = json.loads((manifests_dir / "avsync_classifier.json").read_text())
    classifier = SyncClassifier()
    assert [(k, list(v.shape)) for k, v in classifier.state_dict().items()] == [(k, shape) for k, shape in manifest]
    counts = [sum(p.numel() for p in m.parameters()) for m in (classifier.audio_encoder, classifier.video_encoder, classifier.head)]
    assert counts == [4_725_696, 15_379_136, 656_385]


def test_official_three_folder_layout_round_trips(model, tmp_path):
    model.save_official(tmp_path / "modules")
    for name, class_name in (("audio_encoder", "AudioConv2DNet"), ("video_encoder", "VideoR2Plus1DNet"), ("head", "FCHead")):
        folder = tmp_path / "modules" / name
        assert json.loads((folder / "config.json").read_text())["_class_name"] == class_name
        assert (folder / "diffusion_pytorch_model.bin").is_file()
    loaded = SyncClassifier.from_official(tmp_path / "modules", image_size=SIZE)
    audio, video = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio, video), model(audio, video), atol=0, rtol=0)


def test_official_folder_keys_are_unprefixed_and_head_config_is_checked(model, tmp_path):
    model.save_official(tmp_path / "modules")
    state = torch.load(tmp_path / "modules" / "head" / "diffusion_pytorch_model.bin", weights_only=True)
    assert sorted(state) == ["fc.0.bias", "fc.0.weight", "fc.3.bias", "fc.3.weight", "fc.6.bias", "fc.6.weight"]
    (tmp_path / "modules" / "head" / "config.json").write_text(json.dumps({"dim": 256, "out_dim": 1}))
    with pytest.raises(ValueError, match="head config"):
        SyncClassifier.from_official(tmp_path / "modules")


def test_avid_cma_checkpoint_initialises_both_encoders(model, tmp_path):
    weights = {f"module.audio_model.{k}": v for k, v in model.audio_encoder.state_dict().items()}
    weights.update({f"module.video_model.{k}": v for k, v in model.video_encoder.state_dict().items()})
    weights["module.audio_projection.weight"] = torch.zeros(3)  # other AVID-CMA parts are ignored
    path = tmp_path / "AVID-CMA_Audioset_InstX-N1024-PosW-N64-Top32_checkpoint.pth.tar"
    torch.save({"epoch": 10, "model": weights}, path)
    fresh = SyncClassifier(image_size=SIZE)
    head_before = {k: v.clone() for k, v in fresh.head.state_dict().items()}
    fresh.load_avid_cma(path)
    for name in ("audio_encoder", "video_encoder"):
        for key, value in getattr(model, name).state_dict().items():
            assert torch.equal(getattr(fresh, name).state_dict()[key], value), key
    assert all(torch.equal(v, head_before[k]) for k, v in fresh.head.state_dict().items())
    with pytest.raises(FileNotFoundError, match="AVID-CMA"):
        fresh.load_avid_cma(tmp_path / "missing.pth.tar")


def test_saves_and_loads_as_one_unit(model, tmp_path):
    model.save_pretrained(tmp_path / "classifier")
    assert (tmp_path / "classifier" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SyncClassifier.from_pretrained(tmp_path / "classifier")
    assert loaded.config.image_size == SIZE
    audio, video = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(audio, video), model(audio, video))


def test_score_matrix_runs_each_encoder_once_per_clip_and_equals_pairwise_scores(model):
    generator = torch.Generator().manual_seed(2)
    audio = torch.randn(2, 3, 1, 128, 204, generator=generator)
    video = torch.randn(2, 3, 3, 12, SIZE, SIZE, generator=generator)
    calls = {"audio": 0, "video": 0}
    hooks = [
        model.audio_encoder.register_forward_hook(lambda *a: calls.__setitem__("audio", calls["audio"] + 1)),
        model.video_encoder.register_forward_hook(lambda *a: calls.__setitem__("video", calls["video"] + 1)),
    ]
    try:
        with torch.no_grad():
            scores = model.score_matrix(audio, video)
    finally:
        for hook in hooks:
            hook.remove()
    assert scores.shape == (2, 3, 3) and calls == {"audio": 1, "video": 1}
    with torch.no_grad():
        for b in range(2):
            for p in range(3):
                for q in range(3):
                    expected = model(audio[b, p : p + 1], video[b, q : q + 1])[0]
                    torch.testing.assert_close(scores[b, p, q], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [112, 224])
def test_video_sizes_of_the_paper_work(size):
    classifier = SyncClassifier(image_size=size).eval()
    frames = np.random.default_rng(0).integers(0, 255, (12, 90, 160, 3), dtype=np.uint8)
    video = classifier.preprocess_video(frames)
    assert video.shape == (3, 12, size, size)
    with torch.no_grad():
        assert classifier(torch.zeros(1, 1, 128, 204), video[None]).shape == (1,)


def test_preprocess_crop_and_squash():
    frames = np.zeros((12, 40, 80, 3), dtype=np.uint8)
    frames[:, :, :20] = 255  # a white band on the left quarter
    crop = SyncClassifier(image_size=32, resize_mode="crop").preprocess_video(frames)
    squash = SyncClassifier(image_size=32, resize_mode="squash").preprocess_video(frames)
    white = (1.0 - 0.48145466) / 0.26862954
    # Crop keeps the central square (the band falls outside); squash keeps the whole width.
    assert crop[0, 0, :, 0].max() < white / 2 and squash[0, 0, :, 0].min() == pytest.approx(white, rel=1e-2)
    batch = SyncClassifier(image_size=32).preprocess_video(np.stack([frames, frames]))
    assert batch.shape == (2, 3, 12, 32, 32) and torch.equal(batch[0], crop)
    mel = SyncClassifier.preprocess_audio(np.zeros(32_000, dtype=np.float32))
    assert mel.shape == (1, 128, 204)
