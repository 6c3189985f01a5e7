"""Conditioning inputs: an image, an audio file and a video (paths, URIs or the files' bytes) -> the first frame and
the audio clip the pipeline is conditioned on, following the official demo, and the rules every input is held to
(:class:`~avsync_ray.config.sampling.InputLimits`). ``avsync generate``, the serving app, the MLflow model and the
benchmarks prepare their inputs here, so each refuses the same inputs with the same :class:`ConditioningError`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from enum import Enum

import numpy as np

from avsync_ray.config.sampling import InputLimits, SamplingConfig
from avsync_ray.errors import InputError
from avsync_ray.media import MediaError, MediaErrorReason, MediaInfo, decode, load_audio, load_image, probe, probe_image
from avsync_ray.media.audio import DEFAULT_MEL
from avsync_ray.media.container import Source
from avsync_ray.media.errors import source_name
from avsync_ray.media.frames import center_crop_resize, to_uint8_frames

logger = logging.getLogger(__name__)

SILENCE_PEAK = 10 ** (-60 / 20)  # -60 dBFS (ffmpeg silencedetect's default floor): audio below it has nothing to hear


class InputProblem(str, Enum):
    """What is wrong with an input (the serving app answers each kind with its own status)."""

    MISSING = "missing"  # the inputs given do not make a request
    UNREADABLE = "unreadable"  # not media that can be read: corrupt, truncated, empty, not found
    UNUSABLE = "unusable"  # readable, but not what the request needs: no audio track, no clip where it is asked
    TOO_LARGE = "too_large"  # more pixels than the limit
    TOO_LONG = "too_long"  # lasts longer than the limit
    TOO_SHORT = "too_short"  # lasts less than the limit or than the model can hear


_PROBLEM_OF_REASON = {
    MediaErrorReason.NO_AUDIO_STREAM: InputProblem.UNUSABLE,
    MediaErrorReason.NO_VIDEO_STREAM: InputProblem.UNUSABLE,
    MediaErrorReason.OUT_OF_RANGE: InputProblem.UNUSABLE,
    MediaErrorReason.TOO_LARGE: InputProblem.TOO_LARGE,
    MediaErrorReason.TOO_LONG: InputProblem.TOO_LONG,
}  # every other reason: unreadable


class ConditioningError(InputError):
    """An input the pipeline cannot be conditioned on: which one (``field``: image, audio or video; None for the
    combination) and what is wrong with it (``problem``). The message starts with the field (and the file, for a
    path or URI)."""

    def __init__(self, field: str | None, problem: InputProblem, message: str):
        super().__init__(message)
        self.field, self.problem = field, InputProblem(problem)

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.field, self.problem, str(self)))


def _label(field: str, source: Source) -> str:
    """How a message names an input: its field, and its path or URI when it has one (bytes have no name)."""
    return field if isinstance(source, (bytes, bytearray, memoryview)) else f"{field} {source_name(source)}"


def _refuse(field: str, source: Source, problem: InputProblem, what: str) -> ConditioningError:
    return ConditioningError(field, problem, f"{_label(field, source)}: {what}")


@contextlib.contextmanager
def reading(field: str, source: Source, too_long: str | None = None, too_large: str | None = None):
    """A media error while reading ``source`` becomes the :class:`ConditioningError` of its field; a decode stopped
    at a limit names the limit's setting (``too_long``, ``too_large``: e.g. ``limits.max_audio_s``)."""
    try:
        yield
    except MediaError as exc:
        what = exc.reason.value.replace("_", " ")
        setting = {MediaErrorReason.TOO_LONG: too_long, MediaErrorReason.TOO_LARGE: too_large}.get(exc.reason)
        if setting:
            what += f" ({setting})" + (f": {exc.detail}" if exc.detail else "")
        elif exc.detail:
            what += f" ({exc.detail})"
        raise _refuse(field, source, _PROBLEM_OF_REASON.get(exc.reason, InputProblem.UNREADABLE), what) from None


# ------------------------------------------------------------------------------------------------ the rules


def given(source: Source | None) -> bool:
    """Whether an input was given: a path or URI, or a file's bytes (an empty upload too, which is then refused)."""
    return source is not None and (isinstance(source, (bytes, bytearray, memoryview)) or source != "")


def check_combination(image: Source | None, audio: Source | None, video: Source | None) -> None:
    """An image and a sound, or a video (with at most one of them, which replaces its own)."""
    image, audio, video = given(image), given(audio), given(video)
    if image and audio and video:
        raise ConditioningError(None, InputProblem.MISSING, "give at most two of image, audio and video (an image and a sound, "
                                "or a video with at most one of them replacing its own), not all three")  # fmt: skip
    if not ((image or video) and (audio or video)):
        raise ConditioningError(None, InputProblem.MISSING, "need an image and a sound: give an image and an audio file, or a video "
                                "(its audio track is the sound)")  # fmt: skip


