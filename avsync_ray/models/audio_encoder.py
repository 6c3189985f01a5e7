"""ImageBind audio encoder with per-frame segment masks: AVSyncD's audio condition."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from avsync_ray.models.imagebind import AUDIO, build_branch, imagebind_config, load_imagebind_state_dict, select_modality


@dataclass
class ImageBindAudioEncoderOutput(BaseOutput):
    """``audio_embeds`` (b, out_dim) CLS embeddings; ``audio_encodings`` (b, 1 + rows*cols, d) tokens after
    ``final_layer_norm``; ``audio_segment_masks`` (b, n_segment, 1 + rows*cols) bool, True = may attend."""

    audio_embeds: torch.Tensor
    audio_encodings: torch.Tensor
    audio_segment_masks: torch.Tensor


def segment_time_columns(num_columns: int, num_segments: int) -> np.ndarray:
    """(num_segments, num_columns) bool: segment s covers ``ceil(cols / segments)`` consecutive time columns
    starting at ``round(linspace(0, cols - size, segments))[s]`` (so neighbours overlap by one column when
    the columns do not divide evenly). The official rule, derived here instead of hard-coded."""
    size = math.ceil(num_columns / num_segments)
    starts = np.round(np.linspace(0, num_columns - size, num_segments)).astype(int)
    mask = np.zeros((num_segments, num_columns), dtype=bool)
    for segment, begin in enumerate(starts):
        mask[segment, begin : begin + size] = True
    return mask


def segment_token_masks(num_rows: int, num_columns: int, num_segments: int) -> torch.Tensor:
    """(num_segments, 1 + rows*cols) bool over the CLS token plus the frequency-major patch tokens:
    each segment sees CLS and every frequency row of its time columns."""
    columns = torch.from_numpy(segment_time_columns(num_columns, num_segments))
    patches = columns.unsqueeze(1).expand(num_segments, num_rows, num_columns).reshape(num_segments, -1)
    return torch.cat([torch.ones(num_segments, 1, dtype=torch.bool), patches], dim=1)


class ImageBindAudioEncoder(ModelMixin, ConfigMixin):
    """ImageBind's audio branch returning all trunk tokens, plus masks that give frame ``i`` the CLS token and
    the patch tokens of the ``i``-th time segment.

    The config (``n_segment``, ``pretrained_model_name``) and the 179 state-dict keys are those of the
    official ``ImageBindSegmaskAudioEncoder``, so its saved folders load as they are. Unlike the official
    class, construction never downloads: weights come from :meth:`from_imagebind_checkpoint` or
    :meth:`from_pretrained`. The encoder is frozen and always in eval mode.
    """

    @register_to_config
    def __init__(self, n_segment: int = 12, pretrained_model_name: str = "imagebind-huge"):
        super().__init__()
        self.imagebind_config = imagebind_config(pretrained_model_name)
        self.preprocessor, self.trunk, self.head, self.postprocessor = build_branch(AUDIO, self.imagebind_config)
        self.final_layer_norm = nn.LayerNorm(self.imagebind_config.audio_embed_dim, eps=1e-6)
        self._null_cache: dict[tuple, torch.Tensor] = {}
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_imagebind_checkpoint(
        cls, path: str | Path, n_segment: int = 12, pretrained_model_name: str = "imagebind-huge"
    ) -> "ImageBindAudioEncoder":
        """Build from ImageBind's own ``imagebind_huge.pth``; ``final_layer_norm`` stays at (1, 0) as in the official code."""
        encoder = cls(n_segment=n_segment, pretrained_model_name=pretrained_model_name)
        parts = select_modality(load_imagebind_state_dict(path), AUDIO)
        for name, state in parts.items():
            getattr(encoder, name).load_state_dict(state, strict=True)
        return encoder

    def train(self, mode: bool = True) -> "ImageBindAudioEncoder":
        # Frozen: drop-path in the trunk must stay off (the official trainer left it on; see models/imagebind.py).
        return super().train(False)

    def load_state_dict(self, *args, **kwargs):
        self._null_cache.clear()
        return super().load_state_dict(*args, **kwargs)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.imagebind_config.audio_patch_grid

    @property
    def mel_shape(self) -> tuple[int, int, int]:
        return (1, self.imagebind_config.audio_num_mel_bins, self.imagebind_config.audio_target_length)

    def segment_masks(self, batch_size: int, num_segments: int | None = None, device=None) -> torch.Tensor:
        """(batch, num_segments, tokens) bool masks; ``num_segments`` defaults to ``config.n_segment``."""
        masks = segment_token_masks(*self.patch_grid, num_segments or self.config.n_segment)
        return masks.to(device=device or self.device).unsqueeze(0).expand(batch_size, -1, -1)

    def forward(
        self,
        input_features: torch.Tensor,
        normalize: bool = False,
        num_segments: int | None = None,
        return_dict: bool = True,
    ) -> ImageBindAudioEncoderOutput | tuple:
        """Encode normalised mels ``(b, 1, 128, 204)``.

        ``normalize=True`` L2-normalises the CLS embedding and scales it by ImageBind's fixed 20 (as the
        official ``postprocessor``); AVSyncD uses only the tokens.
        """
        if input_features.ndim != 4 or tuple(input_features.shape[1:]) != self.mel_shape:
            raise ValueError(f"expected mel input (b, {', '.join(map(str, self.mel_shape))}), got {tuple(input_features.shape)}")
        processed = self.preprocessor(audio=input_features)
        tokens = self.trunk(**processed["trunk"])
        cls_embeds = self.head(tokens, **processed["head"])
        if normalize:
            cls_embeds = self.postprocessor(cls_embeds)
        encodings = self.final_layer_norm(tokens)
        masks = self.segment_masks(input_features.shape[0], num_segments, device=input_features.device)
        if not return_dict:
            return cls_embeds, encodings, masks
        return ImageBindAudioEncoderOutput(cls_embeds, encodings, masks)

    @torch.no_grad()
    def null_audio_encodings(self, device=None, dtype=None) -> torch.Tensor:
        """Tokens (1, tokens, d) of the null audio: an all-zero normalised mel. Computed once per device/dtype."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        key = (device, dtype)
        if key not in self._null_cache:
            zeros = torch.zeros(1, *self.mel_shape, device=self.device, dtype=self.dtype)
            self._null_cache[key] = self(zeros).audio_encodings.to(device=device, dtype=dtype)
        return self._null_cache[key]
