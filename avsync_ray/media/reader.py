"""The streaming whole-file reader: every frame and the whole audio track of a file in passes that never hold
it, for consumers whose memory must not grow with the file (curation's scan of an hour-long source).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import av
import numpy as np

from avsync_ray.media.audio import TARGET_SAMPLE_RATE, StreamingResampler, to_mono
from avsync_ray.media.container import (
    TIME_EPS,
    Demuxer,
    Source,
    audio_frame_to_float,
    audio_origin,
    check_complete,
    check_decoded,
    check_finite,
    media_info,
    open_container,
    rgb_converter,
    select_streams,
)
from avsync_ray.media.errors import MediaError, MediaErrorReason


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
        container, size_bytes = open_container(uri)
        with container:
            info = media_info(uri, container, size_bytes)
            demuxer = Demuxer(container, select_streams(uri, container, info, True, True, 0.0))
            to_rgb = rgb_converter(self.size, info, self.interpolation)
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
                    if time >= -TIME_EPS:  # what decode(fps=None) keeps of [0, end of stream)
                        times.append(time)
                        yield VideoFrameItem(len(times) - 1, time, frame, to_rgb)
                    continue
                if time + frame.samples / frame.sample_rate <= 0.0:
                    continue
                if first is None:
                    first, audio_start = audio_origin(0.0, time, audio_rate)
                    if self.video_end is not None:
                        limit = first + round((self.video_end - audio_start) * audio_rate)
                data = audio_frame_to_float(frame)
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
        check_decoded(uri, demuxer, decoded or first is not None)
        if not times:
            raise MediaError(uri, MediaErrorReason.TRUNCATED, "no video frame in [0.000, None) s")
        check_complete(uri, "video", last_decoded + 1.0 / rate, info.video.duration or info.duration)
        if first is None:
            raise MediaError(uri, MediaErrorReason.TRUNCATED, "no audio in [0.000, None) s")
        video_end = times[-1] + 1.0 / rate
        # A decode keeps the audio up to the video's end; only a NaN/inf before it counts.
        check_finite(uri, nonfinite_at >= first + round((video_end - audio_start) * audio_rate))
        if resampler is not None:
            out = resampler.finish()
            if len(out):
                yield AudioBlock(audio_offset, out.numpy())
        self.summary = WholeFileSummary(np.asarray(times, dtype=np.float64), decoded, video_end, float(audio_start))
