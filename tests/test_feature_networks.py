"""The evaluation's feature networks: the FID Inception equals pytorch-fid's on the same weights, the TorchScript
I3D path calls the file with the protocol's flags, and bad weight files are clear errors naming their field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsync_ray.metrics.protocol import fid_input, float_frames, fvd_input
from avsync_ray.models.feature_networks import (
    FeatureNetworkError,
    TinyI3D,
    i3d_features,
    load_fid_inception,
    load_i3d,
    random_fid_inception_state_dict,
)


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_fid_inception_state_dict(seed=0), path)
    return path


@pytest.fixture(scope="module")
def pytorch_fid_reference(fid_weights):
    """pytorch-fid's own InceptionV3 with the same state dict, through its own loading code (its URL loader is
    pointed at the file: no download)."""
    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")

    def from_file(url, progress=True):
        assert url == pytorch_fid_inception.FID_WEIGHTS_URL
        return torch.load(fid_weights, weights_only=True)

    saved = pytorch_fid_inception.load_state_dict_from_url
    pytorch_fid_inception.load_state_dict_from_url = from_file
    try:
        official = pytorch_fid_inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()
        standard = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    finally:
        pytorch_fid_inception.load_state_dict_from_url = saved
    return official, standard


@torch.no_grad()
def test_fid_inception_gives_pytorch_fids_features(fid_weights, pytorch_fid_reference):
    official, standard = pytorch_fid_reference
    ours = load_fid_inception(fid_weights)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    images = float_frames(frames)
    # official protocol: ASVA's 229-px bicubic input into the network without pytorch-fid's resize and scaling
    inputs = fid_input(images, "official")
    assert inputs.shape == (2, 3, 229, 229) and -2 < inputs.min() < -0.5 and 0.5 < inputs.max() < 2
    features = ours(inputs)
    assert features.shape == (2, 2048) and features.std() > 0
    torch.testing.assert_close(features, official(inputs)[0].flatten(1), rtol=1e-5, atol=1e-6)
    # standard protocol: pytorch-fid's own pipeline on [0, 1] images (bilinear resize to 299, 2x - 1)
    torch.testing.assert_close(ours(fid_input(images, "standard")), standard(images)[0].flatten(1), rtol=1e-5, atol=1e-6)


def test_fid_weight_errors_name_the_field(tmp_path):
    with pytest.raises(FeatureNetworkError, match="features.fid_inception: .* does not exist"):
        load_fid_inception(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(FeatureNetworkError, match="features.fid_inception: .*not a tensors-only torch file"):
        load_fid_inception(garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(FeatureNetworkError, match="not pytorch-fid's FID Inception state dict"):
        load_fid_inception(wrong)


class RecordingI3D(torch.nn.Module):
    """Same call signature as StyleGAN-V's TorchScript I3D; its 400-d output encodes what it was called with."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        flags = torch.tensor([float(rescale), float(resize), float(return_features), float(x.dtype == torch.uint8)])
        summary = torch.stack([x.float().amin(dim=(1, 2, 3, 4)), x.float().amax(dim=(1, 2, 3, 4))], dim=1)
        shape = torch.tensor([float(s) for s in x.shape[1:]])
        row = torch.cat([flags, shape])
        return torch.cat([row.expand(x.shape[0], -1), summary, torch.zeros(x.shape[0], 400 - 10)], dim=1)


def test_the_i3d_torchscript_is_called_as_the_protocol_says(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(RecordingI3D()).save(str(path))
    i3d = load_i3d(path)
    frames = float_frames(np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8))
    video, flags = fvd_input(frames, "official")  # ASVA: bicubic 224, [-1, 1], no rescale/resize inside
    out = i3d_features(i3d, video[None], **flags)[0]
    assert out.shape == (400,)
    assert out[:8].tolist() == [0, 0, 1, 0, 3, 12, 224, 224]
    assert -2 < out[8] < -0.5 and 0.5 < out[9] < 2  # [-1, 1] up to the bicubic overshoot (not clamped, as ASVA)
    video, flags = fvd_input(frames, "standard")  # StyleGAN-V: uint8 [0, 255], the model rescales and resizes
    out = i3d_features(i3d, video[None], **flags)[0]
    assert out[:8].tolist() == [1, 1, 1, 1, 3, 12, 48, 64] and out[9] > 200


def test_the_tiny_i3d_has_the_real_signature_and_400_features(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D().eval()).save(str(path))
    video = torch.rand(2, 3, 12, 224, 224) * 2 - 1
    features = i3d_features(load_i3d(path), video, rescale=False, resize=False)
    assert features.shape == (2, 400)
    probabilities = load_i3d(path)(video, rescale=False, resize=False, return_features=False)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2))
    with pytest.raises(FeatureNetworkError, match="features.i3d: .*not a TorchScript module"):
        load_i3d(tmp_path.joinpath("bad.pt").write_bytes(b"x") and tmp_path / "bad.pt")
