"""ImageBind adapter and the segment-mask audio encoder: official keys, checkpoint loading, masks, caching."""

from __future__ import annotations

import json

import pytest
import torch

from avsync_ray.models.audio_encoder import ImageBindAudioEncoder, segment_time_columns, segment_token_masks
from avsync_ray.models.imagebind import ImageBind, tokenize


def test_full_size_audio_encoder_state_dict_equals_official_manifest(manifests_dir):
    manifest = json.loads((manifests_dir / "imagebind_segmask_audio_encoder.json").read_text())
    encoder = ImageBindAudioEncoder(n_segment=12, pretrained_model_name="imagebind-huge")
    assert [(k, list(v.shape)) for k, v in encoder.state_dict().items()] == [(k, shape) for k, shape in manifest]
    assert sum(p.numel() for p in encoder.parameters()) == 86_237_184


def test_segment_masks_follow_the_official_rule():
    columns = segment_time_columns(19, 12)
    starts = [int(row.argmax()) for row in columns]
    assert starts == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17]
    assert (columns.sum(axis=1) == 2).all()
    masks = segment_token_masks(12, 19, 12)
    assert masks.shape == (12, 229) and masks[:, 0].all()
    assert masks.sum(dim=1).tolist() == [25] * 12  # CLS + 12 frequency rows x 2 time columns
    # Token 1 + f*19 + t is frequency row f, time column t: segment 1 sees columns 2 and 3 in every row.
    assert [int(i) for i in masks[1].nonzero()[1:5]] == [3, 4, 22, 23]
    # Other frame counts get their own segmentation, derived the same way.
    assert segment_token_masks(12, 19, 4).sum(dim=1).tolist() == [1 + 12 * 5] * 4


def test_adapter_matches_the_imagebind_package(tiny_imagebind_checkpoint):
    path, official = tiny_imagebind_checkpoint
    adapter = ImageBind.from_checkpoint(path, preset="imagebind-tiny")
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 1, 128, 204, generator=generator)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    texts = ["a dog barking", "hammering"]
    with torch.no_grad():
        expected = official({"audio": mel, "vision": images, "text": tokenize(texts)})
    normalize = torch.nn.functional.normalize
    torch.testing.assert_close(adapter.embed_audio(mel), normalize(expected["audio"], dim=-1))
    torch.testing.assert_close(adapter.embed_images(images), normalize(expected["vision"], dim=-1))
    torch.testing.assert_close(adapter.embed_text(texts), normalize(expected["text"], dim=-1))


def test_adapter_builds_only_requested_branches_and_stays_in_eval(tiny_imagebind_checkpoint):
    path, _ = tiny_imagebind_checkpoint
    audio_only = ImageBind.from_checkpoint(path, preset="imagebind-tiny", modalities=("audio",))
    assert set(audio_only.modality_trunks) == {"audio"}
    assert not audio_only.train().training and not any(p.requires_grad for p in audio_only.parameters())
    with pytest.raises(ValueError, match="vision"):
        audio_only.embed_images(torch.zeros(1, 3, 224, 224))


def test_missing_checkpoint_names_the_config_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ImageBind.from_checkpoint(tmp_path / "imagebind_huge.pth")


def test_audio_encoder_from_imagebind_checkpoint(tiny_imagebind_checkpoint):
    path, official = tiny_imagebind_checkpoint
    encoder = ImageBindAudioEncoder.from_imagebind_checkpoint(path, pretrained_model_name="imagebind-tiny")
    for name, value in official.state_dict().items():
        for part in ("preprocessor", "trunk", "head", "postprocessor"):
            prefix = f"modality_{part}s.audio."
            if name.startswith(prefix):
                assert torch.equal(encoder.state_dict()[f"{part}.{name[len(prefix):]}"], value), name
    assert torch.equal(encoder.final_layer_norm.weight, torch.ones_like(encoder.final_layer_norm.weight))
    assert not encoder.final_layer_norm.bias.any()
    mel = torch.randn(2, 1, 128, 204, generator=torch.Generator().manual_seed(1))
    out = encoder(mel, normalize=True)
    assert out.audio_encodings.shape == (2, 229, 32) and out.audio_segment_masks.shape == (2, 12, 229)
    with torch.no_grad():
        official_audio = official({"audio": mel})["audio"]  # normalised x 20, ImageBind's fixed audio scale
    torch.testing.assert_close(out.audio_embeds, official_audio)


def test_audio_encoder_is_deterministic_frozen_and_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = ImageBindAudioEncoder(n_segment=12, pretrained_model_name="imagebind-tiny")
    encoder.train()
    assert not encoder.training, "drop-path must never be active in the frozen encoder"
    mel = torch.randn(1, 1, 128, 204)
    first, second = encoder(mel).audio_encodings, encoder(mel).audio_encodings
    assert torch.equal(first, second)
    encoder.save_pretrained(tmp_path)
    loaded = ImageBindAudioEncoder.from_pretrained(tmp_path)
    assert loaded.config.pretrained_model_name == "imagebind-tiny"
    assert torch.equal(loaded(mel).audio_encodings, first)
    with pytest.raises(ValueError, match="mel input"):
        encoder(torch.zeros(1, 1, 128, 100))


def test_null_audio_is_computed_once_and_equals_encoding_zeros():
    torch.manual_seed(0)
    encoder = ImageBindAudioEncoder(n_segment=12, pretrained_model_name="imagebind-tiny")
    null = encoder.null_audio_encodings()
    assert encoder.null_audio_encodings() is null
    torch.testing.assert_close(null, encoder(torch.zeros(1, 1, 128, 204)).audio_encodings)
    encoder.load_state_dict({k: v + 1 for k, v in encoder.state_dict().items()})
    assert not torch.allclose(encoder.null_audio_encodings(), null), "the cache must follow new weights"
