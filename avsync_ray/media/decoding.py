"""Windowed decode: ``[start, end)`` of a file in one pass, demuxing video and audio together. Frames are
sampled on a regular time grid and only those returned are converted to RGB (and scaled); the audio comes back
as 16 kHz mono float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import torch

from avsync_ray.media.audio import TARGET_SAMPLE_RATE, resample, to_mono
from avsync_ray.media.container import (
    TIME_EPS,
    Demuxer,
    MediaInfo,
    Source,
    audio_frame_to_float,
    audio_origin,
    bound_decoders,
    check_complete,
    check_decoded,
    check_finite,
    media_info,
    open_container,
    rgb_converter,
    select_streams,
)
from avsync_ray.media.errors import MediaError, MediaErrorReason

FrameSelection = Literal["nearest", "next"]


# Seek this far before the start (to a keyframe at or before it); nearer starts are read from the beginning.
_SEEK_PREROLL = 1.0

# A length limit also bounds the frames decoded, at this many per second whatever the timestamps say (frames whose
# times never advance would otherwise never reach the end of a window).
MAX_FRAME_RATE = 240.0

# What is decoded may pass a length limit by this much (encoder priming and padding, a last partial frame).
LIMIT_SLACK_S = 1.0


class DecodeLimits:
    """The bounds of one decode, counted on what is decoded, never on what the header says: ``max_seconds`` of
    audio samples, of frame timestamps and of frames (at :data:`MAX_FRAME_RATE`), and ``max_pixels`` per frame
    (the decoders themselves allocate no larger frame: see ``open_container``). Past either, the decode stops with
    :class:`MediaError` (``TOO_LONG``, ``TOO_LARGE``), so its memory and time are bounded by the limits whatever
    the file claims."""

    def __init__(self, uri: Source, max_seconds: float | None, max_pixels: int | None):
        self.uri, self.max_seconds, self.max_pixels = uri, max_seconds, max_pixels
        self.audio_seconds = 0.0
        self.frames = 0

    def check_header(self, info: MediaInfo, video: bool) -> None:
        """Refuse at once what the header already shows to be too large."""
        if video and info.video is not None:
            self._check_pixels(info.video.width, info.video.height, "the header states")

    def _check_pixels(self, width: int, height: int, where: str) -> None:
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise MediaError(self.uri, MediaErrorReason.TOO_LARGE, f"{where} {width}x{height} frames, {width * height:,} pixels; at most {self.max_pixels:,}")

    def _too_long(self, what: str, declared: float | None) -> MediaError:
        header = f"the header says {declared:.1f} s" if declared else "the header states no length"
        return MediaError(self.uri, MediaErrorReason.TOO_LONG, f"more than {self.max_seconds:g} s of {what} decoded, and {header}")

    def video_frame(self, frame: av.VideoFrame, time: float, declared: float | None) -> None:
        self._check_pixels(frame.width, frame.height, "decoded")
        if self.max_seconds is not None:
            self.frames += 1
            longest = self.max_seconds + LIMIT_SLACK_S
            if time > longest or self.frames > longest * MAX_FRAME_RATE:
                raise self._too_long("video", declared)

    def audio_frame(self, frame: av.AudioFrame, declared: float | None) -> None:
        if self.max_seconds is not None:
            self.audio_seconds += frame.samples / frame.sample_rate
            if self.audio_seconds > self.max_seconds + LIMIT_SLACK_S:
                raise self._too_long("audio", declared)


@dataclass
class DecodedAV:
    """Frames and audio of ``[start, end)`` from one decode.

    ``frames[k]`` is the frame shown at ``frame_times[k] = start + k / fps`` (``fps=None`` keeps every
    source frame and ``frame_times`` are their timestamps); ``source_frame_times[k]`` is that frame's own
    timestamp. ``audio[i]`` is the sample at ``audio_start + i / sample_rate``.
    """

    info: MediaInfo
    start: float
    end: float
    fps: float | None
    frames: np.ndarray | None
    frame_times: np.ndarray | None
    source_frame_times: np.ndarray | None
    audio: np.ndarray | None
    sample_rate: int
    audio_start: float
    num_decoded_frames: int

    @property
    def duration(self) -> float:
        return self.end - self.start


class _FrameSampler:
    """Picks, for each grid time start + k/fps, the source frame to show, without converting the others."""

    def __init__(self, start: float, end: float | None, fps: float | None, selection: FrameSelection, convert):
        self.start, self.end, self.fps, self.selection, self.convert = start, end, fps, selection, convert
        self.frames: list[np.ndarray] = []
        self.grid_times: list[float] = []
        self.source_times: list[float] = []
        self.previous: tuple[float, av.VideoFrame] | None = None
        self.last_converted: tuple[float, np.ndarray] | None = None
        self.decoded = 0

    def _target(self) -> float | None:
        if self.fps is None:
            return None
        t = self.start + len(self.frames) / self.fps
        return t if self.end is None or t < self.end - TIME_EPS else None

    def _take(self, target: float, time: float, frame: av.VideoFrame) -> None:
        if self.last_converted is None or self.last_converted[0] != time:
            self.last_converted = (time, self.convert(frame))
        self.frames.append(self.last_converted[1])
        self.grid_times.append(target)
        self.source_times.append(time)

    @property
    def done(self) -> bool:
        if self.fps is None:
            return False
        return self._target() is None

    def push(self, time: float, frame: av.VideoFrame) -> None:
        self.decoded += 1
        previous, self.previous = self.previous, (time, frame)
        if self.fps is None:  # every source frame of [start, end)
            if time >= self.start - TIME_EPS and (self.end is None or time < self.end - TIME_EPS):
                self._take(time, time, frame)
            return
        while (target := self._target()) is not None:
            if self.selection == "next":
                if time < target - TIME_EPS:
                    break
                self._take(target, time, frame)
                continue
            if time < target - TIME_EPS:  # a later frame may still be nearer
                break
            if previous is not None and abs(target - previous[0]) <= abs(time - target):
                self._take(target, *previous)
            else:
                self._take(target, time, frame)

    def finish(self, frame_duration: float) -> None:
        """End of stream: the last frame covers targets up to its display end."""
        if self.fps is None or self.previous is None:
            return
        last_time, last_frame = self.previous
        while (target := self._target()) is not None and target < last_time + frame_duration - TIME_EPS:
            if self.selection == "next" and target > last_time + TIME_EPS:
                break
            self._take(target, last_time, last_frame)


def decode(
    uri: Source,
    *,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start: float = 0.0,
    end: float | None = None,
    video: bool = True,
    audio: bool = True,
    frame_selection: FrameSelection = "nearest",
    sample_rate: int = TARGET_SAMPLE_RATE,
    interpolation: str = "AREA",
    max_seconds: float | None = None,
    max_pixels: int | None = None,
) -> DecodedAV:
    """Decode ``[start, end)`` of a file in one pass: RGB uint8 frames and mono float32 audio.

    Args:
        fps: sample frames at ``start + k / fps``; ``None`` returns every source frame.
        size: ``None`` (source size), an int (short side) or ``(height, width)``.
        end: ``None`` reads to the end of the streams. A window that the file does not cover is an error.
        frame_selection: ``"nearest"`` takes the frame whose timestamp is nearest each grid time (the sync
            classifier's rule); ``"next"`` takes the first frame at or after it (the official AVSyncD loader).
        sample_rate: audio is resampled (band-limited sinc) to this rate after a proper channel mean.
        max_seconds, max_pixels: the :class:`DecodeLimits` of an untrusted file (None: unbounded).

    Raises:
        MediaError: missing, empty, corrupt or truncated files, a missing requested stream, a window
            outside the media, or a file past the limits (``TOO_LONG``, ``TOO_LARGE``).
    """
    kwargs = dict(fps=fps, size=size, start=start, end=end, video=video, audio=audio, frame_selection=frame_selection,
                  sample_rate=sample_rate, interpolation=interpolation, max_seconds=max_seconds, max_pixels=max_pixels)  # fmt: skip
    try:
        return _decode(uri, seek=start > _SEEK_PREROLL, **kwargs)
    except _SeekOvershoot:  # imprecise seeking (e.g. MPEG program streams): read from the beginning instead
        return _decode(uri, seek=False, **kwargs)


class _SeekOvershoot(Exception):
    """A seek landed after the requested start, or decoding broke right after it."""


def _decode(
    uri: Source,
    *,
    seek: bool,
    fps: float | None,
    size,
    start: float,
    end: float | None,
    video: bool,
    audio: bool,
    frame_selection: FrameSelection,
    sample_rate: int,
    interpolation: str,
    max_seconds: float | None,
    max_pixels: int | None,
) -> DecodedAV:
    if end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if not (video or audio):
        raise ValueError("nothing to decode: both video and audio are False")
    container, size_bytes = open_container(uri, max_pixels)
    with container:
        info = media_info(uri, container, size_bytes)
        streams = select_streams(uri, container, info, video, audio, start)
        bound_decoders(streams, max_pixels)
        limits = DecodeLimits(uri, max_seconds, max_pixels)
        limits.check_header(info, video)
        if seek:
            container.seek(int((info.start_time + start - _SEEK_PREROLL) * av.time_base), backward=True)
        to_rgb = rgb_converter(size, info, interpolation) if video else None
        sampler = _FrameSampler(start, end, fps, frame_selection, to_rgb)
        audio_chunks: list[np.ndarray] = []
        audio_t0: float | None = None
        audio_rate = info.audio.sample_rate if audio else 0
        video_done, audio_done = not video, not audio
        demuxer = Demuxer(container, streams)
        for frame in demuxer:
            if frame.time is None:
                continue
            time = frame.time - info.start_time
            is_video = isinstance(frame, av.VideoFrame)
            if seek and time > start + TIME_EPS and not (sampler.decoded if is_video else audio_chunks):
                raise _SeekOvershoot
            if is_video:
                if video_done:
                    continue
                limits.video_frame(frame, time, info.video.duration or info.duration)
                sampler.push(time, frame)
                past_end = end is not None and time >= end + (1.0 / fps if fps else 0.0)
                video_done = sampler.done or past_end
            elif not audio_done:
                limits.audio_frame(frame, info.audio.duration or info.duration)
                if time + frame.samples / frame.sample_rate <= start:
                    continue
                if end is not None and time >= end:
                    audio_done = True
                    continue
                if audio_t0 is None:
                    audio_t0 = time
                audio_chunks.append(to_mono(audio_frame_to_float(frame)).numpy())  # mono at once: memory does not grow with the channels
            if video_done and audio_done:
                break
        rate = info.video.fps if video and info.video.fps else 25.0
        sampler.finish(1.0 / rate)

    if demuxer.error and seek:
        raise _SeekOvershoot
    check_decoded(uri, demuxer, sampler.decoded or audio_chunks)
    covered_end = end if end is not None else math.inf
    frames = frame_times = source_times = None
    if video:
        if not sampler.frames:
            raise MediaError(uri, MediaErrorReason.TRUNCATED, f"no video frame in [{start:.3f}, {end}) s")
        if fps is not None and end is not None and not sampler.done:
            stream_end = sampler.previous[0] + 1.0 / rate
            declared = info.video.duration or info.duration or stream_end
            reason = MediaErrorReason.OUT_OF_RANGE if end > declared + 1.0 / rate else MediaErrorReason.TRUNCATED
            raise MediaError(
                uri,
                reason,
                f"window [{start:.3f}, {end:.3f}) s needs frames until {end:.3f} s; decoding stopped at "
                f"{stream_end:.3f} s of a declared {declared:.3f} s",
            )
        if end is None:
            check_complete(uri, "video", sampler.previous[0] + 1.0 / rate, info.video.duration or info.duration)
        frames = np.stack(sampler.frames)
        frame_times = np.asarray(sampler.grid_times, dtype=np.float64)
        source_times = np.asarray(sampler.source_times, dtype=np.float64)
        if end is None:
            covered_end = source_times[-1] + 1.0 / rate if fps is None else frame_times[-1] + 1.0 / fps

    waveform = None
    audio_start = start
    if audio:
        if not audio_chunks:
            raise MediaError(uri, MediaErrorReason.TRUNCATED, f"no audio in [{start:.3f}, {end}) s")
        native = np.concatenate(audio_chunks)
        first, audio_start = audio_origin(start, audio_t0, audio_rate)
        last = len(native) if covered_end == math.inf else min(len(native), first + round((covered_end - audio_start) * audio_rate))
        mono = torch.from_numpy(native[first:last])
        check_finite(uri, bool(mono.isfinite().all()))
        waveform = resample(mono, audio_rate, sample_rate).numpy().astype(np.float32, copy=False)
        if covered_end == math.inf:
            covered_end = audio_start + len(waveform) / sample_rate
            check_complete(uri, "audio", covered_end, info.audio.duration or info.duration)
        elif end is not None and audio_start + len(waveform) / sample_rate < end - 2.0 / sample_rate - 0.05:
            raise MediaError(
                uri,
                MediaErrorReason.OUT_OF_RANGE,
                f"window [{start:.3f}, {end:.3f}) s needs audio until {end:.3f} s; the audio stream ends at "
                f"{audio_start + len(waveform) / sample_rate:.3f} s",
            )

    return DecodedAV(
        info=info,
        start=start,
        end=float(covered_end),
        fps=fps,
        frames=frames,
        frame_times=frame_times,
        source_frame_times=source_times,
        audio=waveform,
        sample_rate=sample_rate,
        audio_start=float(audio_start),
        num_decoded_frames=sampler.decoded,
    )


def load_audio(uri: Source, sample_rate: int = TARGET_SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """The whole audio track of any file PyAV reads (audio-only or video), as mono float32 at ``sample_rate``; a
    track that holds more than ``max_seconds`` is refused once that much is decoded (``TOO_LONG``)."""
    return decode(uri, video=False, audio=True, sample_rate=sample_rate, max_seconds=max_seconds).audio


def first_frame(uri: Source, max_pixels: int | None = None) -> np.ndarray:
    """The first frame of a video (the first at or after its start), as RGB uint8 (H, W, 3), decoding nothing after it."""
    container, size_bytes = open_container(uri, max_pixels)
    with container:
        info = media_info(uri, container, size_bytes)
        streams = select_streams(uri, container, info, video=True, audio=False, start=0.0)
        bound_decoders(streams, max_pixels)
        limits = DecodeLimits(uri, None, max_pixels)
        limits.check_header(info, video=True)
        demuxer = Demuxer(container, streams)
        for frame in demuxer:
            if frame.time is None or frame.time - info.start_time < -TIME_EPS:
                continue
            limits.video_frame(frame, 0.0, None)
            return frame.to_ndarray(format="rgb24")
    check_decoded(uri, demuxer, False)
    raise MediaError(uri, MediaErrorReason.TRUNCATED, "no video frame")