def check_image(image: Source, limits: InputLimits) -> None:
    """The image's size, from its header, is within ``limits.max_image_pixels`` (a video gives its first frame)."""
    with reading("image", image, too_large="limits.max_image_pixels"):
        try:
            info = probe_image(image)
        except MediaError as not_an_image:
            video = _video_as_image(image, limits)
            if video is None:
                raise not_an_image from None
            info = video
    pixels = info.width * info.height
    if pixels > limits.max_image_pixels:
        raise _refuse("image", image, InputProblem.TOO_LARGE, f"{info.width}x{info.height} is {pixels:,} pixels, above the limit of "
                      f"{limits.max_image_pixels:,} (limits.max_image_pixels)")  # fmt: skip


def _video_as_image(image: Source, limits: InputLimits):
    """The frame size of a video given as the image (its first frame is the image), or None for a file that is no
    video either."""
    try:
        info = probe(image, max_pixels=limits.max_image_pixels)
    except MediaError:
        return None
    return info.video


def _check_duration(field: str, source: Source, seconds: float | None, longest: float, setting: str) -> None:
    if seconds is not None and seconds > longest:
        raise _refuse(field, source, InputProblem.TOO_LONG, f"lasts {seconds:.1f} s, longer than the limit of {longest:g} s ({setting})")


def check_audio_length(field: str, source: Source, seconds: float | None, limits: InputLimits) -> None:
    """Audio (of an audio file, or of the video it comes from) lasts at least ``limits.min_audio_s``."""
    if seconds is not None and seconds < limits.min_audio_s:
        raise _refuse(field, source, InputProblem.TOO_SHORT, f"its audio lasts {seconds:.2f} s, shorter than {limits.min_audio_s:g} s "
                      "(limits.min_audio_s)")  # fmt: skip


def check_audio(audio: Source, limits: InputLimits) -> MediaInfo:
    """An audio file (or a video whose track is the sound) has an audio track within the limits, from its header."""
    with reading("audio", audio):
        info = probe(audio, max_pixels=limits.max_video_pixels)
    if info.audio is None:
        raise _refuse("audio", audio, InputProblem.UNUSABLE, "no audio stream")
    seconds = info.audio.duration or info.duration
    _check_duration("audio", audio, seconds, limits.max_audio_s, "limits.max_audio_s")
    check_audio_length("audio", audio, seconds, limits)
    return info


def check_video(video: Source, limits: InputLimits, need_audio: bool) -> MediaInfo:
    """A video has a video stream whose frames and length are within the limits, from its header, and, when its
    audio is the sound (``need_audio``), an audio track long enough."""
    with reading("video", video):
        info = probe(video, max_pixels=limits.max_video_pixels)
    if info.video is None:
        raise _refuse("video", video, InputProblem.UNUSABLE, "no video stream")
    pixels = info.video.width * info.video.height
    if pixels > limits.max_video_pixels:
        raise _refuse("video", video, InputProblem.TOO_LARGE, f"{info.video.width}x{info.video.height} frames are {pixels:,} pixels, "
                      f"above the limit of {limits.max_video_pixels:,} (limits.max_video_pixels)")  # fmt: skip
    _check_duration("video", video, info.video.duration or info.duration, limits.max_video_s, "limits.max_video_s")
    if need_audio:
        if info.audio is None:
            raise _refuse("video", video, InputProblem.UNUSABLE, "no audio stream")
        check_audio_length("video", video, info.audio.duration or info.duration, limits)
    return info


# ------------------------------------------------------------------------------------------------ preparation


@dataclass
class Conditioning:
    image: np.ndarray  # (H, W, 3) uint8 at the output size
    audio: np.ndarray  # 16 kHz mono float32, the clip the model hears
    source: dict


def _av_duration(info: MediaInfo) -> float | None:
    """The time both streams of a video cover (None when the container states no duration)."""
    durations = [d for d in (info.video and info.video.duration, info.audio and info.audio.duration) if d]
    return min(durations) if durations else info.duration


def _clip_start(info: MediaInfo, clip_seconds: float) -> float:
    """Where the centred clip of a video starts: the middle of the time both its streams cover (0 when the
    container states no duration)."""
    av_duration = _av_duration(info)
    return max(0.0, (av_duration - clip_seconds) / 2) if av_duration else 0.0


