"""AVSyncD 3-D UNet: official key/shape contract, inflation from SD, trainable set, round trips."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from avsync_ray.models.audio_encoder import segment_token_masks
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel

TEXT_DIM, AUDIO_DIM, TOKENS = 32, 16, 229


def tiny_unet2d(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    config = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=2, norm_num_groups=8,
    )  # fmt: skip
    config.update(overrides)
    return UNet2DConditionModel(**config).eval()


def randomize_(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Give every parameter (the zero-initialised ones too) random values so each path matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def inputs(batch=2, frames=12, size=(16, 16), seed=0):
    generator = torch.Generator().manual_seed(seed)
    masks = segment_token_masks(12, 19, frames).unsqueeze(0).expand(batch, -1, -1)
    return dict(
        sample=torch.randn(batch, 4, frames, *size, generator=generator),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch, frames, 77, TEXT_DIM, generator=generator),
        audio_encoder_hidden_states=torch.randn(batch, frames, TOKENS, AUDIO_DIM, generator=generator),
        audio_attention_mask=masks,
    )


@pytest.fixture(scope="module")
def unet2d():
    return tiny_unet2d()


@pytest.fixture(scope="module")
def unet3d(unet2d):
    return AVSyncDUNet3DModel.from_unet2d(unet2d, audio_cross_attention_dim=AUDIO_DIM).eval()


def test_full_size_state_dict_equals_official_manifest(manifests_dir):
    manifest = json.loads((manifests_dir / "avsyncd_unet_sd15_avsync15_cfg.json").read_text())
    with torch.device("meta"):
        model = AVSyncDUNet3DModel()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, shape) for k, shape in manifest]


def test_full_size_trainable_set_is_the_temporal_and_audio_modules():
    with torch.device("meta"):
        model = AVSyncDUNet3DModel()
    model.freeze_image_params()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 309_836_532
    assert sum(p.numel() for p in model.parameters()) == 1_169_357_496
    added = {"conv_temp", "attn_temp", "norm_temp", "pos_embedding_temp", "attn_audio", "norm_audio"}
    assert trainable == {n for n in dict(model.named_parameters()) if added & set(n.split("."))}


def test_from_unet2d_copies_every_2d_weight_and_zero_inits_the_new_ones(unet2d, unet3d):
    own = unet3d.state_dict()
    for key, value in unet2d.state_dict().items():
        assert torch.equal(own[key], value), key
    new_keys = set(own) - set(unet2d.state_dict())
    assert new_keys and all(("_temp" in k or "_audio" in k) for k in new_keys)
    for key in new_keys:
        if ".conv_temp." in key or key.endswith("attn_temp.to_out.0.weight"):
            assert not own[key].any(), key
    # The official init leaves the temporal out-projection bias and the audio attention at default init.
    assert any(own[k].any() for k in new_keys if k.endswith("attn_temp.to_out.0.bias"))


def _complete_zero_init(model: AVSyncDUNet3DModel) -> AVSyncDUNet3DModel:
    """Zero the residual branches the official init leaves non-zero (temporal out bias, audio out-projection)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "attn_temp.to_out" in name or "attn_audio.to_out" in name:
                parameter.zero_()
    return model


def test_inflated_unet_reproduces_the_2d_unet_per_frame(unet2d):
    """With the new residual branches at zero, the 3-D UNet equals the 2-D UNet on:
    - a single-frame video, exactly what the 2-D UNet computes;
    - a video of identical frames, on every frame (first-frame K/V equal each frame's own, and the 5-D
      GroupNorm statistics equal the per-frame ones).
    On distinct frames the outputs differ by design: frames >= 1 attend to frame 0's tokens and the
    resnet GroupNorms pool statistics over all frames."""
    model = _complete_zero_init(AVSyncDUNet3DModel.from_unet2d(unet2d, audio_cross_attention_dim=AUDIO_DIM).eval())
    generator = torch.Generator().manual_seed(3)
    frame = torch.randn(1, 4, 16, 16, generator=generator)
    text = torch.randn(1, 77, TEXT_DIM, generator=generator)
    audio = torch.randn(1, TOKENS, AUDIO_DIM, generator=generator)
    with torch.no_grad():
        expected = unet2d(frame, 500, text).sample
        single = model(frame.unsqueeze(2), 500, text, audio).sample[:, :, 0]
        repeated = model(frame.unsqueeze(2).expand(1, 4, 5, 16, 16), 500, text, audio).sample
        distinct = model(torch.randn(1, 4, 5, 16, 16, generator=generator), 500, text, audio).sample
    torch.testing.assert_close(single, expected, atol=1e-5, rtol=1e-5)
    for index in range(5):
        torch.testing.assert_close(repeated[:, :, index], expected, atol=1e-5, rtol=1e-5)
    assert distinct.shape == (1, 4, 5, 16, 16)


