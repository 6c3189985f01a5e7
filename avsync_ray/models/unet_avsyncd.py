"""AVSyncD's 3-D UNet: Stable Diffusion 1.5 inflated with first-frame convs and attention, audio
cross-attention with per-frame segment masks, and temporal attention (reference §2)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from avsync_ray.models.unet_blocks import (
    BLOCKS_FROM_2D,
    DOWN_BLOCKS,
    MID_BLOCKS,
    TEMPORAL_AUDIO_MODULE_NAMES,
    UP_BLOCKS,
    FirstFrameConv3d,
    block_class,
)

# Options of the official class (inherited from diffusers' 2-D UNet) that AVSyncD checkpoints never change.
# Official configs and SD1.5 configs carry them; any other value is an error instead of a silent ignore.
FIXED_OPTIONS: dict[str, Any] = {
    "only_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "addition_embed_type_num_heads": 64,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "projection_class_embeddings_input_dim": None,
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "num_attention_heads": None,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "attention_type": "default",
    "dropout": 0.0,
}


def _same(value, expected) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_same(v, expected) for v in value)
    return value == expected or (expected is False and value is None)


def _check_fixed_options(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Drop the fixed options from ``config`` after checking each has its only supported value."""
    remaining = dict(config)
    for key, expected in FIXED_OPTIONS.items():
        if key in remaining:
            value = remaining.pop(key)
            if not _same(value, expected):
                raise ValueError(f"{source}: {key}={value!r} is not supported by AVSyncDUNet3DModel (only {expected!r})")
    return remaining


@dataclass
class AVSyncDUNet3DOutput(BaseOutput):
    """``sample``: (b, out_channels, frames, h, w) epsilon prediction for every frame (frame 0 included)."""

    sample: torch.Tensor


