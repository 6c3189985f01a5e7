"""Building blocks of the AVSyncD 3-D UNet.

Video tensors are ``(batch, channels, frames, height, width)``. Module and parameter names are the
official ones (``conv_temp``, ``attn_temp``, ``attn_audio``, ...), so official checkpoints load as they are;
the block class names are the official block-type names used in ``config.json``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

# Names of the modules AVSyncD adds to Stable Diffusion: the trainable set when the image weights are frozen.
TEMPORAL_AUDIO_MODULE_NAMES = frozenset(
    {"conv_temp", "attn_temp", "norm_temp", "pos_embedding_temp", "attn_audio", "norm_audio"}
)


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b*f, c, h, w)."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def batch_to_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, c, f, h, w)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).transpose(1, 2)


class FirstFrameConv3d(nn.Conv2d):
    """A 2-D conv applied to every frame, plus a residual ``conv_temp`` (Linear 3C -> C) that reads, at each
    pixel, the conv features of [first frame, previous frame, current frame]. ``conv_temp`` starts at zero,
    so a fresh layer is exactly the per-frame 2-D conv (the official ``FFInflatedConv3d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding)
        self.conv_temp = nn.Linear(3 * out_channels, out_channels)
        nn.init.zeros_(self.conv_temp.weight)
        nn.init.zeros_(self.conv_temp.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_frames = x.shape[2]
        y = super().forward(frames_to_batch(x))
        y = batch_to_frames(y, num_frames).permute(0, 3, 4, 2, 1)  # (b, h, w, f, c)
        first = y[..., :1, :].expand_as(y)
        previous = torch.cat([y[..., :1, :], y[..., :-1, :]], dim=-2)
        y = y + self.conv_temp(torch.cat([first, previous, y], dim=-1))
        return y.permute(0, 4, 3, 1, 2).contiguous()


class FFSpatioTempResnetBlock3D(nn.Module):
    """diffusers ``ResnetBlock2D`` semantics with first-frame convs; its GroupNorms pool statistics over all
    frames (they see the 5-D tensor), as in the official model."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float, output_scale_factor: float = 1.0):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = FirstFrameConv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = FirstFrameConv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = FirstFrameConv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` (b, c, f, h, w); ``temb`` (b, f, temb_channels)."""
        hidden = self.conv1(F.silu(self.norm1(x)))
        hidden = hidden + self.time_emb_proj(F.silu(temb)).transpose(1, 2)[..., None, None]
        hidden = self.conv2(self.dropout(F.silu(self.norm2(hidden))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + hidden) / self.output_scale_factor


class FFSpatioTempResDownsample3D(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = FirstFrameConv3d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FFSpatioTempResUpsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = FirstFrameConv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bf16 kernel on some devices
            x = x.float()
        if output_size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=(x.shape[2], *output_size), mode="nearest")
        return self.conv(x.to(dtype))


class FirstFrameAttnProcessor:
    """Self-attention in which every frame's queries attend to the keys/values of frame 0 only.

    Frames are folded into the query length, so frame 0's keys and values are computed once per video
    instead of being copied to every frame; per query row the result equals the official processor's.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, tokens, channels = hidden_states.shape
        batch = bf // num_frames
        heads = attn.heads
        query = attn.to_q(hidden_states).reshape(batch, num_frames * tokens, heads, -1).transpose(1, 2)
        first = hidden_states.reshape(batch, num_frames, tokens, channels)[:, 0]
        key = attn.to_k(first).reshape(batch, tokens, heads, -1).transpose(1, 2)
        value = attn.to_v(first).reshape(batch, tokens, heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(bf, tokens, -1).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class FirstFrameAttention(Attention):
    """diffusers ``Attention`` whose forward takes the frame count and runs :class:`FirstFrameAttnProcessor`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, processor=FirstFrameAttnProcessor(), **kwargs)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.processor(self, hidden_states, num_frames=num_frames)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm residual sub-layers, in the official order: first-frame self-attention -> audio
    cross-attention (segment-masked) -> text cross-attention -> temporal attention -> GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, audio_cross_attention_dim: int, upcast_attention: bool):
        super().__init__()
        attention = dict(heads=heads, dim_head=head_dim, dropout=0.0, bias=False, upcast_attention=upcast_attention)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = FirstFrameAttention(query_dim=dim, **attention)
        self.norm_audio = nn.LayerNorm(dim)
        self.attn_audio = Attention(query_dim=dim, cross_attention_dim=audio_cross_attention_dim, **attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, **attention)
        # Frame-index positional encoding for temporal attention (sinusoid -> Linear -> SiLU -> Linear).
        self.pos_proj_temp = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.pos_embedding_temp = TimestepEmbedding(dim, dim, act_fn="silu")
        self.attn_temp = Attention(query_dim=dim, **attention)
        nn.init.zeros_(self.attn_temp.to_out[0].weight)  # the official init zeroes the weight only, not the bias
        self.norm_temp = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_frames: int,
        encoder_hidden_states: torch.Tensor,
        audio_encoder_hidden_states: torch.Tensor,
        audio_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``hidden_states`` (b*f, tokens, dim); text (b*f, 77, d_text); audio (b*f, L, d_audio); mask (b*f, 1, L)."""
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), num_frames=num_frames)
        hidden_states = hidden_states + self.attn_audio(
            self.norm_audio(hidden_states), encoder_hidden_states=audio_encoder_hidden_states, attention_mask=audio_attention_mask
        )
        hidden_states = hidden_states + self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states)

        bf, tokens, channels = hidden_states.shape
        frame_index = torch.arange(num_frames, device=hidden_states.device)
        position = self.pos_embedding_temp(self.pos_proj_temp(frame_index).to(hidden_states.dtype))  # (f, c)
        temporal = hidden_states.reshape(bf // num_frames, num_frames, tokens, channels).transpose(1, 2)
        temporal = temporal.reshape(-1, num_frames, channels)  # (b*tokens, f, c)
        temporal = temporal + self.attn_temp(self.norm_temp(temporal + position))
        hidden_states = temporal.reshape(bf // num_frames, tokens, num_frames, channels).transpose(1, 2).reshape(bf, tokens, channels)

        return hidden_states + self.ff(self.norm3(hidden_states))


class FFSpatioAudioTempTransformer3DModel(nn.Module):
    """Per-frame GroupNorm + 1x1 projection around one :class:`BasicTransformerBlock`, with a residual."""

    def __init__(self, heads: int, head_dim: int, in_channels: int, norm_num_groups: int, cross_attention_dim: int, audio_cross_attention_dim: int, upcast_attention: bool):
        super().__init__()
        inner_dim = heads * head_dim
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, heads, head_dim, cross_attention_dim, audio_cross_attention_dim, upcast_attention)]
        )
        self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, x, encoder_hidden_states, audio_encoder_hidden_states, audio_attention_mask):
        """``x`` (b, c, f, h, w); conditions already flattened to (b*f, ...) by the UNet."""
        num_frames = x.shape[2]
        residual = frames_to_batch(x)
        bf, _, height, width = residual.shape
        hidden = self.proj_in(self.norm(residual))
        hidden = hidden.permute(0, 2, 3, 1).reshape(bf, height * width, -1)
        for block in self.transformer_blocks:
            hidden = block(hidden, num_frames, encoder_hidden_states, audio_encoder_hidden_states, audio_attention_mask)
        hidden = hidden.reshape(bf, height, width, -1).permute(0, 3, 1, 2).contiguous()
        return batch_to_frames(self.proj_out(hidden) + residual, num_frames)


class _Block(nn.Module):
    """Shared gradient-checkpointing switch (set by ``ModelMixin.enable_gradient_checkpointing``)."""

    has_cross_attention = False

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def _run(self, module: nn.Module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)


def _resnet(in_channels, out_channels, temb_channels, groups, eps, output_scale_factor=1.0):
    return FFSpatioTempResnetBlock3D(in_channels, out_channels, temb_channels, groups, eps, output_scale_factor)


def _transformer(channels, heads, groups, cross_attention_dim, audio_cross_attention_dim, upcast_attention):
    return FFSpatioAudioTempTransformer3DModel(heads, channels // heads, channels, groups, cross_attention_dim, audio_cross_attention_dim, upcast_attention)


class FFSpatioTempResDownBlock3D(_Block):
    def __init__(self, in_channels, out_channels, temb_channels, num_layers, groups, eps, add_downsample, downsample_padding, **_):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([FFSpatioTempResDownsample3D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, hidden_states, temb, conditions=None):
        skips = ()
        for resnet in self.resnets:
            hidden_states = self._run(resnet, hidden_states, temb)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class FFSpatioAudioTempCrossAttnDownBlock3D(_Block):
    has_cross_attention = True

    def __init__(self, in_channels, out_channels, temb_channels, num_layers, groups, eps, add_downsample, downsample_padding, heads, cross_attention_dim, audio_cross_attention_dim, upcast_attention):
        super().__init__()
        self.attentions = nn.ModuleList(
            [_transformer(out_channels, heads, groups, cross_attention_dim, audio_cross_attention_dim, upcast_attention) for _ in range(num_layers)]
        )
        self.resnets = nn.ModuleList(
            [_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([FFSpatioTempResDownsample3D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, hidden_states, temb, conditions):
        skips = ()
        for resnet, attention in zip(self.resnets, self.attentions):
            hidden_states = self._run(resnet, hidden_states, temb)
            hidden_states = self._run(attention, hidden_states, *conditions)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class FFSpatioAudioTempCrossAttnUNetMidBlock3D(_Block):
    has_cross_attention = True

    def __init__(self, in_channels, temb_channels, groups, eps, output_scale_factor, heads, cross_attention_dim, audio_cross_attention_dim, upcast_attention, num_layers: int = 1):
        super().__init__()
        self.attentions = nn.ModuleList(
            [_transformer(in_channels, heads, groups, cross_attention_dim, audio_cross_attention_dim, upcast_attention) for _ in range(num_layers)]
        )
        self.resnets = nn.ModuleList(
            [_resnet(in_channels, in_channels, temb_channels, groups, eps, output_scale_factor) for _ in range(num_layers + 1)]
        )

    def forward(self, hidden_states, temb, conditions):
        hidden_states = self._run(self.resnets[0], hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = self._run(attention, hidden_states, *conditions)
            hidden_states = self._run(resnet, hidden_states, temb)
        return hidden_states


def _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups, eps):
    """diffusers' skip bookkeeping: resnet i consumes the previous output plus one skip connection."""
    resnets = []
    for i in range(num_layers):
        skip_channels = in_channels if i == num_layers - 1 else out_channels
        resnet_in = prev_output_channel if i == 0 else out_channels
        resnets.append(_resnet(resnet_in + skip_channels, out_channels, temb_channels, groups, eps))
    return nn.ModuleList(resnets)


