"""Uploads, probed and bounded before any model sees them: image pixels from the header, streams and
durations from the container, then one decode of what the model needs (``generate.load_conditioning``, the
same rules as ``avsync generate``). Every refusal is an :class:`ApiError`: 413 for what is too big to
decode, 415 for a file that is not readable media, 422 for readable media the request cannot use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avsync_ray.conditioning import Conditioning, load_conditioning
from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.config.serve import ServeLimits
from avsync_ray.errors import InputError
from avsync_ray.media import DEFAULT_MEL, MediaError, MediaErrorReason, MediaInfo, probe, probe_image
from avsync_ray.media.audio import center_crop
from avsync_ray.serve.schemas import ApiError

# Readable media the request cannot use is a 422; what is too big to decode a 413; anything else unreadable a 415.
_STATUS = {
    MediaErrorReason.NO_AUDIO_STREAM: (422, "unusable_media"),
    MediaErrorReason.NO_VIDEO_STREAM: (422, "unusable_media"),
    MediaErrorReason.OUT_OF_RANGE: (422, "unusable_media"),
    MediaErrorReason.TOO_LARGE: (413, "upload_too_large"),
}


def media_error(field: str, exc: MediaError) -> ApiError:
    status, code = _STATUS.get(exc.reason, (415, "unsupported_media"))
    detail = f" ({exc.detail})" if exc.detail else ""
    return ApiError(status, code, f"{field}: {exc.reason.value.replace('_', ' ')}{detail}")


def _probe(field: str, data: bytes) -> MediaInfo:
    try:
        return probe(data)
    except MediaError as exc:
        raise media_error(field, exc) from None


def check_image(data: bytes, limits: ServeLimits) -> None:
    try:
        info = probe_image(data)
    except MediaError as exc:
        raise media_error("image", exc) from None
    if info.width * info.height > limits.max_image_pixels:
        raise ApiError(413, "upload_too_large", f"image: {info.width}x{info.height} is {info.width * info.height:,} pixels, "
                       f"above the limit of {limits.max_image_pixels:,} (limits.max_image_pixels)")  # fmt: skip


def _check_duration(field: str, seconds: float | None, longest: float, setting: str) -> None:
    if seconds is not None and seconds > longest:
        raise ApiError(422, "too_long", f"{field}: lasts {seconds:.1f} s, longer than the limit of {longest:g} s ({setting})")


def check_audio(field: str, info: MediaInfo, limits: ServeLimits) -> None:
    """``info`` (an audio upload, or the video the audio comes from) has an audio track long enough; an audio
    upload is also bounded by ``limits.max_audio_s`` (a video's length by ``limits.max_video_s``)."""
    if info.audio is None:
        raise ApiError(422, "unusable_media", f"{field}: has no audio track")
    seconds = info.audio.duration or info.duration
    if field == "audio":
        _check_duration(field, seconds, limits.max_audio_s, "limits.max_audio_s")
    if seconds is not None and seconds < limits.min_audio_s:
        raise ApiError(422, "too_short", f"{field}: its audio lasts {seconds:.2f} s, shorter than {limits.min_audio_s:g} s (limits.min_audio_s)")


def check_video(data: bytes, limits: ServeLimits, need_audio: bool) -> MediaInfo:
    info = _probe("video", data)
    if info.video is None:
        raise ApiError(422, "unusable_media", "video: has no video stream")
    pixels = info.video.width * info.video.height
    if pixels > limits.max_video_pixels:
        raise ApiError(413, "upload_too_large", f"video: {info.video.width}x{info.video.height} frames are {pixels:,} pixels, "
                       f"above the limit of {limits.max_video_pixels:,} (limits.max_video_pixels)")  # fmt: skip
    _check_duration("video", info.video.duration or info.duration, limits.max_video_s, "limits.max_video_s")
    if need_audio:
        check_audio("video", info, limits)
    return info


def model_clip(audio: np.ndarray) -> np.ndarray:
    """The centred clip the model hears (the pipeline's own rule), so only that crosses to the model replica."""
    return center_crop(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), DEFAULT_MEL.clip_samples).numpy()


def prepare_animation_inputs(
    config: SamplingConfig, limits: ServeLimits, image: bytes | None, audio: bytes | None, video: bytes | None
) -> Conditioning:
    """Probe, bound and decode an animation request's files: an image and a sound, or a video (optionally with
    an image or a sound that replaces its own)."""
    if image is not None and audio is not None and video is not None:
        raise ApiError(422, "invalid_request", "give an image and an audio file, or a video (with at most one of them), not all three")
    if (image is None and video is None) or (audio is None and video is None):
        raise ApiError(422, "invalid_request", "give an image and an audio file, or a video")
    if image is not None:
        check_image(image, limits)
    if audio is not None:
        check_audio("audio", _probe("audio", audio), limits)
    if video is not None:
        check_video(video, limits, need_audio=audio is None)
    try:
        conditioning = load_conditioning(config, image=image, audio=audio, video=video)
    except MediaError as exc:  # the image decoded when it was probed; the audio or the video clip did not
        raise media_error(" or ".join(name for name, data in (("audio", audio), ("video", video)) if data is not None), exc) from None
    except InputError as exc:  # decoded, but not usable (an audio track too short for the model's front end)
        raise ApiError(422, "unusable_media", f"{'audio' if audio is not None else 'video'}: {exc}") from None
    seconds = len(conditioning.audio) / DEFAULT_MEL.sample_rate
    if seconds < limits.min_audio_s:
        raise ApiError(422, "too_short", f"{'audio' if audio is not None else 'video'}: its audio lasts {seconds:.2f} s, "
                       f"shorter than {limits.min_audio_s:g} s (limits.min_audio_s)")  # fmt: skip
    conditioning.audio = model_clip(conditioning.audio)
    return conditioning


@dataclass
class SyncInputs:
    audio: bytes  # the file whose audio track is scored (the video itself when no audio was uploaded)
    video: bytes


def prepare_sync_inputs(limits: ServeLimits, audio: bytes | None, video: bytes | None) -> SyncInputs:
    """Probe and bound a sync-score request: a video, and an audio file unless the video's own track is scored."""
    if video is None:
        raise ApiError(422, "invalid_request", "give a video (and optionally an audio file to score against it)")
    check_video(video, limits, need_audio=audio is None)
    if audio is not None:
        check_audio("audio", _probe("audio", audio), limits)
    return SyncInputs(audio=audio if audio is not None else video, video=video)
