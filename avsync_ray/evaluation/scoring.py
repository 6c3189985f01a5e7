"""Per-clip features of real and generated clips (no Ray here; :mod:`avsync_ray.evaluation.batch` runs
:class:`ClipScorer` as a Ray Data actor pool).

A generated clip is read back from its mp4 as the official evaluation reads it: 12 frames at 6 fps (with
``protocol: official``, the frames ``load_av_clips_uniformly`` picks, see
:func:`~avsync_ray.metrics.protocol.official_frame_indices`) and the audio decoded from the file (AAC re-encoded).
Per clip: FID Inception features of frames 2..12 (11 x 2048), the I3D features of all 12 frames (400), the ImageBind
image-audio and image-text cosines of every frame (IA and IT per frame, the category as the text), and the sync
classifier's score of (audio, video) with the official metric preprocessing (frames squashed to the classifier's
square size). With ``protocol: official`` the FID Inception's BatchNorm uses each forward's batch statistics and
the forwards are the official ones: all frames of a test video's real clips together, each generated clip alone.

Each clip's features are written to its feature file (beside its mp4, or in the real-feature cache), so they
survive the run: a rerun only computes what is missing.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from avsync_ray.config.base import ActorConfig
from avsync_ray.config.evaluate import FeatureNetworksConfig
from avsync_ray.devices import resolve_device, torch_dtype
from avsync_ray.evaluation.clips import video_clips
from avsync_ray.evaluation.plan import GT, features_uri
from avsync_ray.media import TARGET_SAMPLE_RATE, MediaError, MediaErrorReason, decode, microsecond_timestamps, waveform_to_mel
from avsync_ray.metrics.protocol import (
    FUTURE_FRAMES,
    Protocol,
    fid_batch_statistics,
    fid_input,
    float_frames,
    fvd_input,
    official_clip_start,
    official_frame_indices,
)
from avsync_ray.metrics.video_metrics import ClipFeatures
from avsync_ray.models.feature_networks import FID_FEATURE_DIM, i3d_features, load_fid_inception, load_i3d
from avsync_ray.models.imagebind import AUDIO, TEXT, VISION, ImageBind, preprocess_images
from avsync_ray.models.sync_classifier import load_sync_classifier
from avsync_ray.storage import filesystem, write_bytes_atomic

# The columns of the scorer's output rows: what the driver needs to account for every clip (features go to files).
SCORE_FIELDS = ("key", "video", "clip", "start", "category", "variant", "path", "features", "error")


def read_generated(path: str, num_frames: int, fps: float, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """A generated mp4 as the evaluation loads it: frames (T, H, W, 3) uint8 and its 16 kHz audio. ``official``:
    the frames ``load_av_clips_uniformly`` returns for the file's one centred clip (timestamps as torchvision's
    video_reader gives them); ``standard``: the frame shown at each k / fps from t = 0."""
    fs, local = filesystem(path)
    data = fs.cat_file(local)
    seconds = num_frames / fps
    if protocol == "official":
        timing = microsecond_timestamps(data)
        indices = official_frame_indices(timing.video_pts_us, official_clip_start(timing.video_duration_us, timing.audio_duration_us, seconds),
                                         fps, num_frames)  # fmt: skip
        decoded = decode(data)  # every frame, in display order, and the whole audio track
        if len(decoded.frames) != len(timing.video_pts_us):
            raise MediaError(path, MediaErrorReason.TRUNCATED, f"{len(decoded.frames)} frames decoded of {len(timing.video_pts_us)} in the file")
        return decoded.frames[indices], decoded.audio[: round(seconds * TARGET_SAMPLE_RATE)]
    decoded = decode(data, fps=fps, start=0.0, end=seconds, frame_selection="next")
    frames = decoded.frames
    if len(frames) < num_frames:
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])
    return frames[:num_frames], decoded.audio


# One FID forward (and any other network's input): clips of one test video, or one generated clip, each given as
# (float frames (T, 3, H, W) in [0, 1], 16 kHz audio, category).
Clip = tuple[torch.Tensor, np.ndarray, str]


class FeatureNetworks:
    """The networks the chosen metrics need, each loaded on ``device`` the first time it is used (once)."""

    def __init__(self, features: FeatureNetworksConfig, metrics: list[str], device: torch.device, protocol: Protocol,
                 dtype: torch.dtype = torch.float32):  # fmt: skip
        self.features, self.wants, self.device, self.dtype, self.protocol = features, set(metrics), device, dtype, protocol
        self._text: dict[str, torch.Tensor] = {}

    @functools.cached_property
    def fid(self):
        if "fid" not in self.wants:
            return None
        return load_fid_inception(self.features.fid_inception, batch_statistics=fid_batch_statistics(self.protocol)).to(self.device, self.dtype)

    @functools.cached_property
    def i3d(self):
        return load_i3d(self.features.i3d).to(self.device) if "fvd" in self.wants else None

    @functools.cached_property
    def imagebind(self):
        wants = self.wants
        modalities = [m for m, needed in ((VISION, wants & {"ia", "it", "alignsync"}), (AUDIO, wants & {"ia", "alignsync"}), (TEXT, wants & {"it"})) if needed]
        if not modalities:
            return None
        return ImageBind.from_checkpoint(self.features.imagebind, self.features.imagebind_preset, modalities).to(self.device, self.dtype)

    @functools.cached_property
    def classifier(self):
        return load_sync_classifier(self.features.sync_classifier, self.device, self.dtype) if self.wants & {"relsync", "alignsync"} else None

    def _text_embedding(self, text: str) -> torch.Tensor:
        if text not in self._text:
            self._text[text] = self.imagebind.embed_text([text])[0]
        return self._text[text]

    @torch.no_grad()
    def fid_features(self, forwards: list[list[torch.Tensor]]) -> list[np.ndarray]:
        """Frames 2..T's FID features (T - 1, 2048) of each clip, given as float frames (T, 3, H, W) grouped in
        the forwards the protocol makes: with batch statistics each group is one forward over all frames of its
        clips (frame 1 included, dropped after, as ``eval.py``); in eval mode batching does not matter, and only
        frames 2..T of all clips go through, together."""
        if self.fid.batch_statistics:
            out = []
            for group in forwards:
                inputs = fid_input(torch.cat(group), self.protocol).to(self.device, self.dtype)
                features = self.fid(inputs).float().cpu().numpy().reshape(len(group), -1, FID_FEATURE_DIM)
                out.extend(features[:, FUTURE_FRAMES])
            return out
        clips = [frames[FUTURE_FRAMES] for group in forwards for frames in group]
        features = self.fid(fid_input(torch.cat(clips), self.protocol).to(self.device, self.dtype)).float().cpu().numpy()
        return list(features.reshape(len(clips), -1, FID_FEATURE_DIM))

    @torch.no_grad()
    def clip_features(self, forwards: list[list[Clip]]) -> list[dict]:
        """Features of clips grouped as the FID forwards (:meth:`fid_features`), in order: ``fid``, ``fvd``, ``ia``,
        ``it`` (arrays, or None) and ``sync`` (float, or None)."""
        clips = [clip for group in forwards for clip in group]
        out = [{"fid": None, "fvd": None, "ia": None, "it": None, "sync": None} for _ in clips]
        if self.fid is not None:
            for item, value in zip(out, self.fid_features([[frames for frames, _, _ in group] for group in forwards])):
                item["fid"] = value
        if self.i3d is not None:
            videos, flags = zip(*(fvd_input(frames, self.protocol) for frames, _, _ in clips))
            features = i3d_features(self.i3d, torch.stack(videos).to(self.device), **flags[0]).float().cpu().numpy()
            for item, value in zip(out, features):
                item["fvd"] = value
        if self.imagebind is not None:
            for item, (frames, audio, category) in zip(out, clips):
                images = self.imagebind.embed_images(preprocess_images(frames).to(self.device, self.dtype))
                if AUDIO in self.imagebind.modalities:
                    mel = waveform_to_mel(torch.from_numpy(np.ascontiguousarray(audio)))[None]  # (1, 1, 128, 204)
                    item["ia"] = (images @ self.imagebind.embed_audio(mel.to(self.device, self.dtype))[0]).float().cpu().numpy()
                if TEXT in self.imagebind.modalities:
                    item["it"] = (images @ self._text_embedding(category)).float().cpu().numpy()
        if self.classifier is not None:
            inputs = [self.classifier.preprocess(audio=audio, video=frames, resize_mode="squash") for frames, audio, _ in clips]
            mel = torch.stack([i["audio"] for i in inputs]).to(self.device, self.dtype)
            video = torch.stack([i["video"] for i in inputs]).to(self.device, self.dtype)
            for item, score in zip(out, self.classifier(mel, video).float().cpu().tolist()):
                item["sync"] = float(score)
        return out


class ClipScorer:
    """Ray Data actor: the feature networks, each loaded once (when first needed). A real row (a whole test video)
    becomes one row per clip; a generated row stays one row. Each clip's features go to its feature file (the
    real ones into ``real_folder``); ``error`` is set where a clip could not be read."""

    def __init__(self, features: dict, metrics: list[str], protocol: Protocol, actor: ActorConfig, num_frames: int, fps: float, real_folder: str):
        device = resolve_device(actor.device, actor.num_gpus)
        self.networks = FeatureNetworks(FeatureNetworksConfig.model_validate(features), metrics, device, protocol, torch_dtype(actor.dtype))
        self.protocol, self.num_frames, self.fps, self.real_folder = protocol, num_frames, fps, real_folder

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out, forwards, scored = [], [], []
        for row in rows:
            if row["error"]:
                out.append(row)
                continue
            if row["variant"] == GT:
                clips = [{**row, **clip} for clip in video_clips(row)]
                forwards.append([(float_frames(c["frames"]), c["audio"], row["category"]) for c in clips])
                for clip in clips:
                    clip["features"] = features_uri(self.real_folder, clip["key"])
                scored.extend(clips)
                out.extend(clips)
                continue
            out.append(row)
            try:
                frames, audio = read_generated(row["path"], self.num_frames, self.fps, self.protocol)
            except (MediaError, ValueError, OSError) as exc:
                row["error"] = f"read_error: {type(exc).__name__}: {exc}"[:500]
                continue
            forwards.append([(float_frames(frames), audio, row["category"])])
            row["features"] = features_uri(row["path"].rsplit("/", 1)[0], row["key"])
            scored.append(row)
        if forwards:
            for row, values in zip(scored, self.networks.clip_features(forwards)):
                features = ClipFeatures(row["key"], row["video"], row["category"], **values, clip=int(row["clip"]), start=float(row["start"]))
                write_bytes_atomic(row["features"], features.to_bytes())
        return {name: [row.get(name, "") for row in out] for name in SCORE_FIELDS}


NETWORKS_FOR = {"fid": ("fid_inception",), "fvd": ("i3d",), "ia": ("imagebind",), "it": ("imagebind",),
                "relsync": ("sync_classifier",), "alignsync": ("imagebind", "sync_classifier")}  # fmt: skip


def check_feature_networks(features: FeatureNetworksConfig, metrics: list[str]) -> dict[str, str]:
    """Open every network the metrics need (a missing or malformed file is a :class:`FeatureNetworkError`
    naming its config field, before any work starts) and return their checksums by field."""
    from avsync_ray.models.feature_networks import FeatureNetworkError, file_checksum
    from avsync_ray.models.imagebind import MODALITIES

    fields = sorted({name for metric in metrics for name in NETWORKS_FOR[metric]})
    for name in fields:
        path = getattr(features, name)
        field = f"features.{name}"
        if name == "fid_inception":
            load_fid_inception(path, field)
        elif name == "i3d":
            load_i3d(path, field)
        elif name == "imagebind":
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except FileNotFoundError:
                raise FeatureNetworkError(f"{field}: {path} does not exist (imagebind_huge.pth); nothing is downloaded") from None
            except Exception as exc:  # noqa: BLE001 - unpickling and zip errors come in many types
                raise FeatureNetworkError(f"{field}: {path} is not a tensors-only torch file (imagebind_huge.pth): {exc}") from None
            missing = [m for m in MODALITIES if not any(k.startswith(f"modality_trunks.{m}.") for k in state)]
            if missing:
                raise FeatureNetworkError(f"{field}: {path} has no {missing} weights (expected an imagebind_huge.pth-format checkpoint)")
        else:
            try:
                load_sync_classifier(path)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise FeatureNetworkError(f"{field}: {path} is not a sync classifier folder: {exc}") from None
    return {name: file_checksum(getattr(features, name)) for name in fields}