class FFSpatioTempResUpBlock3D(_Block):
    def __init__(self, in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups, eps, add_upsample, **_):
        super().__init__()
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups, eps)
        self.upsamplers = nn.ModuleList([FFSpatioTempResUpsample3D(out_channels)]) if add_upsample else None

    def forward(self, hidden_states, skips, temb, conditions=None, upsample_size=None):
        for resnet in self.resnets:
            hidden_states, skips = torch.cat([hidden_states, skips[-1]], dim=1), skips[:-1]
            hidden_states = self._run(resnet, hidden_states, temb)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class FFSpatioAudioTempCrossAttnUpBlock3D(_Block):
    has_cross_attention = True

    def __init__(self, in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups, eps, add_upsample, heads, cross_attention_dim, audio_cross_attention_dim, upcast_attention):
        super().__init__()
        self.attentions = nn.ModuleList(
            [_transformer(out_channels, heads, groups, cross_attention_dim, audio_cross_attention_dim, upcast_attention) for _ in range(num_layers)]
        )
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups, eps)
        self.upsamplers = nn.ModuleList([FFSpatioTempResUpsample3D(out_channels)]) if add_upsample else None

    def forward(self, hidden_states, skips, temb, conditions, upsample_size=None):
        for resnet, attention in zip(self.resnets, self.attentions):
            hidden_states, skips = torch.cat([hidden_states, skips[-1]], dim=1), skips[:-1]
            hidden_states = self._run(resnet, hidden_states, temb)
            hidden_states = self._run(attention, hidden_states, *conditions)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


