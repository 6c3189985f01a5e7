"""Adapter around Meta's ImageBind code (PyPI ``imagebind-unofficial``): the only module that imports it.

It builds only the modality branches a caller needs (audio for AVSyncD; vision and text for the IA/IT
metrics and curation filters) at the official ``huge`` sizes or a ``tiny`` test size, and loads
``imagebind_huge.pth`` from a path given in config. It never downloads.

Difference from the official AVSyncD code: the official trainer leaves the ImageBind audio trunk in
train mode, so drop-path (0 -> 0.1 over the 12 blocks) is active on the audio features while training.
Every ImageBind module built here is frozen and stays in eval mode.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Sequence

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, functional as TF

from avsync_ray.devices import loads_model
from avsync_ray.media.frames import to_float_frames

AUDIO, VISION, TEXT = "audio", "vision", "text"
MODALITIES = (AUDIO, VISION, TEXT)
# ImageBind's image normalisation (OpenAI CLIP mean/std).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@functools.cache
def imagebind_code() -> SimpleNamespace:
    """Meta's ImageBind modules (``helpers``, ``preprocessors``, ``transformer``), imported on first use.

    ``import imagebind`` runs imagebind/data.py, which imports pytorchvideo, which still imports the pre-0.17
    public name ``torchvision.transforms.functional_tensor``; torchvision now ships it privately, so that name is
    aliased here, once, by the first caller that builds an ImageBind branch (never at import time)."""
    sys.modules.setdefault("torchvision.transforms.functional_tensor", importlib.import_module("torchvision.transforms._functional_tensor"))
    return SimpleNamespace(
        helpers=importlib.import_module("imagebind.models.helpers"),
        preprocessors=importlib.import_module("imagebind.models.multimodal_preprocessors"),
        transformer=importlib.import_module("imagebind.models.transformer"),
    )


def preprocess_images(frames, size: int = 224) -> torch.Tensor:
    """RGB frames (T, H, W, 3) uint8 (or float (T, 3, H, W) in [0, 1]) -> ImageBind's image input (T, 3, size,
    size): resize to a square (bicubic, antialiased), centre crop, CLIP mean/std (the official
    ``clip_preprocess_videos``)."""
    images = frames if isinstance(frames, torch.Tensor) and frames.is_floating_point() else to_float_frames(frames)
    images = TF.resize(images, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.center_crop(images, [size, size]), IMAGE_MEAN, IMAGE_STD)


@dataclass(frozen=True)
class ImageBindConfig:
    """Sizes of the three ImageBind branches this project uses. Defaults are ``imagebind_huge``."""

    out_embed_dim: int = 1024
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    vision_frames: int = 2
    vision_kernel_size: tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    text_context_length: int = 77
    text_vocab_size: int = 49408
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_kernel_size: int = 16
    audio_stride: int = 10
    audio_num_mel_bins: int = 128
    audio_target_length: int = 204
    audio_drop_path: float = 0.1

    @property
    def audio_patch_grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of the audio patch tokens: (12, 19) for the 128x204 mel."""
        rows = (self.audio_num_mel_bins - self.audio_kernel_size) // self.audio_stride + 1
        cols = (self.audio_target_length - self.audio_kernel_size) // self.audio_stride + 1
        return rows, cols


IMAGEBIND_PRESETS: dict[str, ImageBindConfig] = {
    "imagebind-huge": ImageBindConfig(),
    # Same token grids as huge (so masks, mel and image sizes are unchanged), tiny widths and depths.
    "imagebind-tiny": ImageBindConfig(
        out_embed_dim=32,
        vision_embed_dim=32,
        vision_num_blocks=2,
        vision_num_heads=2,
        text_embed_dim=32,
        text_num_blocks=2,
        text_num_heads=2,
        audio_embed_dim=32,
        audio_num_blocks=2,
        audio_num_heads=2,
    ),
}


def imagebind_config(name: str) -> ImageBindConfig:
    try:
        return IMAGEBIND_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown ImageBind preset {name!r}; choose one of {sorted(IMAGEBIND_PRESETS)}") from None


def _trunk(embed_dim: int, num_blocks: int, num_heads: int, *, pre_ln: bool, add_bias_kv: bool, drop_path: float):
    code = imagebind_code()
    return code.transformer.SimpleTransformer(
        embed_dim=embed_dim,
        num_blocks=num_blocks,
        ffn_dropout_rate=0.0,
        drop_path_rate=drop_path,
        attn_target=partial(code.transformer.MultiheadAttention, embed_dim=embed_dim, num_heads=num_heads, bias=True, add_bias_kv=add_bias_kv),
        pre_transformer_layer=nn.Sequential(
            nn.LayerNorm(embed_dim, eps=1e-6) if pre_ln else nn.Identity(),
            code.helpers.EinOpsRearrange("b l d -> l b d"),
        ),
        post_transformer_layer=code.helpers.EinOpsRearrange("l b d -> b l d"),
    )


def _cls_head(embed_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(embed_dim, eps=1e-6), imagebind_code().helpers.SelectElement(index=0), nn.Linear(embed_dim, out_dim, bias=False))


