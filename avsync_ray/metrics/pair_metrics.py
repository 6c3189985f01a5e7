"""Sync metrics of one (audio, video) pair, from files: what ``avsync metric`` runs.

Inputs are read as the official metric script reads them: the first 2 s of audio and the first 12 frames at
6 fps (each frame the first at or after k/6 s), any format PyAV reads, any sample rate; frames are squashed to
the classifier's square size, as that script does. One known difference: for an mp4, the official script keeps
whole AAC frames starting within [0, 2] s and then takes the centre 2 s, so its window can start up to half an
audio frame (about 10-30 ms) later than the exact [0, 2) s used here. P_sync takes three clips 0.25 s apart
from the middle of the video, with the classifier's own (training) preprocessing, as curation does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from avsync_ray.conditioning import audio_notes, reading, too_short_for_the_mel
from avsync_ray.config.sampling import InputLimits
from avsync_ray.errors import InputError
from avsync_ray.media import decode, load_audio
from avsync_ray.media.clips import PSYNC_CLIPS, ClipSamplingError, audio_clips, decode_clips
from avsync_ray.media.errors import source_name
from avsync_ray.metrics import sync_metrics
from avsync_ray.metrics.imagebind_scores import image_audio_similarity
from avsync_ray.models.imagebind import AUDIO, VISION, ImageBind
from avsync_ray.models.sync_classifier import SyncClassifier

logger = logging.getLogger(__name__)

Metric = Literal["score", "psync", "relsync", "alignsync"]


class TooShortForPsyncError(InputError, ClipSamplingError):
    """A file too short for P_sync's three clips, named: an input error to a command, still a
    :class:`ClipSamplingError` to callers that report P_sync as undefined instead (the sync-score route)."""


def _check_sound(audio: np.ndarray, source, clip_seconds: float | None = None) -> None:
    """Refuse audio too short for the mel front end, naming ``source``; warn of silent audio, or audio shorter than
    ``clip_seconds`` (as ``avsync generate`` does)."""
    if (why := too_short_for_the_mel(audio)) is not None:
        raise InputError(f"{source_name(source)}: {why}")
    for note in audio_notes(audio, clip_seconds):
        logger.warning("%s: %s", source_name(source), note)


@dataclass
class Pair:
    audio: np.ndarray  # 16 kHz mono
    frames: np.ndarray  # (T, H, W, 3) uint8


def load_pair_audio(uri: str | bytes, seconds: float = 2.0, max_seconds: float | None = None) -> np.ndarray:
    """The first ``seconds`` of the audio track (shorter audio is kept whole, with a warning; the mel pads it); a
    track longer than ``max_seconds`` is refused."""
    audio = load_audio(uri, max_seconds=max_seconds)[: int(seconds * 16_000)]
    _check_sound(audio, uri, seconds)
    return audio


def load_pair_frames(uri: str | bytes, num_frames: int = 12, fps: float = 6.0, max_seconds: float | None = None, max_pixels: int | None = None) -> np.ndarray:
    return decode(uri, fps=fps, start=0.0, end=num_frames / fps, audio=False, frame_selection="next", max_seconds=max_seconds, max_pixels=max_pixels).frames


class _Reader:
    """Reads the files of one pair: an error names the input it came from (``audio``, ``video``, ``ref_audio``,
    ``ref_video``; the video when its own track is the sound), and ``limits`` (None: unbounded) bound every
    decode: a video by ``max_video_s`` and ``max_video_pixels``, an audio file by ``max_audio_s``."""

    def __init__(self, audio, video, limits: InputLimits | None):
        self.limits = limits
        self.own_track = audio is video or audio == video

    def video(self, field: str, source, load, **kwargs):
        bounds = {} if self.limits is None else {"max_seconds": self.limits.max_video_s, "max_pixels": self.limits.max_video_pixels}
        with reading(field, source, too_long="limits.max_video_s", too_large="limits.max_video_pixels"):
            return load(source, **kwargs, **bounds)

    def audio(self, field: str, source, load, **kwargs):
        if field == "audio" and self.own_track:
            field, setting, seconds = "video", "limits.max_video_s", self.limits and self.limits.max_video_s
        else:
            setting, seconds = "limits.max_audio_s", self.limits and self.limits.max_audio_s
        with reading(field, source, too_long=setting):
            return load(source, **kwargs, **({} if seconds is None else {"max_seconds": seconds}))


@torch.no_grad()
def _score(classifier: SyncClassifier, audio: np.ndarray, frames: np.ndarray) -> torch.Tensor:
    inputs = classifier.preprocess(audio=audio, video=frames, resize_mode="squash")
    device = classifier.device
    return classifier(inputs["audio"][None].to(device), inputs["video"][None].to(device)).cpu()[0]


def pair_metric(
    metric: Metric,
    classifier: SyncClassifier,
    audio: str,
    video: str,
    ref_audio: str | None = None,
    ref_video: str | None = None,
    imagebind: ImageBind | None = None,
    limits: InputLimits | None = None,
) -> dict:
    """One metric of one pair (files: paths, URIs or bytes). Values are fractions (``percent`` = x100, as the paper
    reports). ``limits`` bound every decode (uploads); an input that cannot be read raises the
    :class:`~avsync_ray.conditioning.ConditioningError` of its field."""
    read = _Reader(audio, video, limits)
    if metric == "psync":
        return _psync(classifier, audio, video, read)
    pair = Pair(read.audio("audio", audio, load_pair_audio), read.video("video", video, load_pair_frames))
    score = _score(classifier, pair.audio, pair.frames)
    if metric == "score":
        return {"metric": "score", "value": float(score)}
    if (ref_audio is None) == (ref_video is None) and metric == "relsync":
        raise ValueError("relsync needs exactly one of ref_audio and ref_video")
    if metric == "alignsync" and (ref_video is None or imagebind is None):
        raise ValueError("alignsync needs ref_video and an ImageBind model")
    ref_frames = read.video("ref_video", ref_video, load_pair_frames) if ref_video else None
    reference = _score(classifier, read.audio("ref_audio", ref_audio, load_pair_audio), pair.frames) if ref_audio else _score(classifier, pair.audio, ref_frames)
    result = {"score": float(score), "reference_score": float(reference)}
    if metric == "relsync":
        value = sync_metrics.relsync(score, reference)
    elif metric == "alignsync":
        mel = classifier.preprocess_audio(pair.audio)
        ia_generated = image_audio_similarity(imagebind, pair.frames, mel)
        ia_reference = image_audio_similarity(imagebind, ref_frames[:1], mel)
        value = sync_metrics.alignsync(score[None], reference[None], ia_generated[None], ia_reference)[0]
        result.update(relsync=float(sync_metrics.relsync(score, reference)), ia_generated=ia_generated.tolist(), ia_reference_first_frame=float(ia_reference[0]))
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return {"metric": metric, "value": float(value), "percent": sync_metrics.as_percent(value), **result}


@torch.no_grad()
def _psync(classifier: SyncClassifier, audio, video, read: _Reader) -> dict:
    """Three clips 0.25 s apart from the middle of ``video``; audio from ``audio`` at the same times (a separate
    sound needs no audio track in the video)."""
    try:
        clips = read.video("video", video, decode_clips, spec=PSYNC_CLIPS, audio=read.own_track)
    except ClipSamplingError as exc:
        raise TooShortForPsyncError(f"{source_name(video)}: too short for P_sync: {exc}") from None
    if not read.own_track:
        other = read.audio("audio", audio, decode, video=False)
        try:
            clips.audio = audio_clips(other.audio, other.audio_start, clips.starts, PSYNC_CLIPS)
        except ClipSamplingError as exc:
            raise TooShortForPsyncError(f"{source_name(audio)}: too short for P_sync: {exc}") from None
    _check_sound(clips.audio.ravel(), audio)  # warns when silent
    mel = classifier.preprocess_audio(torch.from_numpy(clips.audio))
    frames = classifier.preprocess_video(clips.frames)
    device = classifier.device
    scores = classifier.score_matrix(mel[None].to(device), frames[None].to(device)).cpu()
    a2v, v2a = sync_metrics.sync_probabilities(scores)
    return {
        "metric": "psync",
        "a2v": float(a2v[0]),
        "v2a": float(v2a[0]),
        "percent": {"a2v": sync_metrics.as_percent(a2v[0]), "v2a": sync_metrics.as_percent(v2a[0])},
        "clip_starts_s": clips.starts.round(4).tolist(),
        "scores": scores[0].tolist(),
    }


def load_imagebind(path: str | Path, preset: str = "imagebind-huge", device: str = "cpu") -> ImageBind:
    return ImageBind.from_checkpoint(path, preset=preset, modalities=(AUDIO, VISION)).to(device)
