"""Probe, decode and encode audio-video files. The only module of the project that touches PyAV.

``decode`` makes one pass over the container, demuxing video and audio together: it samples frames on a
regular time grid, converts to RGB (and scales) only the frames it returns, and returns the audio as
16 kHz mono float32. A source is any fsspec URI (local paths are opened directly) or the file's bytes (e.g. a
WebDataset member), read from memory.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, Literal

import av
import fsspec
import numpy as np
import PIL.Image
import soundfile

from avsync_ray.media.audio import TARGET_SAMPLE_RATE, StreamingResampler, resample, to_mono
from avsync_ray.media.errors import MediaError, MediaErrorReason, source_name
from avsync_ray.storage import uri_prefix

Source = str | bytes
FrameSelection = Literal["nearest", "next"]
# Frames whose timestamps differ by less than this are the same instant (guards float round-off of k/fps).
_TIME_EPS = 1e-6
# Seek this far before the start (to a keyframe at or before it); nearer starts are read from the beginning.
_SEEK_PREROLL = 1.0
_SAMPLE_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}
# x264 settings every encode uses, for bytes that repeat across processes (see ``encode_mp4``).
X264_PARAMS = "mbtree=0"


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


# --------------------------------------------------------------------------------------------- opening


def _check_source(uri: Source):
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


def _open_container(uri: Source):
    fs, path, size = _check_source(uri)
    if fs is None:
        file = io.BytesIO(uri)
    else:  # local files are read by FFmpeg directly; remote ones through fsspec's seekable file object
        file = fs.open(path, "rb") if uri_prefix(fs) else path
    try:
        return av.open(file, mode="r", metadata_errors="ignore"), size
    except av.FFmpegError as exc:
        # An mp4 cut before its index (moov written last) is the common form of a truncated download.
        reason = MediaErrorReason.TRUNCATED if "moov atom not found" in str(exc) else MediaErrorReason.CORRUPT
        raise MediaError(uri, reason, f"cannot open container: {exc}") from None


def _seconds(value, time_base) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _info(uri: Source, container, size: int) -> MediaInfo:
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


def probe(uri: Source) -> MediaInfo:
    """Streams, duration, frame rate and sizes of a media file, without decoding."""
    container, size = _open_container(uri)
    with container:
        return _info(uri, container, size)


# --------------------------------------------------------------------------------------------- decoding


def _audio_frame_to_float(frame: av.AudioFrame) -> np.ndarray:
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
        return t if self.end is None or t < self.end - _TIME_EPS else None

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
            if time >= self.start - _TIME_EPS and (self.end is None or time < self.end - _TIME_EPS):
                self._take(time, time, frame)
            return
        while (target := self._target()) is not None:
            if self.selection == "next":
                if time < target - _TIME_EPS:
                    break
                self._take(target, time, frame)
                continue
            if time < target - _TIME_EPS:  # a later frame may still be nearer
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
        while (target := self._target()) is not None and target < last_time + frame_duration - _TIME_EPS:
            if self.selection == "next" and target > last_time + _TIME_EPS:
                break
            self._take(target, last_time, last_frame)


def _check_complete(uri: Source, stream: str, reached: float, declared: float | None) -> None:
    """A stream read to its end must reach (about) the duration the container declares."""
    if declared and reached < declared - max(0.5, 0.05 * declared):
        raise MediaError(uri, MediaErrorReason.TRUNCATED, f"{stream} stream ends at {reached:.3f} s of a declared {declared:.3f} s")


class _Demuxer:
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
) -> DecodedAV:
    """Decode ``[start, end)`` of a file in one pass: RGB uint8 frames and mono float32 audio.

    Args:
        fps: sample frames at ``start + k / fps``; ``None`` returns every source frame.
        size: ``None`` (source size), an int (short side) or ``(height, width)``.
        end: ``None`` reads to the end of the streams. A window that the file does not cover is an error.
        frame_selection: ``"nearest"`` takes the frame whose timestamp is nearest each grid time (the sync
            classifier's rule); ``"next"`` takes the first frame at or after it (the official AVSyncD loader).
        sample_rate: audio is resampled (band-limited sinc) to this rate after a proper channel mean.

    Raises:
        MediaError: missing, empty, corrupt or truncated files, a missing requested stream, or a window
            outside the media.
    """
    kwargs = dict(fps=fps, size=size, start=start, end=end, video=video, audio=audio,
                  frame_selection=frame_selection, sample_rate=sample_rate, interpolation=interpolation)  # fmt: skip
    try:
        return _decode(uri, seek=start > _SEEK_PREROLL, **kwargs)
    except _SeekOvershoot:  # imprecise seeking (e.g. MPEG program streams): read from the beginning instead
        return _decode(uri, seek=False, **kwargs)


def _streams(uri: Source, container, info: MediaInfo, video: bool, audio: bool, start: float) -> list:
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


def _rgb_converter(size, info: MediaInfo, interpolation: str):
    """``frame -> RGB uint8 (H, W, 3)`` at the decode's size (see :func:`_output_size`)."""
    out_size = _output_size(size, info.video.width, info.video.height)

    def to_rgb(frame: av.VideoFrame) -> np.ndarray:
        if out_size is None:
            return frame.to_ndarray(format="rgb24")
        return frame.reformat(width=out_size[0], height=out_size[1], format="rgb24", interpolation=interpolation).to_ndarray()

    return to_rgb


def _check_decoded(uri: Source, demuxer: "_Demuxer", decoded_anything) -> None:
    if demuxer.error and not decoded_anything:
        raise MediaError(uri, MediaErrorReason.CORRUPT, f"decode failed: {demuxer.error}")


def _audio_origin(start: float, first_frame_time: float, rate: int) -> tuple[int, float]:
    """(native samples of the first decoded audio frame to drop, time of the first kept sample)."""
    first = max(0, round((start - first_frame_time) * rate))
    return first, first_frame_time + first / rate


def _check_finite(uri: Source, finite: bool) -> None:
    if not finite:  # float WAV/FLAC can hold NaN or infinity; no model may see them
        raise MediaError(uri, MediaErrorReason.CORRUPT, "the audio holds NaN or infinite samples")


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
) -> DecodedAV:
    if end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if not (video or audio):
        raise ValueError("nothing to decode: both video and audio are False")
    container, size_bytes = _open_container(uri)
    with container:
        info = _info(uri, container, size_bytes)
        streams = _streams(uri, container, info, video, audio, start)
        if seek:
            container.seek(int((info.start_time + start - _SEEK_PREROLL) * av.time_base), backward=True)
        to_rgb = _rgb_converter(size, info, interpolation) if video else None
        sampler = _FrameSampler(start, end, fps, frame_selection, to_rgb)
        audio_chunks: list[np.ndarray] = []
        audio_t0: float | None = None
        audio_rate = info.audio.sample_rate if audio else 0
        video_done, audio_done = not video, not audio
        demuxer = _Demuxer(container, streams)
        for frame in demuxer:
            if frame.time is None:
                continue
            time = frame.time - info.start_time
            is_video = isinstance(frame, av.VideoFrame)
            if seek and time > start + _TIME_EPS and not (sampler.decoded if is_video else audio_chunks):
                raise _SeekOvershoot
            if is_video:
                if video_done:
                    continue
                sampler.push(time, frame)
                past_end = end is not None and time >= end + (1.0 / fps if fps else 0.0)
                video_done = sampler.done or past_end
            elif not audio_done:
                if time + frame.samples / frame.sample_rate <= start:
                    continue
                if end is not None and time >= end:
                    audio_done = True
                    continue
                if audio_t0 is None:
                    audio_t0 = time
                audio_chunks.append(_audio_frame_to_float(frame))
            if video_done and audio_done:
                break
        rate = info.video.fps if video and info.video.fps else 25.0
        sampler.finish(1.0 / rate)

    if demuxer.error and seek:
        raise _SeekOvershoot
    _check_decoded(uri, demuxer, sampler.decoded or audio_chunks)
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
            _check_complete(uri, "video", sampler.previous[0] + 1.0 / rate, info.video.duration or info.duration)
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
        native = np.concatenate(audio_chunks, axis=1)
        first, audio_start = _audio_origin(start, audio_t0, audio_rate)
        last = native.shape[1] if covered_end == math.inf else min(native.shape[1], first + round((covered_end - audio_start) * audio_rate))
        mono = to_mono(native[:, first:last])
        _check_finite(uri, bool(mono.isfinite().all()))
        waveform = resample(mono, audio_rate, sample_rate).numpy().astype(np.float32, copy=False)
        if covered_end == math.inf:
            covered_end = audio_start + len(waveform) / sample_rate
            _check_complete(uri, "audio", covered_end, info.audio.duration or info.duration)
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


