"""Media I/O: the only package that touches PyAV (probe, one-pass decode, mp4/wav encode) and the mel front end."""

from avsync_ray.media.audio import DEFAULT_MEL, TARGET_SAMPLE_RATE, MelConfig, resample, to_mono, waveform_to_mel
from avsync_ray.media.container import (
    AudioInfo,
    MediaInfo,
    MicrosecondTimestamps,
    VideoInfo,
    is_still_image,
    microsecond_timestamps,
    probe,
)
from avsync_ray.media.decoding import DecodedAV, DecodeLimits, decode, first_frame, load_audio
from avsync_ray.media.encoding import Mp4Encoder, encode_mp4, encode_wav
from avsync_ray.media.errors import MediaError, MediaErrorReason
from avsync_ray.media.images import ImageInfo, load_image, probe_image
from avsync_ray.media.reader import WholeFileReader

__all__ = [
    "DEFAULT_MEL",
    "TARGET_SAMPLE_RATE",
    "AudioInfo",
    "DecodeLimits",
    "DecodedAV",
    "ImageInfo",
    "MediaError",
    "MediaErrorReason",
    "MediaInfo",
    "MelConfig",
    "MicrosecondTimestamps",
    "Mp4Encoder",
    "VideoInfo",
    "WholeFileReader",
    "decode",
    "encode_mp4",
    "encode_wav",
    "first_frame",
    "is_still_image",
    "load_audio",
    "load_image",
    "microsecond_timestamps",
    "probe",
    "probe_image",
    "resample",
    "to_mono",
    "waveform_to_mel",
]