class AVSyncDUNet3DModel(ModelMixin, ConfigMixin):
    r"""The AVSyncD denoiser: a 3-D conditional UNet over video latents ``(b, 4, f, h, w)``.

    Its config uses the official block-type names and accepts the official ``config.json`` (``_class_name``
    ``AudioUNet3DConditionModel``) as it is; state-dict keys are the official ones, so
    ``AVSyncDUNet3DModel.from_pretrained(official_unet_dir)`` loads with no missing or unexpected key.

    ``attention_head_dim`` is, as in Stable Diffusion 1.5's config, the number of heads.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FFSpatioTempResnetBlock3D", "FFSpatioAudioTempTransformer3DModel"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "FFSpatioAudioTempCrossAttnDownBlock3D",
            "FFSpatioAudioTempCrossAttnDownBlock3D",
            "FFSpatioAudioTempCrossAttnDownBlock3D",
            "FFSpatioTempResDownBlock3D",
        ),
        mid_block_type: str = "FFSpatioAudioTempCrossAttnUNetMidBlock3D",
        up_block_types: tuple[str, ...] = (
            "FFSpatioTempResUpBlock3D",
            "FFSpatioAudioTempCrossAttnUpBlock3D",
            "FFSpatioAudioTempCrossAttnUpBlock3D",
            "FFSpatioAudioTempCrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        audio_cross_attention_dim: int = 768,
        attention_head_dim: int | tuple[int, ...] = 8,
        upcast_attention: bool = False,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
    ):
        super().__init__()
        levels = len(block_out_channels)
        if len(down_block_types) != levels or len(up_block_types) != levels:
            raise ValueError(f"down_block_types, up_block_types and block_out_channels need the same length ({levels})")
        if act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn={act_fn!r} is not supported (Stable Diffusion uses 'silu')")
        if not isinstance(cross_attention_dim, int):
            raise ValueError("cross_attention_dim must be one int (per-block dims are not supported)")
        heads = (attention_head_dim,) * levels if isinstance(attention_head_dim, int) else tuple(attention_head_dim)
        layers = (layers_per_block,) * levels if isinstance(layers_per_block, int) else tuple(layers_per_block)
        if len(heads) != levels or len(layers) != levels:
            raise ValueError("attention_head_dim and layers_per_block need one value per block")
        temb_channels = block_out_channels[0] * 4
        attention = dict(
            cross_attention_dim=cross_attention_dim,
            audio_cross_attention_dim=audio_cross_attention_dim,
            upcast_attention=upcast_attention,
        )

        self.conv_in = FirstFrameConv3d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_channels, act_fn=act_fn)

        # Registered before the mid block, as in the official class, so state-dict key order matches too.
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(
                block_class(block_type, DOWN_BLOCKS)(
                    in_channels=input_channel, out_channels=output_channel, temb_channels=temb_channels,
                    num_layers=layers[i], groups=norm_num_groups, eps=norm_eps, add_downsample=i < levels - 1,
                    downsample_padding=downsample_padding, heads=heads[i], **attention,
                )
            )  # fmt: skip

        self.mid_block = block_class(mid_block_type, MID_BLOCKS)(
            in_channels=block_out_channels[-1], temb_channels=temb_channels, groups=norm_num_groups, eps=norm_eps,
            output_scale_factor=mid_block_scale_factor, heads=heads[-1], **attention,
        )  # fmt: skip

        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, levels - 1)]
            self.up_blocks.append(
                block_class(block_type, UP_BLOCKS)(
                    in_channels=input_channel, prev_output_channel=prev_output_channel, out_channels=output_channel,
                    temb_channels=temb_channels, num_layers=list(reversed(layers))[i] + 1, groups=norm_num_groups,
                    eps=norm_eps, add_upsample=i < levels - 1, heads=list(reversed(heads))[i], **attention,
                )
            )  # fmt: skip
        self.num_upsamplers = levels - 1

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = FirstFrameConv3d(block_out_channels[0], out_channels, conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

    # ------------------------------------------------------------------------------------------ config

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # Accept official and SD configs: check (then drop) the 2-D UNet options AVSyncD never varies.
        return super().extract_init_dict(_check_fixed_options(config_dict, "config"), **kwargs)

    @classmethod
    def from_unet2d(cls, unet2d, audio_cross_attention_dim: int | None = None, load_weights: bool = True) -> "AVSyncDUNet3DModel":
        """Inflate a diffusers ``UNet2DConditionModel`` (Stable Diffusion 1.5) into AVSyncD.

        Every 2-D weight is copied exactly; the new temporal/audio modules keep their initialisation (the
        official zero-inits: ``conv_temp`` and ``attn_temp.to_out.0.weight``). A 2-D option AVSyncD cannot
        represent, or a 2-D weight without an identically shaped counterpart, is an error.
        """
        config = {k: v for k, v in unet2d.config.items() if not k.startswith("_")}
        config = _check_fixed_options(config, "UNet2DConditionModel config")
        config["mid_block_type"] = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
        for key in ("down_block_types", "up_block_types"):
            config[key] = tuple(_inflate_block_type(name) for name in config[key])
        config["mid_block_type"] = _inflate_block_type(config["mid_block_type"])
        if audio_cross_attention_dim is not None:
            config["audio_cross_attention_dim"] = audio_cross_attention_dim
        unknown = set(config) - set(cls._get_init_keys(cls)) - {"self"}
        if unknown:
            raise ValueError(f"UNet2DConditionModel options not understood by AVSyncDUNet3DModel: {sorted(unknown)}")
        model = cls.from_config(config)
        if load_weights:
            model.load_unet2d_weights(unet2d.state_dict())
        return model if model.dtype == unet2d.dtype else model.to(unet2d.dtype)

    def load_unet2d_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a 2-D UNet state dict; every key must exist here with the same shape, and every key left
        unfilled must belong to a temporal/audio module."""
        own = self.state_dict()
        mismatched = [k for k, v in state_dict.items() if k not in own or own[k].shape != v.shape]
        if mismatched:
            raise ValueError(f"2-D UNet weights without an identically shaped 3-D counterpart: {mismatched[:10]}")
        unfilled = [k for k in own if k not in state_dict and not _is_temporal_audio(k)]
        if unfilled:
            raise ValueError(f"3-D UNet weights the 2-D UNet should provide but does not: {unfilled[:10]}")
        self.load_state_dict(state_dict, strict=False)

    # ------------------------------------------------------------------------------------------ training

    def temporal_audio_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters of the modules AVSyncD adds (``conv_temp``, ``attn_temp``, ``norm_temp``,
        ``pos_embedding_temp``, ``attn_audio``, ``norm_audio``)."""
        return ((name, p) for name, p in self.named_parameters() if _is_temporal_audio(name))

    def freeze_image_params(self) -> None:
        """Freeze the Stable Diffusion weights: only the temporal and audio modules stay trainable."""
        self.requires_grad_(False)
        for _, parameter in self.temporal_audio_parameters():
            parameter.requires_grad_(True)

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        audio_encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> AVSyncDUNet3DOutput | tuple[torch.Tensor]:
        """Predict the noise of every frame.

        Args (official names and shapes):
            sample: (b, in_channels, f, h, w) noisy video latents; frame 0 is the clean image latent.
            timestep: scalar, 0-d or (b,) diffusion step, shared by all frames of a sample.
            encoder_hidden_states: text tokens, (b, f, 77, d) per frame or (b, 77, d) for all frames.
            audio_encoder_hidden_states: ImageBind audio tokens, (b, f, L, d_audio) or (b, L, d_audio).
            audio_attention_mask: (b, f, L) or (b, L) bool, True = may attend (segment masks), or None.
            attention_mask: accepted and ignored, as in the official model.
            class_labels, timestep_cond, cross_attention_kwargs: unsupported; must be None.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got {tuple(sample.shape)}")
        for name, value in (("class_labels", class_labels), ("timestep_cond", timestep_cond), ("cross_attention_kwargs", cross_attention_kwargs)):
            if value is not None:
                raise ValueError(f"{name} is not supported by AVSyncDUNet3DModel")
        if audio_encoder_hidden_states is None:
            raise ValueError("audio_encoder_hidden_states is required (pass the null-audio tokens for no audio)")
        batch, _, num_frames = sample.shape[:3]
        conditions = (
            _per_frame(encoder_hidden_states, batch, num_frames, "encoder_hidden_states", item_ndim=2),
            _per_frame(audio_encoder_hidden_states, batch, num_frames, "audio_encoder_hidden_states", item_ndim=2),
            None
            if audio_attention_mask is None
            else _per_frame(audio_attention_mask.bool(), batch, num_frames, "audio_attention_mask", item_ndim=1).unsqueeze(1),
        )

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps.reshape(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        emb = emb.unsqueeze(1).expand(-1, num_frames, -1)  # the same step for every frame

        # Upsampling sizes are taken from the skips when the latent is not a multiple of 2**num_upsamplers.
        forward_upsample_size = any(s % (2**self.num_upsamplers) for s in sample.shape[-2:])

        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            sample, block_skips = block(sample, emb, conditions)
            skips += block_skips
        if down_block_additional_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        sample = self.mid_block(sample, emb, conditions)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[-2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            sample = block(sample, block_skips, emb, conditions, upsample_size)

        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        if not return_dict:
            return (sample,)
        return AVSyncDUNet3DOutput(sample=sample)


def _inflate_block_type(name: str) -> str:
    if name in BLOCKS_FROM_2D:
        return BLOCKS_FROM_2D[name]
    raise ValueError(f"2-D block type {name!r} has no AVSyncD counterpart (supported: {sorted(BLOCKS_FROM_2D)})")


def _is_temporal_audio(key: str) -> bool:
    return any(part in TEMPORAL_AUDIO_MODULE_NAMES for part in key.split("."))


def _per_frame(tensor: torch.Tensor, batch: int, num_frames: int, name: str, item_ndim: int) -> torch.Tensor:
    """(b, f, *item) per frame, or (b, *item) shared by all frames -> (b*f, *item), the transformer layout."""
    if tensor.ndim == item_ndim + 2:
        if tuple(tensor.shape[:2]) != (batch, num_frames):
            raise ValueError(f"{name} is {tuple(tensor.shape)}; expected (batch={batch}, frames={num_frames}, ...)")
        return tensor.reshape(batch * num_frames, *tensor.shape[2:])
    if tensor.ndim == item_ndim + 1:
        if tensor.shape[0] != batch:
            raise ValueError(f"{name} has batch {tensor.shape[0]}, sample has {batch}")
        return tensor.unsqueeze(1).expand(batch, num_frames, *tensor.shape[1:]).reshape(batch * num_frames, *tensor.shape[1:])
    raise ValueError(f"{name} must have {item_ndim + 2} (per frame) or {item_ndim + 1} dims, got {tuple(tensor.shape)}")
