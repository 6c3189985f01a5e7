"""Per-clip features of real and generated clips (no Ray here; :mod:`avsync_ray.evaluation.batch` runs
:class:`ClipScorer` as a Ray Data actor pool).

A generated clip is read back from its mp4 as the official evaluation reads it: 12 frames at 6 fps from t = 0 and
the audio decoded from the file (AAC re-encoded). Per clip: FID Inception features of frames 2..12 (11 x 2048),
the I3D features of all 12 frames (400), the ImageBind image-audio and image-text cosines of every frame (IA and IT
per frame, the category as the text), and the sync classifier's score of (audio, video) with the official metric
preprocessing (frames squashed to the classifier's square size).
"""

from __future__ import annotations

import numpy as np
import torch

from avsync_ray.config.base import ActorConfig
from avsync_ray.config.evaluate import FeatureNetworksConfig
from avsync_ray.devices import resolve_device, torch_dtype
from avsync_ray.evaluation.clips import from_bytes, to_bytes
from avsync_ray.evaluation.plan import GT
from avsync_ray.media import MediaError, decode, waveform_to_mel
from avsync_ray.metrics.protocol import FUTURE_FRAMES, Protocol, fid_input, float_frames, fvd_input
from avsync_ray.models.feature_networks import FID_FEATURE_DIM, i3d_features, load_fid_inception, load_i3d
from avsync_ray.models.imagebind import AUDIO, TEXT, VISION, ImageBind, preprocess_images
from avsync_ray.models.sync_classifier import load_sync_classifier

SCORE_FIELDS = ("key", "video", "clip", "start", "category", "variant", "path", "error", "fid", "fvd", "ia", "it", "sync")


def read_generated(path: str, num_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """A generated mp4 as the official evaluation loads it: frames (T, H, W, 3) uint8 and its 16 kHz audio."""
    decoded = decode(path, fps=fps, start=0.0, end=num_frames / fps, frame_selection="next")
    frames = decoded.frames
    if len(frames) < num_frames:
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])
    return frames[:num_frames], decoded.audio


class FeatureNetworks:
    """The networks the chosen metrics need, loaded once on ``device``."""

    def __init__(self, features: FeatureNetworksConfig, metrics: list[str], device: torch.device, dtype: torch.dtype = torch.float32):
        self.device, self.dtype = device, dtype
        wants = set(metrics)
        self.fid = load_fid_inception(features.fid_inception).to(device, dtype) if "fid" in wants else None
        self.i3d = load_i3d(features.i3d).to(device) if "fvd" in wants else None
        modalities = [m for m, needed in ((VISION, wants & {"ia", "it", "alignsync"}), (AUDIO, wants & {"ia", "alignsync"}), (TEXT, wants & {"it"})) if needed]
        self.imagebind = ImageBind.from_checkpoint(features.imagebind, features.imagebind_preset, modalities).to(device, dtype) if modalities else None
        self.classifier = load_sync_classifier(features.sync_classifier, device, dtype) if wants & {"relsync", "alignsync"} else None
        self._text: dict[str, torch.Tensor] = {}

    def _text_embedding(self, text: str) -> torch.Tensor:
        if text not in self._text:
            self._text[text] = self.imagebind.embed_text([text])[0]
        return self._text[text]

    @torch.no_grad()
    def clip_features(self, clips: list[tuple[torch.Tensor, np.ndarray, str]], protocol: Protocol) -> list[dict]:
        """Features of clips given as (float frames (T, 3, H, W) in [0, 1], 16 kHz audio, category)."""
        out = [{"fid": b"", "fvd": b"", "ia": b"", "it": b"", "sync": float("nan")} for _ in clips]
        if self.fid is not None:
            inputs = torch.cat([fid_input(frames[FUTURE_FRAMES], protocol) for frames, _, _ in clips])
            features = self.fid(inputs.to(self.device, self.dtype)).float().cpu().numpy().reshape(len(clips), -1, FID_FEATURE_DIM)
            for item, value in zip(out, features):
                item["fid"] = to_bytes(value)
        if self.i3d is not None:
            videos, flags = zip(*(fvd_input(frames, protocol) for frames, _, _ in clips))
            features = i3d_features(self.i3d, torch.stack(videos).to(self.device), **flags[0]).float().cpu().numpy()
            for item, value in zip(out, features):
                item["fvd"] = to_bytes(value)
        if self.imagebind is not None:
            for item, (frames, audio, category) in zip(out, clips):
                images = self.imagebind.embed_images(preprocess_images(frames).to(self.device, self.dtype))
                if AUDIO in self.imagebind.modalities:
                    mel = waveform_to_mel(torch.from_numpy(np.ascontiguousarray(audio)))[None]  # (1, 1, 128, 204)
                    item["ia"] = to_bytes((images @ self.imagebind.embed_audio(mel.to(self.device, self.dtype))[0]).float().cpu().numpy())
                if TEXT in self.imagebind.modalities:
                    item["it"] = to_bytes((images @ self._text_embedding(category)).float().cpu().numpy())
        if self.classifier is not None:
            inputs = [self.classifier.preprocess(audio=audio, video=frames, resize_mode="squash") for frames, audio, _ in clips]
            mel = torch.stack([i["audio"] for i in inputs]).to(self.device, self.dtype)
            video = torch.stack([i["video"] for i in inputs]).to(self.device, self.dtype)
            for item, score in zip(out, self.classifier(mel, video).float().cpu().tolist()):
                item["sync"] = float(score)
        return out


class ClipScorer:
    """Ray Data actor: the feature networks, loaded once; one output row per input row (``error`` set where the
    clip could not be read)."""

    def __init__(self, features: dict, metrics: list[str], protocol: Protocol, actor: ActorConfig, num_frames: int, fps: float):
        device = resolve_device(actor.device, actor.num_gpus)
        self.networks = FeatureNetworks(FeatureNetworksConfig.model_validate(features), metrics, device, torch_dtype(actor.dtype))
        self.protocol, self.num_frames, self.fps = protocol, num_frames, fps

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        clips, scored = [], []
        for row in rows:
            row.update(fid=b"", fvd=b"", ia=b"", it=b"", sync=float("nan"))
            if row["error"]:
                continue
            try:
                if row["variant"] == GT:
                    frames, audio = from_bytes(row["frames"]), from_bytes(row["audio"])
                else:
                    frames, audio = read_generated(row["path"], self.num_frames, self.fps)
            except (MediaError, ValueError, OSError) as exc:
                row["error"] = f"read_error: {type(exc).__name__}: {exc}"[:500]
                continue
            clips.append((float_frames(frames), audio, row["category"]))
            scored.append(row)
        if clips:
            for row, features in zip(scored, self.networks.clip_features(clips, self.protocol)):
                row.update(features)
        return {name: [row[name] for row in rows] for name in SCORE_FIELDS}


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
