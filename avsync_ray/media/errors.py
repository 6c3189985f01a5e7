"""The one exception every media failure becomes, with a machine-readable reason."""

from __future__ import annotations

from enum import Enum


class MediaErrorReason(str, Enum):
    NOT_FOUND = "not_found"
    ZERO_BYTES = "zero_bytes"
    CORRUPT = "corrupt"
    TRUNCATED = "truncated"
    NO_VIDEO_STREAM = "no_video_stream"
    NOT_A_VIDEO = "not_a_video"  # a readable file that is no video, e.g. a still image with a video file's name
    NO_AUDIO_STREAM = "no_audio_stream"
    OUT_OF_RANGE = "out_of_range"
    TOO_LARGE = "too_large"
    TOO_LONG = "too_long"


def source_name(source: str | bytes) -> str:
    """How messages name a source: its URI, or its size when it is the file's bytes in memory."""
    return f"<{len(source)} bytes in memory>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


class MediaError(Exception):
    """A media file that cannot be read as asked.

    ``reason`` is stable (ledgers and skip records group by it); ``detail`` is for people.
    """

    def __init__(self, uri: str | bytes, reason: MediaErrorReason, detail: str = ""):
        self.uri = source_name(uri)
        self.reason = MediaErrorReason(reason)
        self.detail = detail
        message = f"{self.uri}: {self.reason.value.replace('_', ' ')}"
        super().__init__(f"{message} ({detail})" if detail else message)

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.uri, self.reason, self.detail))
