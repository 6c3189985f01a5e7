"""The evaluation protocol of the paper (supplementary §3.4) as the official ``avgen/evaluations/`` runs it, in pure
functions: which clips, which seeds, which frames each metric sees, and each feature network's input.

Per test video: ``clips_per_video`` (3) clips of ``num_frames / fps`` (2) seconds starting at
``linspace(0, duration - 2, 3)`` (head, centre, tail). FID, IA and IT use frames 2..12 (zero-based 1..11: frame 1 is
the conditioning image); FVD uses all 12 frames of each clip.

``protocol="official"`` reproduces ASVA's ``eval.py``: FID frames resized to 229x229 (torchvision bicubic,
antialiased), centre-cropped, mapped to [-1, 1] (contiguous NCHW), into the FID Inception without its own resize
and with **train-mode BatchNorm** (``eval.py`` never calls ``.eval()`` on it), so each forward is normalised by its
own batch statistics and the batches are the official ones: one forward per test video over all frames of its real
clips (frame 1 included, dropped after), one forward per generated mp4 over its frames; generated mp4s are read
with the official frame loader (:func:`official_frame_indices`). FVD frames are resized to 224x224 the same way,
[-1, 1], into the I3D with ``rescale=False, resize=False``. ``protocol="standard"`` uses each network's standard
pipeline instead: pytorch-fid's (eval-mode BatchNorm, so batching does not matter; bilinear ``F.interpolate`` to
299, ``2x - 1``) and StyleGAN-V's (uint8 [0, 255] video, the I3D's own ``rescale=True, resize=True``), and reads
generated mp4s frame by frame. Numbers from the two protocols (or from other libraries) are not comparable.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, functional as TF

from avsync_ray.media.frames import to_float_frames

Protocol = Literal["official", "standard"]
FUTURE_FRAMES = slice(1, None)  # FID, IA, IT: every frame but the conditioning one (the paper's v_2..b)
OFFICIAL_FID_SIZE = 229  # ASVA's FID resize (pytorch-fid's standard is 299)
STANDARD_FID_SIZE = 299
FVD_SIZE = 224


class ClipTooShortError(ValueError):
    """A test video shorter than one evaluation clip."""


def clip_starts(duration: float, clip_seconds: float = 2.0, count: int = 3) -> np.ndarray:
    """Start times of the evaluation clips: ``linspace(0, duration - clip_seconds, count)`` (the centre for one)."""
    if duration + 1e-6 < clip_seconds:
        raise ClipTooShortError(f"the video lasts {duration:.3f} s, an evaluation clip needs {clip_seconds:.3f} s")
    last = max(duration - clip_seconds, 0.0)
    return np.array([last / 2]) if count == 1 else np.linspace(0.0, last, count)


def clip_seed(base_seed: int, video_key: str, clip_index: int) -> int:
    """The seed of one clip, from (base seed, test video, clip index) alone: any clip regenerates by itself."""
    digest = hashlib.sha256(f"{base_seed}:{video_key}:{clip_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def float_frames(frames) -> torch.Tensor:
    """Frames as float (T, 3, H, W) in [0, 1]: uint8 or float (T, H, W, 3) arrays, or such a tensor already."""
    if isinstance(frames, torch.Tensor) and frames.is_floating_point() and frames.shape[1] == 3:
        return frames
    array = np.asarray(frames)
    if array.dtype == np.uint8:
        return to_float_frames(array)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 3, 1, 2)


def fid_batch_statistics(protocol: Protocol) -> bool:
    """Whether the FID Inception's BatchNorm normalises each forward by its own batch (the official train mode)."""
    return protocol == "official"


def fid_input(images: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """Float frames (T, 3, H, W) in [0, 1] -> the FID Inception's input (T, 3, S, S) in [-1, 1], contiguous NCHW
    (as ``compute_fid_image_features`` passes it: the memory layout changes a convolution's round-off)."""
    images = images.contiguous()
    if protocol == "official":
        size = [OFFICIAL_FID_SIZE, OFFICIAL_FID_SIZE]
        images = TF.center_crop(TF.resize(images, size, interpolation=InterpolationMode.BICUBIC, antialias=True), size)
    else:
        images = F.interpolate(images, size=(STANDARD_FID_SIZE, STANDARD_FID_SIZE), mode="bilinear", align_corners=False)
    return (2 * images - 1).contiguous()


def official_clip_start(video_duration_us: int, audio_duration_us: int | None, clip_seconds: float) -> float:
    """Where ``load_av_clips_uniformly(num_clips=1)`` starts a generated mp4's one centred clip: half of what the
    shorter stream lasts beyond a clip, with the stream durations as torchvision's video_reader reports them
    (whole microseconds, times 1e-6)."""
    durations = [d * 1e-6 for d in (video_duration_us, audio_duration_us) if d is not None]
    return (min(durations) - clip_seconds) / 2.0


def official_frame_indices(frame_pts_us: list[int], start: float, fps: float, num_frames: int) -> list[int]:
    """The frames ``load_video_clip_from_videoreader`` returns, as indices into the file's frames (in display order,
    with their timestamps in whole microseconds, as torchvision's video_reader gives them).

    The official loader seeks to ``max(start, 0)`` (dropping frames before it), then takes a frame when its
    timestamp (``pts_us * 1e-6``) is at or after a target that starts at ``start`` and grows by ``1 / fps`` per
    frame taken, with no tolerance, until it has ``num_frames`` frames or the timestamps pass ``start + clip +
    1 / (2 fps)``; missing frames repeat the last one taken. On a 6-fps mp4 whose frames sit at k/6 s, the
    timestamps rounded to microseconds fall just below some of the accumulated float targets (0.333333 <
    0.3333333333333333), so the frame after such a frame is taken in its place and the last frame is repeated:
    frames 0, 1, 3, 4, ..., 11, 11 of a 12-frame clip starting at 0."""
    step = 1.0 / fps
    last = start + num_frames / fps + step / 2.0
    first_us = int(max(start, 0.0) * 1e6)  # the seek's offset (truncated to microseconds), exact seek
    taken: list[int] = []
    target = start
    for index, pts_us in enumerate(frame_pts_us):
        if pts_us < first_us:
            continue
        seconds = float(pts_us) * 1e-6
        if seconds > last:
            break
        if seconds >= target:
            taken.append(index)
            target += step
        if len(taken) == num_frames:
            break
    if not taken:
        raise ValueError(f"no frame at or after {start:.6f} s")
    return taken + [taken[-1]] * (num_frames - len(taken))


def fvd_input(images: torch.Tensor, protocol: Protocol) -> tuple[torch.Tensor, dict]:
    """Float frames (T, 3, H, W) in [0, 1] -> the I3D's input (3, T, h, w) and its call flags."""
    if protocol == "official":
        images = TF.resize(images, [FVD_SIZE, FVD_SIZE], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return (2 * images - 1).transpose(0, 1), {"rescale": False, "resize": False}
    video = (images.clamp(0, 1) * 255).round().to(torch.uint8)  # StyleGAN-V feeds uint8 videos in [0, 255]
    return video.transpose(0, 1), {"rescale": True, "resize": True}