@dataclass(frozen=True)
class VideoFrameItem:
    """A decoded source frame of a whole-file pass: its number among the kept frames, its timestamp, and its
    RGB pixels at the reader's size on demand (converting only the frames a consumer keeps is most of the saving)."""

    index: int
    time: float
    frame: av.VideoFrame
    to_rgb: Callable[[av.VideoFrame], np.ndarray]

    def rgb(self) -> np.ndarray:
        return self.to_rgb(self.frame)


@dataclass(frozen=True)
class AudioBlock:
    """The next audio samples at the reader's sample rate: ``samples[i]`` is track sample ``offset + i``."""

    offset: int
    samples: np.ndarray


@dataclass(frozen=True)
class WholeFileSummary:
    """What a whole-file pass found: every kept frame's timestamp, the decoded frame count, where the video (and so
    the audio a decode keeps) ends, and the time of the first audio sample."""

    frame_times: np.ndarray
    num_decoded_frames: int
    video_end: float
    audio_start: float


class WholeFileReader:
    """Every video frame and the whole audio track of a file in one pass, in file order, without holding them.

    For consumers whose memory must not grow with the file (curation's passes over an hour-long source): the
    frames, their timestamps, the audio samples and the errors raised are those of
    ``decode(uri, fps=None, size=size)``, which holds the whole file instead (``tests/test_media.py`` compares
    them). Iterating yields a :class:`VideoFrameItem` per decoded frame at or after t=0 and, once ``video_end`` is
    known (a first pass's :attr:`summary`, which ends the audio as a decode does), :class:`AudioBlock`s of the
    track resampled to ``sample_rate`` (bit-identical to resampling it whole: :class:`StreamingResampler`).
    Without ``video_end`` the audio is only checked. After the iteration, :attr:`summary` holds what it found.
    """

    def __init__(self, uri: Source, *, size: int | tuple[int, int] | None = None, video_end: float | None = None,
                 sample_rate: int = TARGET_SAMPLE_RATE, interpolation: str = "AREA"):  # fmt: skip
        self.uri, self.size, self.video_end, self.sample_rate, self.interpolation = uri, size, video_end, sample_rate, interpolation
        self.summary: WholeFileSummary | None = None

    def __iter__(self) -> Iterator[VideoFrameItem | AudioBlock]:
        uri = self.uri
        container, size_bytes = _open_container(uri)
        with container:
            info = _info(uri, container, size_bytes)
            demuxer = _Demuxer(container, _streams(uri, container, info, True, True, 0.0))
            to_rgb = _rgb_converter(self.size, info, self.interpolation)
            rate, audio_rate = info.video.fps or 25.0, info.audio.sample_rate
            times: list[float] = []
            decoded, last_decoded = 0, None
            resampler = StreamingResampler(audio_rate, self.sample_rate) if self.video_end is not None else None
            first = limit = None  # native samples to drop at the start; the native sample the audio stops at
            native_seen, audio_offset, nonfinite_at = 0, 0, math.inf  # the first NaN/inf native sample
            for frame in demuxer:
                if frame.time is None:
                    continue
                time = frame.time - info.start_time
                if isinstance(frame, av.VideoFrame):
                    decoded, last_decoded = decoded + 1, time
                    if time >= -_TIME_EPS:  # what decode(fps=None) keeps of [0, end of stream)
                        times.append(time)
                        yield VideoFrameItem(len(times) - 1, time, frame, to_rgb)
                    continue
                if time + frame.samples / frame.sample_rate <= 0.0:
                    continue
                if first is None:
                    first, audio_start = _audio_origin(0.0, time, audio_rate)
                    if self.video_end is not None:
                        limit = first + round((self.video_end - audio_start) * audio_rate)
                data = _audio_frame_to_float(frame)
                lo, hi = max(first - native_seen, 0), data.shape[1] if limit is None else min(data.shape[1], limit - native_seen)
                native_seen += data.shape[1]
                if hi <= lo:
                    continue
                mono = to_mono(data[:, lo:hi])
                if nonfinite_at == math.inf and not bool(mono.isfinite().all()):
                    nonfinite_at = native_seen - data.shape[1] + lo + int(np.argmin(mono.isfinite().numpy()))
                if resampler is not None:
                    out = resampler.push(mono)
                    if len(out):
                        yield AudioBlock(audio_offset, out.numpy())
                        audio_offset += len(out)
        _check_decoded(uri, demuxer, decoded or first is not None)
        if not times:
            raise MediaError(uri, MediaErrorReason.TRUNCATED, "no video frame in [0.000, None) s")
        _check_complete(uri, "video", last_decoded + 1.0 / rate, info.video.duration or info.duration)
        if first is None:
            raise MediaError(uri, MediaErrorReason.TRUNCATED, "no audio in [0.000, None) s")
        video_end = times[-1] + 1.0 / rate
        # A decode keeps the audio up to the video's end; only a NaN/inf before it counts.
        _check_finite(uri, nonfinite_at >= first + round((video_end - audio_start) * audio_rate))
        if resampler is not None:
            out = resampler.finish()
            if len(out):
                yield AudioBlock(audio_offset, out.numpy())
        self.summary = WholeFileSummary(np.asarray(times, dtype=np.float64), decoded, video_end, float(audio_start))


