"""Model presets: the ``tiny`` components (random init, deterministic, CPU-fast; tests and the demo) and the
official sampler settings. Whole pipelines from presets are in :mod:`avsync_ray.pipelines.presets`."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from avsync_ray.models.audio_encoder import ImageBindAudioEncoder
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel

# Stable Diffusion 1.5's scheduler/config.json: the official AVSyncD sampler (PNDM, PLMS steps only).
SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
TINY_TEXT_DIM = 32


def _byte_level_vocab() -> dict[str, int]:
    """A merge-free CLIP BPE vocabulary (every byte, alone and word-final): tokenizes any text, offline."""
    chars = [chr(c) for c in _gpt2_byte_chars()]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def _gpt2_byte_chars() -> list[int]:
    """The code points GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return printable + [256 + i for i in range(len(extra))]


def tiny_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)


def tiny_components(seed: int = 0) -> dict:
    """Random-init components of the AVSyncD architecture at toy sizes (seeded: same seed, same weights)."""
    torch.manual_seed(seed)
    unet2d = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    audio_encoder = ImageBindAudioEncoder(n_segment=12, pretrained_model_name="imagebind-tiny")
    unet = AVSyncDUNet3DModel.from_unet2d(unet2d, audio_cross_attention_dim=audio_encoder.imagebind_config.audio_embed_dim)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return dict(
        vae=vae,
        unet=unet,
        audio_encoder=audio_encoder,
        scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
    )