def too_short_for_the_mel(waveform: np.ndarray) -> str | None:
    """Why audio is too short for the mel front end (one 25-ms frame), or None."""
    seconds, shortest = len(waveform) / DEFAULT_MEL.sample_rate, DEFAULT_MEL.frame_length_ms / 1000
    return f"the audio lasts {seconds:.3f} s; at least {shortest} s is needed" if seconds < shortest else None


def audio_notes(waveform: np.ndarray, clip_seconds: float | None = None) -> list[str]:
    """What a person should know of audio that is used anyway: it is shorter than the ``clip_seconds`` a model
    hears (the rest is heard as silence), or silent (below -60 dBFS: nothing to synchronise with)."""
    notes, seconds = [], len(waveform) / DEFAULT_MEL.sample_rate
    if clip_seconds is not None and seconds < clip_seconds:
        notes.append(f"the audio lasts {seconds:.2f} s, shorter than the {clip_seconds:.2f}-s clip: the rest is heard as silence")
    peak = float(np.abs(waveform).max()) if len(waveform) else 0.0
    if peak < SILENCE_PEAK:
        notes.append(f"the audio is silent (peak {peak:.1e}, below -60 dBFS): there is nothing to synchronise with")
    return notes


def load_conditioning(
    config: SamplingConfig,
    image: Source | None = None,
    audio: Source | None = None,
    video: Source | None = None,
    limits: InputLimits | None = None,
) -> Conditioning:
    """The first frame and audio clip, following the official demo: ``image`` and ``audio`` files win;
    otherwise both come from the centred ``num_frames / fps``-second clip of ``video``. Every input is checked
    against ``limits`` (default :class:`InputLimits`) from its header, then decoded here with the same limits
    counted on what is decoded, so a header that lies costs no more than an honest file at the limit; audio too
    short for the mel front end is refused. Each input is a URI or the file's bytes. Raises
    :class:`ConditioningError`."""
    limits = limits or InputLimits()
    check_combination(image, audio, video)
    if config.height is None or config.width is None:
        raise InputError("the output size is not set: use with_model_size(config, model) or set height and width")
    image, audio, video = (source if given(source) else None for source in (image, audio, video))
    if image is not None:
        check_image(image, limits)
    if audio is not None:
        check_audio(audio, limits)
    clip_seconds = config.num_frames / config.fps
    source: dict = {name: value and source_name(value) for name, value in (("image", image), ("audio", audio), ("video", video))}
    clip = None
    if video is not None and not (image is not None and audio is not None):
        info = check_video(video, limits, need_audio=audio is None)
        if (av_duration := _av_duration(info)) is not None and av_duration < clip_seconds:
            raise _refuse("video", video, InputProblem.UNUSABLE, f"out of range: it lasts {av_duration:.2f} s, shorter than the {clip_seconds:g}-s "
                          f"clip the model is conditioned on; give a video of at least {clip_seconds:g} s, or an image and an audio file")  # fmt: skip
        start = _clip_start(info, clip_seconds)
        with reading("video", video, too_long="limits.max_video_s", too_large="limits.max_video_pixels"):
            clip = decode(video, fps=config.fps, start=start, end=start + clip_seconds, video=image is None, audio=audio is None, frame_selection="next",
                          max_seconds=limits.max_video_s, max_pixels=limits.max_video_pixels)  # fmt: skip
        source["clip_start_s"] = start
    with reading("image", image, too_large="limits.max_image_pixels"):
        first_frame = load_image(image, max_pixels=limits.max_image_pixels) if image is not None else clip.frames[0]
    with reading("audio", audio, too_long="limits.max_audio_s"):
        waveform = np.asarray(load_audio(audio, max_seconds=limits.max_audio_s) if audio is not None else clip.audio, dtype=np.float32)
    field, sound = ("audio", audio) if audio is not None else ("video", video)
    check_audio_length(field, sound, len(waveform) / DEFAULT_MEL.sample_rate, limits)
    if (why := too_short_for_the_mel(waveform)) is not None:
        raise _refuse(field, sound, InputProblem.TOO_SHORT, why)
    for note in audio_notes(waveform):  # (shorter than the clip: the caller pads it and says so)
        logger.warning("%s: %s", _label(field, sound), note)
    frame = to_uint8_frames(center_crop_resize(first_frame, (config.height, config.width)))[0]
    return Conditioning(image=frame, audio=waveform, source=source)


def pad_to(audio: np.ndarray, seconds: float, sample_rate: int = DEFAULT_MEL.sample_rate) -> tuple[np.ndarray, float]:
    """``audio`` padded with silence to ``seconds`` (the video's length), and the seconds of padding added."""
    missing = max(0, int(round(seconds * sample_rate)) - len(audio))
    return np.pad(audio, (0, missing)), missing / sample_rate
