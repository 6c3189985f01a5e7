"""Uploads, held to the input rules every generating command shares (:mod:`avsync_ray.conditioning`: the same
limits and the same decode as ``avsync generate``); this module only says which HTTP answer each refusal gets:
413 for what is too big to decode, 415 for a file that is not readable media, 422 for readable media the
request cannot use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avsync_ray.conditioning import Conditioning, ConditioningError, InputProblem, check_audio, check_video, load_conditioning
from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.config.serve import ServeLimits
from avsync_ray.media import DEFAULT_MEL
from avsync_ray.media.audio import center_crop
from avsync_ray.serve.schemas import ApiError

_STATUS = {
    InputProblem.MISSING: (422, "invalid_request"),
    InputProblem.UNREADABLE: (415, "unsupported_media"),
    InputProblem.UNUSABLE: (422, "unusable_media"),
    InputProblem.TOO_LARGE: (413, "upload_too_large"),
    InputProblem.TOO_LONG: (422, "too_long"),
    InputProblem.TOO_SHORT: (422, "too_short"),
}


def api_error(exc: ConditioningError) -> ApiError:
    """The HTTP answer to an input the rules refuse (its message names the field)."""
    status, code = _STATUS[exc.problem]
    return ApiError(status, code, str(exc))


def model_clip(audio: np.ndarray) -> np.ndarray:
    """The centred clip the model hears (the pipeline's own rule), so only that crosses to the model replica."""
    return center_crop(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), DEFAULT_MEL.clip_samples).numpy()


def prepare_animation_inputs(
    config: SamplingConfig, limits: ServeLimits, image: bytes | None, audio: bytes | None, video: bytes | None
) -> Conditioning:
    """Check, bound and decode an animation request's files: an image and a sound, or a video (optionally with
    an image or a sound that replaces its own)."""
    try:
        conditioning = load_conditioning(config, image=image, audio=audio, video=video, limits=limits)
    except ConditioningError as exc:
        raise api_error(exc) from None
    conditioning.audio = model_clip(conditioning.audio)
    return conditioning


@dataclass
class SyncInputs:
    audio: bytes  # the file whose audio track is scored (the video itself when no audio was uploaded)
    video: bytes


def prepare_sync_inputs(limits: ServeLimits, audio: bytes | None, video: bytes | None) -> SyncInputs:
    """Check a sync-score request: a video, and an audio file unless the video's own track is scored."""
    if video is None:
        raise ApiError(422, "invalid_request", "give a video (and optionally an audio file to score against it)")
    try:
        check_video(video, limits, need_audio=audio is None)
        if audio is not None:
            check_audio(audio, limits)
    except ConditioningError as exc:
        raise api_error(exc) from None
    return SyncInputs(audio=audio if audio is not None else video, video=video)
