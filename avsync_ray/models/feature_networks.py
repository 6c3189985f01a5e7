"""The evaluation's feature networks, read from files named in config (nothing is downloaded):

- FID: pytorch-fid's FID Inception v3 (the TF-ported ``pt_inception-2015-12-05-6726825d.pth``), built as
  ``pytorch_fid.inception.fid_inception_v3`` builds it (torchvision's Inception v3 with 1008 classes, no aux head,
  and pytorch-fid's FID blocks) but loading the state dict from a path with ``torch.load(weights_only=True)``
  instead of a URL; its output is the 2048-d final average pool (pytorch-fid's block 3), without pytorch-fid's
  internal resize and scaling (the evaluation protocol prepares the input). Its BatchNorm either uses the
  weights' running statistics (eval mode, pytorch-fid's standard) or normalises each forward with that forward's
  own batch statistics (``batch_statistics=True``): ASVA's ``eval.py`` never puts its FID Inception in eval mode,
  so its features depend on which frames share a forward (:mod:`avsync_ray.metrics.protocol` says which).
- FVD: StyleGAN-V's TorchScript I3D (``i3d_torchscript.pt``), called as ``i3d(video, rescale=..., resize=...,
  return_features=True)`` for the 400-d pre-softmax features.

:func:`write_tiny_feature_networks` writes random networks in these file formats (the FID state dict at its real
size, since its layout fixes every shape; a small scripted I3D with the real call signature) for the demo and tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torchvision
from torch import nn

from avsync_ray.devices import loads_model

FID_FEATURE_DIM = 2048
FVD_FEATURE_DIM = 400
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
I3D_NAME = "i3d_torchscript.pt"


class FeatureNetworkError(FileNotFoundError):
    """A feature network's file is missing or is not what the config field expects; names that field."""


def _fid_inception_v3() -> torchvision.models.Inception3:
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FIDInception(nn.Module):
    """(b, 3, H, W) images in [-1, 1] -> (b, 2048) pool features (pytorch-fid's ``InceptionV3`` block 3 with
    ``resize_input=False, normalize_input=False``, which is the network ASVA's evaluation wraps).

    ``batch_statistics``: every BatchNorm normalises with the statistics of the batch it is given, as a module in
    train mode does (ASVA's evaluation), but never updates the stored running statistics; otherwise BatchNorm uses
    the running statistics (eval mode). Either way the module stays frozen: ``train()`` changes nothing."""

    def __init__(self, inception: torchvision.models.Inception3, batch_statistics: bool = False):
        super().__init__()
        self.inception = inception
        self.batch_statistics = batch_statistics
        names = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
                 "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
                 "Mixed_7b", "Mixed_7c", "avgpool")  # fmt: skip
        self.layers = [getattr(inception, name) for name in names]
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for layer in self.layers:
            x = layer(x)
        return x.flatten(1)

    def train(self, mode: bool = True) -> "FIDInception":
        super().train(False)  # frozen: the stored running statistics never change
        if self.batch_statistics:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.train(True)  # normalise by the batch's statistics ...
                    module.track_running_stats = False  # ... and leave the stored ones as loaded
        return self


def _read_state_dict(path: Path, field: str, what: str) -> dict:
    if not path.is_file():
        raise FeatureNetworkError(f"{field}: {path} does not exist ({what}); nothing is downloaded, set {field} to the file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling and zip errors come in many types
        raise FeatureNetworkError(f"{field}: {path} is not a tensors-only torch file ({what}): {exc}") from None
    if not isinstance(state, dict):
        raise FeatureNetworkError(f"{field}: {path} holds a {type(state).__name__}, not a state dict ({what})")
    return state


@loads_model
def load_fid_inception(path: str | Path, field: str = "features.fid_inception", batch_statistics: bool = False) -> FIDInception:
    """The FID Inception with the weights at ``path`` (pytorch-fid's key layout), frozen; its BatchNorm uses the
    running statistics, or each forward's batch statistics with ``batch_statistics`` (see :class:`FIDInception`)."""
    net = _fid_inception_v3()
    state = _read_state_dict(Path(path), field, FID_WEIGHTS_NAME)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FeatureNetworkError(f"{field}: {path} is not pytorch-fid's FID Inception state dict: {str(exc)[:400]}") from None
    return FIDInception(net, batch_statistics)


@loads_model
def load_i3d(path: str | Path, field: str = "features.i3d") -> torch.jit.ScriptModule:
    """StyleGAN-V's TorchScript I3D at ``path``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FeatureNetworkError(f"{field}: {path} does not exist ({I3D_NAME}); nothing is downloaded, set {field} to the file")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - TorchScript raises RuntimeError or pickle/zip errors
        raise FeatureNetworkError(f"{field}: {path} is not a TorchScript module ({I3D_NAME}): {str(exc)[:300]}") from None


def i3d_features(i3d, video: torch.Tensor, rescale: bool, resize: bool) -> torch.Tensor:
    """(b, 3, T, H, W) -> (b, 400) pre-softmax features, as StyleGAN-V and ASVA call the TorchScript."""
    return i3d(video, rescale=rescale, resize=resize, return_features=True)


def file_checksum(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes, in sorted order); 16 hex digits."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ tiny networks


class TinyI3D(nn.Module):
    """A small video network with the StyleGAN-V I3D's call signature: ``rescale`` maps [0, 255] to [-1, 1],
    ``resize`` resizes frames to 224x224 (trilinear), ``return_features`` returns the 400-d logits instead of
    their softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 16, kernel_size=(3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))
        self.fc = nn.Linear(16, FVD_FEATURE_DIM)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        x = x.float()
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = nn.functional.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        logits = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        return logits if return_features else logits.softmax(dim=-1)


def random_fid_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in pytorch-fid's FID Inception key layout (BatchNorm statistics kept near identity, so the
    features stay finite and varied through the 94 layers)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in _fid_inception_v3().state_dict().items():
        if name.endswith("running_var"):
            state[name] = torch.ones_like(tensor)
        elif name.endswith(("running_mean", "bias", "num_batches_tracked")):
            state[name] = torch.zeros_like(tensor)
        elif tensor.ndim > 1:  # conv / fc weights: He-scaled
            fan_in = tensor[0].numel()
            state[name] = torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        else:  # BatchNorm weights
            state[name] = torch.ones_like(tensor)
    return state


def write_tiny_feature_networks(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Random feature networks in the real file formats, for the demo and tests: the FID Inception state dict
    (``pt_inception-2015-12-05-6726825d.pth`` layout, about 95 MB), a scripted :class:`TinyI3D`
    (``i3d_torchscript.pt``) and an ``imagebind_huge.pth``-format checkpoint at the ``imagebind-tiny`` sizes.
    Returns the paths by config field name."""
    from avsync_ray.models.imagebind import write_tiny_imagebind_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fid = folder / FID_WEIGHTS_NAME
    torch.save(random_fid_inception_state_dict(seed), fid)
    torch.manual_seed(seed)
    i3d = folder / I3D_NAME
    torch.jit.script(TinyI3D().eval()).save(str(i3d))
    imagebind = write_tiny_imagebind_checkpoint(folder / "imagebind_tiny.pth", seed)
    return {"fid_inception": str(fid), "i3d": str(i3d), "imagebind": str(imagebind), "imagebind_preset": "imagebind-tiny"}