def build_branch(modality: str, config: ImageBindConfig) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(preprocessor, trunk, head, postprocessor) of one modality, exactly as ``imagebind_model`` builds them."""
    code = imagebind_code()
    helpers, pre = code.helpers, code.preprocessors
    if modality == AUDIO:
        stem = pre.PatchEmbedGeneric(
            proj_stem=[
                nn.Conv2d(1, config.audio_embed_dim, kernel_size=config.audio_kernel_size, stride=config.audio_stride, bias=False)
            ],
            norm_layer=nn.LayerNorm(config.audio_embed_dim),
        )
        preprocessor = pre.AudioPreprocessor(
            img_size=[1, config.audio_num_mel_bins, config.audio_target_length],
            num_cls_tokens=1,
            pos_embed_fn=partial(pre.SpatioTemporalPosEmbeddingHelper, learnable=True),
            audio_stem=stem,
        )
        trunk = _trunk(
            config.audio_embed_dim, config.audio_num_blocks, config.audio_num_heads,
            pre_ln=False, add_bias_kv=True, drop_path=config.audio_drop_path,
        )  # fmt: skip
        head = _cls_head(config.audio_embed_dim, config.out_embed_dim)
        postprocessor = nn.Sequential(helpers.Normalize(dim=-1), helpers.LearnableLogitScaling(logit_scale_init=20.0, learnable=False))
    elif modality == VISION:
        stem = pre.PatchEmbedGeneric(
            proj_stem=[
                pre.PadIm2Video(pad_type="repeat", ntimes=2),
                nn.Conv3d(3, config.vision_embed_dim, kernel_size=config.vision_kernel_size, stride=config.vision_kernel_size, bias=False),
            ]
        )
        preprocessor = pre.RGBDTPreprocessor(
            img_size=[3, config.vision_frames, config.image_size, config.image_size],
            num_cls_tokens=1,
            pos_embed_fn=partial(pre.SpatioTemporalPosEmbeddingHelper, learnable=True),
            rgbt_stem=stem,
            depth_stem=None,
        )
        trunk = _trunk(
            config.vision_embed_dim, config.vision_num_blocks, config.vision_num_heads,
            pre_ln=True, add_bias_kv=False, drop_path=0.0,
        )  # fmt: skip
        head = _cls_head(config.vision_embed_dim, config.out_embed_dim)
        postprocessor = helpers.Normalize(dim=-1)
    elif modality == TEXT:
        preprocessor = pre.TextPreprocessor(
            context_length=config.text_context_length,
            vocab_size=config.text_vocab_size,
            embed_dim=config.text_embed_dim,
            causal_masking=True,
        )
        trunk = _trunk(
            config.text_embed_dim, config.text_num_blocks, config.text_num_heads,
            pre_ln=False, add_bias_kv=False, drop_path=0.0,
        )  # fmt: skip
        head = helpers.SelectEOSAndProject(
            proj=nn.Sequential(nn.LayerNorm(config.text_embed_dim, eps=1e-6), nn.Linear(config.text_embed_dim, config.out_embed_dim, bias=False))
        )
        postprocessor = nn.Sequential(helpers.Normalize(dim=-1), helpers.LearnableLogitScaling(learnable=True))
    else:
        raise ValueError(f"unknown ImageBind modality {modality!r}; choose from {MODALITIES}")
    return preprocessor, trunk, head, postprocessor


def load_imagebind_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``imagebind_huge.pth`` (a plain state dict) without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageBind weights not found at {path}. Download imagebind_huge.pth once and set the config field "
            "that points at it (`model.imagebind` for training and precompute, `filters.imagebind.checkpoint` or "
            "`filters.semantic.checkpoint` for curation, `--imagebind` for the metric and convert commands); nothing is downloaded at run time."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def select_modality(state_dict: dict[str, torch.Tensor], modality: str) -> dict[str, dict[str, torch.Tensor]]:
    """Split the full checkpoint's ``modality_<part>s.<modality>.*`` keys into per-part state dicts."""
    parts: dict[str, dict[str, torch.Tensor]] = {"preprocessor": {}, "trunk": {}, "head": {}, "postprocessor": {}}
    for part in parts:
        prefix = f"modality_{part}s.{modality}."
        parts[part] = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not parts["trunk"]:
        raise KeyError(f"no '{modality}' weights in the ImageBind checkpoint (expected keys 'modality_trunks.{modality}.*')")
    return parts