def load_audio(uri: Source, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """The whole audio track of any file PyAV reads (audio-only or video), as mono float32 at ``sample_rate``."""
    return decode(uri, video=False, audio=True, sample_rate=sample_rate).audio


@dataclass(frozen=True)
class ImageInfo:
    format_name: str
    width: int
    height: int


def _open_image(uri: Source):
    return io.BytesIO(uri) if isinstance(uri, bytes) else fsspec.open(str(uri), "rb").open()


def probe_image(uri: Source) -> ImageInfo:
    """Format and size of an image (any format Pillow reads) from its header, without decoding the pixels."""
    _check_source(uri)
    try:
        with _open_image(uri) as handle, PIL.Image.open(handle) as image:
            return ImageInfo(image.format or "unknown", *image.size)
    except PIL.Image.DecompressionBombError as exc:
        raise MediaError(uri, MediaErrorReason.TOO_LARGE, str(exc)) from None
    except PIL.UnidentifiedImageError:
        raise MediaError(uri, MediaErrorReason.CORRUPT, "not an image Pillow reads, such as PNG, JPEG, WebP, GIF, BMP or TIFF") from None
    except OSError as exc:
        raise MediaError(uri, MediaErrorReason.CORRUPT, f"unreadable image: {exc}") from None


def load_image(uri: Source) -> np.ndarray:
    """An image file or its bytes (any format Pillow reads), or else the first frame of a video, as RGB uint8 (H, W, 3)."""
    _check_source(uri)
    try:
        with _open_image(uri) as handle:
            return np.asarray(PIL.Image.open(handle).convert("RGB"))
    except PIL.UnidentifiedImageError:
        return decode(uri, audio=False, fps=None, end=None).frames[0]


# --------------------------------------------------------------------------------------------- encoding


def _write(data: bytes, path: str | None) -> bytes:
    if path is not None:
        with fsspec.open(str(path), "wb") as handle:
            handle.write(data)
    return data


def encode_mp4(
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = TARGET_SAMPLE_RATE,
    path: str | None = None,
    *,
    crf: int = 18,
    preset: str = "medium",
    audio_bitrate: int = 128_000,
) -> bytes:
    """H.264 (yuv420p) video with AAC mono audio muxed in; returns the bytes and writes them to ``path`` if given.

    Args:
        frames: RGB uint8, shape (T, H, W, 3), even H and W.
        audio: mono float32 samples in [-1, 1] at ``sample_rate``, or None for a silent video.
        crf, preset: x264 quality (lower is better) and speed/size trade-off ("ultrafast" ... "veryslow").

    The same input always gives the same bytes, in any process: the encoder runs single-threaded, and x264's
    macroblock tree is off (``mbtree=0``). With it on, on a CPU with AVX-512, the same frames gave different
    bytes from one call (and one process) to the next; with mbtree off, or x264 limited to AVX2, they did not,
    which points at x264's AVX-512 macroblock-tree code. Without it a clip is about 7 % smaller at about 0.6 dB
    lower PSNR for the same ``crf`` (measured on ``tears_of_steel_clip01.mp4``).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    with Mp4Encoder(fps, with_audio=audio is not None, sample_rate=sample_rate, crf=crf, preset=preset, audio_bitrate=audio_bitrate) as encoder:
        encoder.add(frames)
        return _write(encoder.finish(audio), path)


class Mp4Encoder:
    """:func:`encode_mp4` for frames that arrive a few at a time (a long clip never held whole): ``add`` them in
    order, then ``finish`` with the clip's audio; the same frames and audio give the same bytes as
    :func:`encode_mp4`. Use as a context manager (it owns a temporary file)."""

    def __init__(self, fps: float, *, with_audio: bool, sample_rate: int = TARGET_SAMPLE_RATE, crf: int = 18,
                 preset: str = "medium", audio_bitrate: int = 128_000):  # fmt: skip
        self.fps, self.with_audio, self.sample_rate = fps, with_audio, sample_rate
        self.crf, self.preset, self.audio_bitrate = crf, preset, audio_bitrate
        self.container = self.video_stream = None
        self.count = 0

    def __enter__(self) -> "Mp4Encoder":
        self.tmp = tempfile.TemporaryDirectory(prefix="avsync-mp4-")
        self.local = os.path.join(self.tmp.name, "out.mp4")
        return self

    def __exit__(self, *exc) -> None:
        if self.container is not None:
            self.container.close()
        self.tmp.cleanup()

    def _open(self, height: int, width: int) -> None:
        # faststart (a second pass over a real file) puts the index first: the mp4 streams over HTTP and a
        # cut copy still opens.
        self.container = av.open(self.local, mode="w", format="mp4", options={"movflags": "+faststart"})
        self.video_stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self.video_stream.width, self.video_stream.height, self.video_stream.pix_fmt = width, height, "yuv420p"
        self.video_stream.options = {"crf": str(self.crf), "preset": self.preset, "threads": "1", "x264-params": X264_PARAMS}
        self.audio_stream = None
        if self.with_audio:
            self.audio_stream = self.container.add_stream("aac", rate=int(self.sample_rate), layout="mono")
            self.audio_stream.bit_rate = self.audio_bitrate

    def add(self, frames: np.ndarray) -> None:
        """The next RGB uint8 frames, (T, H, W, 3) with even H and W (the first ones fix the size)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise ValueError(f"H.264 yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}")
        if self.container is None:
            self._open(*frames.shape[1:3])
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.count
            self.count += 1
            self.container.mux(self.video_stream.encode(frame))

    def finish(self, audio: np.ndarray | None = None) -> bytes:
        """Flush the video, mux ``audio`` (mono float32 in [-1, 1], given iff ``with_audio``) and return the mp4."""
        if self.container is None:
            raise ValueError("an mp4 needs at least one frame")
        self.container.mux(self.video_stream.encode(None))
        if self.audio_stream is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate, frame.pts = int(self.sample_rate), 0
            self.container.mux(self.audio_stream.encode(frame))
            self.container.mux(self.audio_stream.encode(None))
        self.container.close()
        self.container = self.video_stream = self.audio_stream = None  # the codec contexts (x264's buffers) go too
        with open(self.local, "rb") as handle:
            return handle.read()


def encode_wav(audio: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE, path: str | None = None) -> bytes:
    """Mono 16-bit PCM WAV bytes (written to ``path`` if given)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), int(sample_rate), subtype="PCM_16", format="WAV")
    return _write(buffer.getvalue(), path)
