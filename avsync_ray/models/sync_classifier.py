"""The audio-visual synchronisation classifier (paper §1.1, reference §7): one unbounded score per pair.

Audio: a 2-D CNN on the (1, 128, 204) mel; video: an R(2+1)D network on (3, 12, H, W) frames; both
average-pooled to 512-d, concatenated, and an MLP 1024 -> 512 -> 256 -> 1. Submodule and parameter names
are the official (and AVID-CMA) ones, so the released classifier and the AVID-CMA weights load as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import InterpolationMode, functional as TF

from avsync_ray.devices import loads_model
from avsync_ray.media.audio import DEFAULT_MEL, waveform_to_mel
from avsync_ray.media.frames import to_float_frames
from avsync_ray.models.imagebind import IMAGE_MEAN, IMAGE_STD

BASE_WIDTH = 64  # the official (AVID-CMA) networks; smaller widths give the tiny preset
EMBED_DIM = 8 * BASE_WIDTH


class Basic2DBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN -> ReLU, no residual (AVID-CMA's audio block)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, padding=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class AudioConv2DNet(nn.Module):
    """(b, 1, 128, 204) mel -> (b, 8 * width); ``width=64`` is the official network (512-d)."""

    def __init__(self, width: int = BASE_WIDTH):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, width, kernel_size=7, padding=3, stride=2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.block1 = Basic2DBlock(width, width, stride=2)
        self.block2 = Basic2DBlock(width, 2 * width, stride=2)
        self.block3 = Basic2DBlock(2 * width, 4 * width, stride=2)
        self.block4 = Basic2DBlock(4 * width, 8 * width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(self.conv1(mel)))))
        return x.mean(dim=(2, 3))


class BasicR2P1DBlock(nn.Module):
    """(2+1)-D residual block: spatial 1x3x3 then temporal 3x1x1 convolutions (twice), BN after the sum."""

    def __init__(self, in_planes: int, out_planes: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.spt_conv1 = nn.Conv3d(in_planes, out_planes, (1, 3, 3), stride=(1, stride[1], stride[2]), padding=(0, 1, 1), bias=False)
        self.spt_bn1 = nn.BatchNorm3d(out_planes)
        self.tmp_conv1 = nn.Conv3d(out_planes, out_planes, (3, 1, 1), stride=(stride[0], 1, 1), padding=(1, 0, 0), bias=False)
        self.tmp_bn1 = nn.BatchNorm3d(out_planes)
        self.spt_conv2 = nn.Conv3d(out_planes, out_planes, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.spt_bn2 = nn.BatchNorm3d(out_planes)
        self.tmp_conv2 = nn.Conv3d(out_planes, out_planes, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.out_bn = nn.BatchNorm3d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        changes_shape = in_planes != out_planes or any(s != 1 for s in stride)
        self.res_conv = nn.Conv3d(in_planes, out_planes, 1, stride=stride, bias=False) if changes_shape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.relu(self.tmp_bn1(self.tmp_conv1(self.relu(self.spt_bn1(self.spt_conv1(x))))))
        main = self.tmp_conv2(self.relu(self.spt_bn2(self.spt_conv2(main))))
        shortcut = x if self.res_conv is None else self.res_conv(x)
        return self.relu(self.out_bn(main + shortcut))


class VideoR2Plus1DNet(nn.Module):
    """(b, 3, 12, H, W) normalised frames -> (b, 8 * width). Any H, W (224 in the paper; 112 works too)."""

    def __init__(self, width: int = BASE_WIDTH):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), padding=(1, 3, 3), stride=(1, 2, 2), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        w1, w2, w4, w8 = width, 2 * width, 4 * width, 8 * width
        self.conv2x = nn.Sequential(BasicR2P1DBlock(w1, w1), BasicR2P1DBlock(w1, w1))
        self.conv3x = nn.Sequential(BasicR2P1DBlock(w1, w2, stride=(2, 2, 2)), BasicR2P1DBlock(w2, w2))
        self.conv4x = nn.Sequential(BasicR2P1DBlock(w2, w4, stride=(2, 2, 2)), BasicR2P1DBlock(w4, w4))
        self.conv5x = nn.Sequential(BasicR2P1DBlock(w4, w8, stride=(2, 2, 2)), BasicR2P1DBlock(w8, w8))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.conv5x(self.conv4x(self.conv3x(self.conv2x(self.conv1(video)))))
        return x.mean(dim=(2, 3, 4))


class FCHead(nn.Module):
    """concat(audio, video) 1024 -> 512 -> 256 -> 1 (``fc.0``, ``fc.3``, ``fc.6``)."""

    def __init__(self, dim: int = EMBED_DIM, out_dim: int = 1, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim * 2, dim), nn.Dropout(dropout), nn.ReLU(inplace=True),
            nn.Linear(dim, dim // 2), nn.Dropout(dropout), nn.ReLU(inplace=True),
            nn.Linear(dim // 2, out_dim),
        )  # fmt: skip

    def forward(self, audio_embeds: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([audio_embeds, video_embeds], dim=-1))


class SyncClassifier(ModelMixin, ConfigMixin):
    """score(a, v): an unbounded logit, larger when audio ``a`` and video ``v`` are in sync.

    ``forward(audio, video)`` scores aligned pairs; :meth:`score_matrix` scores every (audio, video) pair
    of K clips with each encoder run once per clip. Inputs are what :meth:`preprocess` makes.
    """

    @register_to_config
    def __init__(
        self,
        head_dropout: float = 0.0,
        image_size: int = 224,
        resize_mode: Literal["crop", "squash"] = "crop",
        base_width: int = BASE_WIDTH,
    ):
        super().__init__()
        self.audio_encoder = AudioConv2DNet(base_width)
        self.video_encoder = VideoR2Plus1DNet(base_width)
        self.head = FCHead(8 * base_width, 1, head_dropout)

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_official(cls, modules_dir: str | Path, **config) -> "SyncClassifier":
        """Load the released classifier as it is: ``<dir>/{audio_encoder,video_encoder,head}/`` each with a
        ``config.json`` and ``diffusion_pytorch_model.bin`` (or ``.safetensors``), keys unprefixed.

        The official configs say ``pretrained: true``, which made the official loader read the AVID-CMA file
        first; the saved weights replace those anyway, so it is not needed here."""
        modules_dir = Path(modules_dir)
        head_config = json.loads((modules_dir / "head" / "config.json").read_text()) if (modules_dir / "head" / "config.json").is_file() else {}
        if head_config.get("dim", EMBED_DIM) != EMBED_DIM or head_config.get("out_dim", 1) != 1:
            raise ValueError(f"unsupported official head config {head_config}: expected dim={EMBED_DIM}, out_dim=1")
        model = cls(head_dropout=head_config.get("dropout", 0.0), **config)
        for name in ("audio_encoder", "video_encoder", "head"):
            getattr(model, name).load_state_dict(_read_weights(modules_dir / name), strict=True)
        return model.eval()

    def save_official(self, modules_dir: str | Path) -> None:
        """Write the official three-folder layout (``.bin`` weights, official class names in ``config.json``)."""
        if self.config.base_width != BASE_WIDTH:
            raise ValueError(f"the official layout has base_width {BASE_WIDTH}; this model has {self.config.base_width}")
        configs = {
            "audio_encoder": {"_class_name": "AudioConv2DNet", "pretrained": False},
            "video_encoder": {"_class_name": "VideoR2Plus1DNet", "pretrained": False},
            "head": {"_class_name": "FCHead", "dim": EMBED_DIM, "out_dim": 1, "dropout": self.config.head_dropout},
        }
        for name, config in configs.items():
            folder = Path(modules_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(config, indent=2))
            torch.save({k: v.contiguous() for k, v in getattr(self, name).state_dict().items()}, folder / "diffusion_pytorch_model.bin")

    def load_avid_cma(self, path: str | Path) -> None:
        """Initialise both encoders from the AVID-CMA checkpoint (``["model"]``, keys ``module.audio_model.*`` and
        ``module.video_model.*``), strictly; the head keeps its initialisation."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"AVID-CMA checkpoint not found at {path}; set the config field that points at it")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
            raise ValueError(f"{path} holds objects other than tensors and plain values; refusing to unpickle it ({exc})") from None
        state = checkpoint.get("model", checkpoint)
        for prefix, encoder in (("module.audio_model.", self.audio_encoder), ("module.video_model.", self.video_encoder)):
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not weights:
                raise KeyError(f"{path} has no '{prefix}*' weights")
            encoder.load_state_dict(weights, strict=True)

    # ------------------------------------------------------------------------------------------ inputs

    def preprocess_video(self, frames, resize_mode: Literal["crop", "squash"] | None = None) -> torch.Tensor:
        """RGB frames -> this classifier's video input; see :func:`preprocess_sync_video` (``resize_mode`` defaults
        to the config's)."""
        return preprocess_sync_video(frames, self.config.image_size, resize_mode or self.config.resize_mode)

    @staticmethod
    def preprocess_audio(waveform, sample_rate: int = DEFAULT_MEL.sample_rate) -> torch.Tensor:
        """Waveform(s) -> normalised mel (1, 128, 204), or (K, 1, 128, 204) for a (K, samples) batch."""
        return waveform_to_mel(waveform, sample_rate)

    def preprocess(self, audio=None, video=None, sample_rate: int = DEFAULT_MEL.sample_rate, resize_mode=None) -> dict[str, torch.Tensor]:
        """Both inputs the way every caller must feed them (training, curation, evaluation, metrics)."""
        inputs = {}
        if audio is not None:
            inputs["audio"] = self.preprocess_audio(audio, sample_rate)
        if video is not None:
            inputs["video"] = self.preprocess_video(video, resize_mode)
        return inputs

    # ------------------------------------------------------------------------------------------ scoring

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(mel.to(self.dtype))

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_encoder(video.to(self.dtype))

    def score_embeddings(self, audio_embeds: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
        return self.head(audio_embeds, video_embeds)[..., 0]

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """(b, 1, 128, 204) mels and (b, 3, T, H, W) videos -> (b,) scores of the aligned pairs."""
        return self.score_embeddings(self.encode_audio(audio), self.encode_video(video))

    def score_matrix(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Clips of B videos, ``audio`` (B, K, 1, 128, 204) and ``video`` (B, K, 3, T, H, W) -> (B, K, K) scores,
        ``[b, p, q] = score(audio p, video q)``. Each encoder runs once per clip; only the head sees all pairs."""
        batch, clips = audio.shape[:2]
        audio_embeds = self.encode_audio(audio.flatten(0, 1)).reshape(batch, clips, 1, -1).expand(-1, -1, clips, -1)
        video_embeds = self.encode_video(video.flatten(0, 1)).reshape(batch, 1, clips, -1).expand(-1, clips, -1, -1)
        return self.score_embeddings(audio_embeds, video_embeds)


@loads_model
def load_sync_classifier(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SyncClassifier:
    """A trained classifier, frozen in eval mode on ``device`` in ``dtype``: our saved folder (``config.json`` +
    safetensors, what ``avsync export`` writes) or the official ``modules/`` folder with its three sub-folders."""
    path = Path(path)
    if is_official_layout(path):
        model = SyncClassifier.from_official(path)
    elif (path / "config.json").is_file():
        model = SyncClassifier.from_pretrained(path)
    else:
        raise FileNotFoundError(f"{path} is neither a SyncClassifier folder (config.json) nor an official classifier modules/ folder")
    if model.dtype != dtype:
        model = model.to(dtype)
    return model.to(device).eval().requires_grad_(False)


def is_official_layout(path: str | Path) -> bool:
    """The official release's ``modules/`` folder (``audio_encoder/``, ``video_encoder/``, ``head/``)."""
    return all((Path(path) / name).is_dir() for name in ("audio_encoder", "video_encoder", "head"))


def preprocess_sync_video(frames, image_size: int = 224, resize_mode: Literal["crop", "squash"] = "crop") -> torch.Tensor:
    """RGB frames -> the classifier's video input, as float (..., 3, T, S, S).

    ``frames``: uint8 (T, H, W, 3) or (K, T, H, W, 3), or float in [0, 1] (T, 3, H, W). ``crop`` resizes the
    shorter side to ``image_size`` and centre-crops (the official training and evaluation data); ``squash``
    resizes to a square (the official metric script). Bicubic with antialiasing, then ImageBind/CLIP mean and std.
    Pure tensor code: data loaders call it without a model."""
    frames = frames if isinstance(frames, torch.Tensor) else np.asarray(frames)
    batched = frames.ndim == 5
    out = []
    for clip in frames if batched else frames[None]:
        images = clip if isinstance(clip, torch.Tensor) and clip.is_floating_point() else to_float_frames(clip)
        target = [image_size] if resize_mode == "crop" else [image_size, image_size]
        images = TF.resize(images, target, interpolation=InterpolationMode.BICUBIC, antialias=True)
        images = TF.normalize(TF.center_crop(images, [image_size, image_size]), IMAGE_MEAN, IMAGE_STD)
        out.append(images.transpose(0, 1))  # (3, T, S, S)
    video = torch.stack(out)
    return video if batched else video[0]


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """An official module folder's weights: safetensors if present, else the ``.bin`` (tensors only)."""
    if (folder / "diffusion_pytorch_model.safetensors").is_file():
        return load_file(folder / "diffusion_pytorch_model.safetensors")
    if (folder / "diffusion_pytorch_model.bin").is_file():
        return torch.load(folder / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no diffusion_pytorch_model.{{safetensors,bin}} in {folder}")