def test_from_unet2d_rejects_what_it_cannot_represent():
    with pytest.raises(ValueError, match="use_linear_projection"):
        AVSyncDUNet3DModel.from_unet2d(tiny_unet2d(use_linear_projection=True))
    with pytest.raises(ValueError, match="no AVSyncD counterpart"):
        AVSyncDUNet3DModel.from_unet2d(tiny_unet2d(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")))


def test_load_unet2d_weights_rejects_mismatched_shapes(unet2d, unet3d):
    state = dict(unet2d.state_dict())
    state["conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    with pytest.raises(ValueError, match="conv_in.weight"):
        unet3d.load_unet2d_weights(state)
    del state["conv_in.weight"]
    with pytest.raises(ValueError, match="should provide"):
        unet3d.load_unet2d_weights(state)


def test_forward_shapes_and_shared_conditions(unet3d):
    """Conditions given once per sample, (b, ...), equal the same conditions repeated per frame, (b, f, ...)."""
    batch = inputs()
    text, audio = batch["encoder_hidden_states"][:, 0], batch["audio_encoder_hidden_states"][:, 0]
    repeated = {**batch, "encoder_hidden_states": text.unsqueeze(1).expand(-1, 12, -1, -1),
                "audio_encoder_hidden_states": audio.unsqueeze(1).expand(-1, 12, -1, -1)}  # fmt: skip
    with torch.no_grad():
        per_frame = unet3d(**repeated).sample
        shared = unet3d(**{**batch, "encoder_hidden_states": text, "audio_encoder_hidden_states": audio}).sample
        per_sample_t = unet3d(**{**repeated, "timestep": torch.tensor([500, 500])}).sample
        tuple_out = unet3d(**repeated, return_dict=False)
    assert per_frame.shape == batch["sample"].shape
    torch.testing.assert_close(shared, per_frame)
    torch.testing.assert_close(per_sample_t, per_frame)
    assert isinstance(tuple_out, tuple) and torch.equal(tuple_out[0], per_frame)


def test_segment_mask_changes_the_output(unet3d):
    batch = inputs()
    with torch.no_grad():
        masked = unet3d(**batch).sample
        unmasked = unet3d(**{**batch, "audio_attention_mask": None}).sample
    assert not torch.allclose(masked, unmasked)


def test_odd_latent_sizes_forward_upsample_sizes(unet3d):
    batch = inputs(size=(9, 7))
    with torch.no_grad():
        out = unet3d(**batch).sample
    assert out.shape == batch["sample"].shape


def test_forward_rejects_bad_inputs(unet3d):
    batch = inputs()
    with pytest.raises(ValueError, match="frames"):
        unet3d(**{**batch, "sample": batch["sample"][:, :, 0]})
    with pytest.raises(ValueError, match="audio_encoder_hidden_states is required"):
        unet3d(**{**batch, "audio_encoder_hidden_states": None})
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        unet3d(**{**batch, "encoder_hidden_states": batch["encoder_hidden_states"][:, :5]})
    with pytest.raises(ValueError, match="class_labels"):
        unet3d(**batch, class_labels=torch.zeros(2))


def test_save_load_round_trip(unet3d, tmp_path):
    model = AVSyncDUNet3DModel.from_config(unet3d.config)
    model.load_state_dict(unet3d.state_dict())
    randomize_(model)
    model.save_pretrained(tmp_path)
    loaded, info = AVSyncDUNet3DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).sample, model.eval()(**batch).sample, atol=0, rtol=0)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_official_folder_loads_as_it_is(unet3d, tmp_path, weights, write_official_unet):
    write_official_unet(unet3d, tmp_path / "unet", weights)
    loaded, info = AVSyncDUNet3DModel.from_pretrained(tmp_path / "unet", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).sample, unet3d(**batch).sample, atol=0, rtol=0)


def test_official_config_with_unsupported_option_is_an_error(unet3d, tmp_path, write_official_unet):
    write_official_unet(unet3d, tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    config["class_embed_type"] = "timestep"
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="class_embed_type"):
        AVSyncDUNet3DModel.from_pretrained(tmp_path / "unet")


def test_gradient_checkpointing_gives_equal_outputs_and_gradients(unet3d):
    def run(checkpointing: bool):
        model = AVSyncDUNet3DModel.from_config(unet3d.config)
        model.load_state_dict(unet3d.state_dict())
        randomize_(model, seed=5)
        model.freeze_image_params()
        model.train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(**inputs(batch=1, frames=4)).sample
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    out_plain, grads_plain = run(False)
    out_ckpt, grads_ckpt = run(True)
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_plain.keys() == grads_ckpt.keys() and all(g is not None for g in grads_ckpt.values())
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], msg=name)