class ImageBind(nn.Module):
    """The chosen ImageBind branches, with the checkpoint's own key names, frozen and in eval mode.

    ``embed_*`` return unit-norm embeddings, so dot products are the cosine similarities the IA/IT metrics
    use (the official metric code divides the fixed audio scale and learned text scale back out).
    """

    def __init__(self, config: ImageBindConfig = ImageBindConfig(), modalities: Sequence[str] = MODALITIES):
        super().__init__()
        self.config = config
        self.modalities = tuple(modalities)
        branches = {modality: build_branch(modality, config) for modality in self.modalities}
        self.modality_preprocessors = nn.ModuleDict({m: b[0] for m, b in branches.items()})
        self.modality_trunks = nn.ModuleDict({m: b[1] for m, b in branches.items()})
        self.modality_heads = nn.ModuleDict({m: b[2] for m, b in branches.items()})
        self.modality_postprocessors = nn.ModuleDict({m: b[3] for m, b in branches.items()})
        self.requires_grad_(False)
        self.eval()

    @classmethod
    @loads_model
    def from_checkpoint(
        cls, path: str | Path, preset: str = "imagebind-huge", modalities: Sequence[str] = MODALITIES
    ) -> "ImageBind":
        model = cls(imagebind_config(preset), modalities)
        state_dict = load_imagebind_state_dict(path)
        wanted = tuple(f"modality_{part}s.{m}." for part in ("preprocessor", "trunk", "head", "postprocessor") for m in model.modalities)
        model.load_state_dict({k: v for k, v in state_dict.items() if k.startswith(wanted)}, strict=True)
        return model

    def train(self, mode: bool = True) -> "ImageBind":
        # Frozen feature extractor: drop-path must never be active (see the module docstring).
        return super().train(False)

    def _embed(self, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        if modality not in self.modalities:
            raise ValueError(f"this ImageBind was built without the {modality!r} branch (built: {self.modalities})")
        processed = self.modality_preprocessors[modality](**{modality: inputs})
        tokens = self.modality_trunks[modality](**processed["trunk"])
        embeds = self.modality_heads[modality](tokens, **processed["head"])
        return nn.functional.normalize(embeds, dim=-1)

    @torch.no_grad()
    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(b, 1, 128, 204) normalised mel -> (b, out_embed_dim) unit vectors."""
        return self._embed(AUDIO, mel)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, 224, 224) images normalised with ``IMAGE_MEAN``/``IMAGE_STD`` -> (b, out_embed_dim) unit vectors."""
        return self._embed(VISION, images)

    @torch.no_grad()
    def embed_text(self, texts: Iterable[str]) -> torch.Tensor:
        """Strings -> (b, out_embed_dim) unit vectors (ImageBind's BPE tokenizer, 77 tokens)."""
        device = next(self.parameters()).device
        return self._embed(TEXT, tokenize(texts, self.config.text_context_length).to(device))


def tiny_official_imagebind(seed: int = 0) -> nn.Module:
    """Meta's own ``ImageBindModel`` (all six modalities) at the ``imagebind-tiny`` sizes, with every weight moved
    away from its initialisation, so a wrong key mapping cannot pass a comparison against it."""
    imagebind_code()  # the torchvision alias `imagebind` needs
    from imagebind.models.imagebind_model import ImageBindModel

    c = IMAGEBIND_PRESETS["imagebind-tiny"]
    torch.manual_seed(seed)
    official = ImageBindModel(
        out_embed_dim=c.out_embed_dim, vision_embed_dim=c.vision_embed_dim, vision_num_blocks=c.vision_num_blocks,
        vision_num_heads=c.vision_num_heads, text_embed_dim=c.text_embed_dim, text_num_blocks=c.text_num_blocks,
        text_num_heads=c.text_num_heads, audio_embed_dim=c.audio_embed_dim, audio_num_blocks=c.audio_num_blocks,
        audio_num_heads=c.audio_num_heads, audio_drop_path=c.audio_drop_path, depth_embed_dim=16, depth_num_blocks=1,
        depth_num_heads=2, thermal_embed_dim=16, thermal_num_blocks=1, thermal_num_heads=2, imu_embed_dim=16,
        imu_num_blocks=1, imu_num_heads=2,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for parameter in official.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return official


def write_tiny_imagebind_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A file in ``imagebind_huge.pth``'s format (``modality_{preprocessors,trunks,heads,postprocessors}.<m>.*``)
    holding :func:`tiny_official_imagebind`; load it with ``preset="imagebind-tiny"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_official_imagebind(seed).state_dict(), path)
    return path


def tokenize(texts: Iterable[str], context_length: int = 77) -> torch.Tensor:
    """ImageBind's BPE tokenizer (vocabulary shipped inside the ``imagebind`` package) -> (b, context_length) ids."""
    bpe = importlib.resources.files("imagebind") / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    tokenizer = _tokenizer(str(bpe), context_length)
    return torch.stack([tokenizer(text).reshape(-1) for text in texts])


_TOKENIZERS: dict[tuple[str, int], object] = {}


def _tokenizer(bpe_path: str, context_length: int):
    key = (bpe_path, context_length)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = imagebind_code().preprocessors.SimpleTokenizer(bpe_path=bpe_path, context_length=context_length)
    return _TOKENIZERS[key]


__all__ = [
    "AUDIO",
    "IMAGEBIND_PRESETS",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "MODALITIES",
    "TEXT",
    "VISION",
    "ImageBind",
    "ImageBindConfig",
    "build_branch",
    "imagebind_code",
    "imagebind_config",
    "load_imagebind_state_dict",
    "preprocess_images",
    "select_modality",
    "tiny_official_imagebind",
    "tokenize",
    "write_tiny_imagebind_checkpoint",
]
