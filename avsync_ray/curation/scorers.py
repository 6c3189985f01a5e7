"""Model scores of a chunk of a video's windows, each shared input embedded once per chunk.

Overlapping windows (0.5-s stride) sample many of the same frames and clips, so every scorer first collects
the distinct frame times / clip starts of its windows, embeds each once, then pools per window. A row is a
chunk (:mod:`avsync_ray.curation.chunks`): the frames its windows sample, with their timestamps, and its audio,
track samples ``audio_offset`` on. The classes are Ray Data callable classes (the model loads once per actor)
but hold no Ray code; their ``score`` methods work on plain arrays and are what the tests call.
"""

from __future__ import annotations

import numpy as np
import torch

from avsync_ray.config.base import ActorConfig
from avsync_ray.config.curate import ImageBindStageConfig, SemanticStageConfig, SyncStageConfig
from avsync_ray.curation.windows import (
    CLIP_SECONDS,
    TimeLookup,
    ia_audio_grid,
    ia_frame_grid,
    pixel_grid,
    psync_frame_times,
    psync_grid,
    semantic_difference,
)
from avsync_ray.devices import resolve_device, torch_dtype
from avsync_ray.media.audio import DEFAULT_MEL, waveform_to_mel
from avsync_ray.media.clips import nearest_frames
from avsync_ray.metrics.sync_metrics import sync_probabilities
from avsync_ray.models.imagebind import preprocess_images


def guarded(row: dict, stage: str, compute) -> dict:
    """Add a stage's scores to a prepared row; an error marks this video failed instead of stopping the run."""
    if row["status"] != "ok":
        return row
    try:
        row.update(compute())
    except Exception as exc:  # noqa: BLE001 - recorded in the ledger with its reason
        row.update(status="failed", reason=f"{stage}_scoring_error", detail=repr(exc)[:500])
    return row


def _audio_clips(audio: np.ndarray, audio_start: float, starts: np.ndarray, offset: int = 0, sample_rate: int = DEFAULT_MEL.sample_rate) -> np.ndarray:
    """2-s clips from each start; ``audio`` holds the track's samples from ``offset`` on, reaching the track's end or
    past every clip (a chunk's), so the clamping at the track's ends is the same as on the whole track."""
    length = int(round(CLIP_SECONDS * sample_rate))
    first = (np.round((starts - audio_start) * sample_rate).astype(np.int64) - offset).clip(0, max(0, len(audio) - length))
    return np.stack([np.pad(audio[s : s + length], (0, max(0, s + length - len(audio)))) for s in first])


