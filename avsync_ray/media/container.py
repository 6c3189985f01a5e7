"""Opening a media source (any fsspec URI, or the file's bytes) and what every decode shares: the stream
info (:func:`probe`, without decoding), the demuxer, stream selection, sample and RGB conversion, and the
checks that tell a truncated or corrupt file from a good one. PyAV is touched only inside ``avsync_ray.media``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import fsspec
import numpy as np

from avsync_ray.media.errors import MediaError, MediaErrorReason, source_name
from avsync_ray.storage import uri_prefix

Source = str | bytes


# Frames whose timestamps differ by less than this are the same instant (guards float round-off of k/fps).
TIME_EPS = 1e-6


_SAMPLE_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    fps: float
    duration: float | None
    num_frames: int | None


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    sample_rate: int
    channels: int
    duration: float | None


@dataclass(frozen=True)
class MediaInfo:
    uri: str
    format_name: str
    size_bytes: int
    duration: float | None
    video: VideoInfo | None
    audio: AudioInfo | None
    # Timestamps in this package count from here (MPEG-PS and some WebM files start at t > 0).
    start_time: float = 0.0


def check_source(uri: Source):
    """(filesystem, path, size) of ``uri``, raising the typed error for missing and empty files."""
    if isinstance(uri, bytes):
        if not uri:
            raise MediaError(uri, MediaErrorReason.ZERO_BYTES)
        return None, None, len(uri)
    fs, path = fsspec.core.url_to_fs(str(uri))
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise MediaError(uri, MediaErrorReason.NOT_FOUND) from None
    if size is None:
        raise MediaError(uri, MediaErrorReason.NOT_FOUND, "size unknown")
    if size == 0:
        raise MediaError(uri, MediaErrorReason.ZERO_BYTES)
    return fs, path, int(size)


# Decoders allocate frames at their coded size (rounded up to whole macroblocks): their bound is this many times a
# pixel limit, which each decoded frame's own size is then checked against.
DECODER_PIXEL_SLACK = 2


def open_container(uri: Source, max_pixels: int | None = None):
    """(the opened container, the file's size). ``max_pixels``: no decoder allocates a frame of more than about that
    many pixels, not even the one FFmpeg decodes while it opens the file to learn a stream's size (an image stream,
    a cover picture): such a stream opens with an unknown (0 x 0) size and does not decode."""
    fs, path, size = check_source(uri)
    if fs is None:
        file = io.BytesIO(uri)
    else:  # local files are read by FFmpeg directly; remote ones through fsspec's seekable file object
        file = fs.open(path, "rb") if uri_prefix(fs) else path
    options = {} if max_pixels is None else {"options": {"max_pixels": str(DECODER_PIXEL_SLACK * max_pixels)}}
    try:
        return av.open(file, mode="r", metadata_errors="ignore", **options), size
    except av.FFmpegError as exc:
        # An mp4 cut before its index (moov written last) is the common form of a truncated download.
        reason = MediaErrorReason.TRUNCATED if "moov atom not found" in str(exc) else MediaErrorReason.CORRUPT
        raise MediaError(uri, reason, f"cannot open container: {exc}") from None


def _seconds(value, time_base) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def media_info(uri: Source, container, size: int) -> MediaInfo:
    video = audio = None
    duration = container.duration / av.time_base if container.duration is not None else None
    if container.streams.video:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        video = VideoInfo(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else 0.0,
            duration=_seconds(stream.duration, stream.time_base) or duration,
            num_frames=stream.frames or None,
        )
    if container.streams.audio:
        stream = container.streams.audio[0]
        audio = AudioInfo(
            codec=stream.codec_context.name,
            sample_rate=stream.codec_context.sample_rate,
            channels=stream.codec_context.channels,
            duration=_seconds(stream.duration, stream.time_base) or duration,
        )
    start_time = container.start_time / av.time_base if container.start_time is not None else 0.0
    return MediaInfo(source_name(uri), container.format.name, size, duration, video, audio, start_time)


def probe(uri: Source, max_pixels: int | None = None) -> MediaInfo:
    """Streams, duration, frame rate and sizes of a media file, without decoding (``max_pixels``: see
    :func:`open_container`)."""
    container, size = open_container(uri, max_pixels)
    with container:
        return media_info(uri, container, size)


def is_still_image(info: MediaInfo) -> bool:
    """A picture, not a video: FFmpeg read the file with an image demuxer (``png_pipe``, ``jpeg_pipe``, ``image2``,
    ...), whatever its name says."""
    return info.video is not None and (info.format_name == "image2" or info.format_name.endswith("_pipe"))


@dataclass(frozen=True)
class MicrosecondTimestamps:
    """A file's timing as torchvision's video_reader (the official evaluation's reader) sees it: each timestamp
    rescaled to whole microseconds with FFmpeg's ``av_rescale_q`` (nearest, halves away from zero)."""

    video_pts_us: list[int]  # every video frame, in display order
    video_duration_us: int | None
    audio_duration_us: int | None


def _rescale_us(value: int, time_base) -> int:
    exact = Fraction(value) * Fraction(time_base) * 1_000_000
    return int(math.copysign(math.floor(abs(exact) + Fraction(1, 2)), exact))


def microsecond_timestamps(uri: Source) -> MicrosecondTimestamps:
    """The video frames' timestamps and the streams' declared durations in whole microseconds (demuxed, not
    decoded: a frame's timestamp is its packet's)."""
    container, _ = open_container(uri)
    with container:
        if not container.streams.video:
            raise MediaError(uri, MediaErrorReason.NO_VIDEO_STREAM)
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        try:
            pts = sorted(packet.pts for packet in container.demux(video) if packet.pts is not None)
        except av.FFmpegError as exc:
            raise MediaError(uri, MediaErrorReason.CORRUPT, f"demux failed: {exc}") from None

        def duration(stream) -> int | None:
            return None if stream is None or stream.duration is None else _rescale_us(stream.duration, stream.time_base)

        return MicrosecondTimestamps([_rescale_us(p, video.time_base) for p in pts], duration(video), duration(audio))


def audio_frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """(channels, samples) float32 in [-1, 1] for any sample format, planar or packed."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    name = frame.format.name.rstrip("p")
    if name in _SAMPLE_SCALE:
        return (data / _SAMPLE_SCALE[name]).astype(np.float32)
    if name == "u8":
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    return data.astype(np.float32)


def _output_size(size, width: int, height: int) -> tuple[int, int] | None:
    """``size`` as (width, height): None keeps the source size, an int sets the short side, (h, w) is exact."""
    if size is None:
        return None
    if isinstance(size, int):
        scale = size / min(width, height)
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    out_h, out_w = size
    return int(out_w), int(out_h)


def check_complete(uri: Source, stream: str, reached: float, declared: float | None) -> None:
    """A stream read to its end must reach (about) the duration the container declares."""
    if declared and reached < declared - max(0.5, 0.05 * declared):
        raise MediaError(uri, MediaErrorReason.TRUNCATED, f"{stream} stream ends at {reached:.3f} s of a declared {declared:.3f} s")


class Demuxer:
    """Decoded frames of the chosen streams in file order. A decode error ends the iteration and is kept:
    whether the file is truncated or corrupt depends on how much was read, which the caller checks."""

    def __init__(self, container, streams):
        self.container, self.streams = container, streams
        self.error: str | None = None

    def __iter__(self) -> Iterator[av.VideoFrame | av.AudioFrame]:
        try:
            for packet in self.container.demux(*self.streams):
                yield from packet.decode()
        except av.FFmpegError as exc:
            self.error = str(exc)


def select_streams(uri: Source, container, info: MediaInfo, video: bool, audio: bool, start: float) -> list:
    """The first video and audio streams to decode (video frame-threaded), checked to exist and to reach ``start``."""
    streams = []
    if video:
        if not container.streams.video:
            raise MediaError(uri, MediaErrorReason.NO_VIDEO_STREAM)
        video_stream = container.streams.video[0]
        video_stream.thread_type = "AUTO"
        streams.append(video_stream)
    if audio:
        if not container.streams.audio:
            raise MediaError(uri, MediaErrorReason.NO_AUDIO_STREAM)
        streams.append(container.streams.audio[0])
    if info.duration is not None and start >= info.duration:
        raise MediaError(uri, MediaErrorReason.OUT_OF_RANGE, f"start {start:.3f} s is past the end ({info.duration:.3f} s)")
    return streams


def bound_decoders(streams: list, max_pixels: int | None) -> None:
    """No decoder of ``streams`` allocates a frame of more than about ``max_pixels`` (it refuses the packet instead;
    the exact bound is the caller's check of each decoded frame)."""
    if max_pixels is not None:
        for stream in streams:
            stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(DECODER_PIXEL_SLACK * max_pixels)}


def rgb_converter(size, info: MediaInfo, interpolation: str):
    """``frame -> RGB uint8 (H, W, 3)`` at the decode's size (see :func:`_output_size`)."""
    out_size = _output_size(size, info.video.width, info.video.height)

    def to_rgb(frame: av.VideoFrame) -> np.ndarray:
        if out_size is None:
            return frame.to_ndarray(format="rgb24")
        return frame.reformat(width=out_size[0], height=out_size[1], format="rgb24", interpolation=interpolation).to_ndarray()

    return to_rgb


def check_decoded(uri: Source, demuxer: "Demuxer", decoded_anything) -> None:
    if demuxer.error and not decoded_anything:
        raise MediaError(uri, MediaErrorReason.CORRUPT, f"decode failed: {demuxer.error}")


def audio_origin(start: float, first_frame_time: float, rate: int) -> tuple[int, float]:
    """(native samples of the first decoded audio frame to drop, time of the first kept sample)."""
    first = max(0, round((start - first_frame_time) * rate))
    return first, first_frame_time + first / rate


def check_finite(uri: Source, finite: bool) -> None:
    if not finite:  # float WAV/FLAC can hold NaN or infinity; no model may see them
        raise MediaError(uri, MediaErrorReason.CORRUPT, "the audio holds NaN or infinite samples")