DOWN_BLOCKS = {cls.__name__: cls for cls in (FFSpatioAudioTempCrossAttnDownBlock3D, FFSpatioTempResDownBlock3D)}
UP_BLOCKS = {cls.__name__: cls for cls in (FFSpatioTempResUpBlock3D, FFSpatioAudioTempCrossAttnUpBlock3D)}
MID_BLOCKS = {cls.__name__: cls for cls in (FFSpatioAudioTempCrossAttnUNetMidBlock3D,)}
# Stable Diffusion's 2-D block types and the AVSyncD block that inflates each.
BLOCKS_FROM_2D = {
    "CrossAttnDownBlock2D": "FFSpatioAudioTempCrossAttnDownBlock3D",
    "DownBlock2D": "FFSpatioTempResDownBlock3D",
    "UNetMidBlock2DCrossAttn": "FFSpatioAudioTempCrossAttnUNetMidBlock3D",
    "UpBlock2D": "FFSpatioTempResUpBlock3D",
    "CrossAttnUpBlock2D": "FFSpatioAudioTempCrossAttnUpBlock3D",
}


def block_class(block_type: str, registry: dict[str, type]) -> type:
    name = block_type[len("UNetRes") :] if block_type.startswith("UNetRes") else block_type  # official alias
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unsupported block type {block_type!r}; AVSyncD blocks are {sorted(registry)}") from None