class EmbeddingScorer:
    """Semantic frame difference (CLIP or ImageBind vision) and ImageBind IA / IT, per window."""

    def __init__(self, semantic: SemanticStageConfig, imagebind: ImageBindStageConfig, actor: ActorConfig, window_length: float = 3.0):
        from avsync_ray.models.imagebind import AUDIO, TEXT, VISION, ImageBind

        self.length = window_length
        self.device, self.dtype = resolve_device(actor.device, actor.num_gpus), torch_dtype(actor.dtype)
        self.semantic_enabled, self.alignment_enabled = semantic.enabled, imagebind.enabled
        self.imagebind = None
        if imagebind.enabled or (semantic.enabled and semantic.model == "imagebind"):
            checkpoint = imagebind.checkpoint if imagebind.enabled else semantic.checkpoint
            preset = imagebind.preset if imagebind.enabled else semantic.preset
            modalities = (VISION, AUDIO, TEXT) if imagebind.enabled else (VISION,)
            self.imagebind = ImageBind.from_checkpoint(checkpoint, preset=preset, modalities=modalities).to(self.device, self.dtype)
        self.clip = None
        if semantic.enabled and semantic.model == "clip":
            from transformers import CLIPVisionModelWithProjection

            self.clip = CLIPVisionModelWithProjection.from_pretrained(semantic.checkpoint, local_files_only=True)
            self.clip = self.clip.to(self.device, self.dtype).eval()
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _embed_frames(self, frames: np.ndarray, model: str) -> torch.Tensor:
        images = preprocess_images(frames).to(self.device, self.dtype)
        if model == "clip":
            return self.clip(pixel_values=images).image_embeds.float()
        return self.imagebind.embed_images(images).float()

    @torch.no_grad()
    def _text(self, text: str) -> torch.Tensor:
        if text not in self._text_cache:
            self._text_cache[text] = self.imagebind.embed_text([text])[0].float()
        return self._text_cache[text]

    def score(self, frames, frame_times, audio, audio_start, window_start, label: str, audio_offset: int = 0) -> dict[str, np.ndarray]:
        count = len(window_start)
        out = {name: np.full(count, np.nan) for name in ("semantic_diff", "ia", "it")}
        if count == 0:
            return out
        if self.semantic_enabled:
            lookup = TimeLookup(pixel_grid(window_start, self.length))
            indices = nearest_frames(frame_times, lookup.unique)
            embeddings = self._embed_frames(frames[indices], "clip" if self.clip is not None else "imagebind").cpu().numpy()
            out["semantic_diff"] = np.array([semantic_difference(embeddings[row]) for row in lookup.inverse])
        if self.alignment_enabled:
            frame_lookup = TimeLookup(ia_frame_grid(window_start))
            images = self._embed_frames(frames[nearest_frames(frame_times, frame_lookup.unique)], "imagebind")
            audio_lookup = TimeLookup(ia_audio_grid(window_start, self.length))
            mels = waveform_to_mel(torch.from_numpy(_audio_clips(audio, audio_start, audio_lookup.unique, audio_offset)))
            sounds = self.imagebind.embed_audio(mels.to(self.device, self.dtype)).float()
            ia = (images[frame_lookup.inverse] * sounds[audio_lookup.inverse]).sum(-1)  # (windows, 3) cosines
            it = images[frame_lookup.inverse] @ self._text(label.replace("_", " "))
            out["ia"], out["it"] = ia.min(dim=1).values.cpu().numpy(), it.min(dim=1).values.cpu().numpy()
        return out

    def __call__(self, row: dict) -> dict:
        return guarded(row, "embedding", lambda: self.score(
            row["frames"], row["frame_times"], row["audio"], row["audio_start"], row["window_start"], row["label"], int(row["audio_offset"])
        ))  # fmt: skip


class SyncScorer:
    """P_sync a2v and v2a per window: 3 clips 0.25 s apart from the window's middle (paper §2.1)."""

    def __init__(self, sync: SyncStageConfig, actor: ActorConfig, window_length: float = 3.0):
        from avsync_ray.models.sync_classifier import load_sync_classifier

        self.length = window_length
        self.device = resolve_device(actor.device, actor.num_gpus)
        self.classifier = load_sync_classifier(sync.classifier, self.device, torch_dtype(actor.dtype))

    @torch.no_grad()
    def score(self, frames, frame_times, audio, audio_start, window_start, audio_offset: int = 0) -> dict[str, np.ndarray]:
        count = len(window_start)
        if count == 0:
            return {"psync_a2v": np.full(0, np.nan), "psync_v2a": np.full(0, np.nan)}
        lookup = TimeLookup(psync_grid(window_start, self.length))
        clip_frames = frames[nearest_frames(frame_times, psync_frame_times(lookup.unique))]
        video = self.classifier.preprocess_video(clip_frames.reshape(len(lookup.unique), -1, *frames.shape[1:]))
        mels = waveform_to_mel(torch.from_numpy(_audio_clips(audio, audio_start, lookup.unique, audio_offset)))
        audio_embeds = self.classifier.encode_audio(mels.to(self.device))
        video_embeds = self.classifier.encode_video(video.to(self.device))
        a = audio_embeds[lookup.inverse]  # (windows, 3, 512)
        v = video_embeds[lookup.inverse]
        scores = self.classifier.score_embeddings(a[:, :, None].expand(-1, -1, 3, -1), v[:, None].expand(-1, 3, -1, -1))
        a2v, v2a = sync_probabilities(scores.float().cpu())
        return {"psync_a2v": a2v.numpy().astype(np.float64), "psync_v2a": v2a.numpy().astype(np.float64)}

    def __call__(self, row: dict) -> dict:
        return guarded(row, "sync", lambda: self.score(
            row["frames"], row["frame_times"], row["audio"], row["audio_start"], row["window_start"], int(row["audio_offset"])
        ))  # fmt: skip
