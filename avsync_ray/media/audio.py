"""Waveform utilities and the ImageBind/Kaldi mel front end used by AVSyncD and the sync classifier.

Pure tensor code: no file I/O here (decoding lives in :mod:`avsync_ray.media.io`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

TARGET_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class MelConfig:
    """The ImageBind audio front end (reference §3.4). Every field is the official value."""

    sample_rate: int = TARGET_SAMPLE_RATE
    clip_duration_s: float = 2.0
    num_mel_bins: int = 128
    target_length: int = 204
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    mean: float = -4.268
    std: float = 9.138

    @property
    def clip_samples(self) -> int:
        return int(self.clip_duration_s * self.sample_rate)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.num_mel_bins, self.target_length)

    @property
    def null_value(self) -> float:
        """The normalised value of an all-zero (padded) fbank cell."""
        return (0.0 - self.mean) / self.std


DEFAULT_MEL = MelConfig()


def _as_tensor(waveform) -> torch.Tensor:
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(waveform).__name__}")
    return waveform


def to_mono(waveform, channels_first: bool = True) -> torch.Tensor:
    """Average the channels of a (channels, samples) waveform; 1-D input is returned as is.

    The official loaders reshape interleaved (samples, channels) audio with ``view`` and then keep
    channel 0, which scrambles stereo; this is a proper channel mean.
    """
    waveform = _as_tensor(waveform)
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise ValueError(f"expected (channels, samples) or (samples,), got shape {tuple(waveform.shape)}")
    return waveform.float().mean(dim=0 if channels_first else 1)


def resample(waveform, orig_sample_rate: int, new_sample_rate: int = TARGET_SAMPLE_RATE) -> torch.Tensor:
    """Band-limited sinc resampling along the last axis (torchaudio's, as the official code uses)."""
    waveform = _as_tensor(waveform).float()
    if int(orig_sample_rate) == int(new_sample_rate):
        return waveform
    return torchaudio.functional.resample(waveform, int(orig_sample_rate), int(new_sample_rate))


def center_crop(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Keep the centred ``num_samples`` of the last axis; shorter input is returned unpadded (official rule)."""
    length = waveform.shape[-1]
    if length <= num_samples:
        return waveform
    start = (length - num_samples) // 2
    return waveform[..., start : start + num_samples]


def _fbank(waveform: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """Kaldi fbank of one 1-D waveform -> (num_mel_bins, target_length), padded with 0 or cropped."""
    min_samples = int(config.sample_rate * config.frame_length_ms / 1000)
    if waveform.shape[-1] < min_samples:
        raise ValueError(
            f"waveform has {waveform.shape[-1]} samples; the mel front end needs at least {min_samples} "
            f"({config.frame_length_ms} ms at {config.sample_rate} Hz)"
        )
    centred = (waveform - waveform.mean()).unsqueeze(0)
    fbank = torchaudio.compliance.kaldi.fbank(
        centred,
        htk_compat=True,
        sample_frequency=config.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=config.num_mel_bins,
        dither=0.0,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
    ).transpose(0, 1)
    pad = config.target_length - fbank.shape[1]
    if pad > 0:
        fbank = torch.nn.functional.pad(fbank, (0, pad), value=0.0)
    return fbank[:, : config.target_length]


def waveform_to_mel(waveform, sample_rate: int = TARGET_SAMPLE_RATE, config: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """ImageBind's normalised log-mel spectrogram of the centre ``config.clip_duration_s`` seconds.

    Args:
        waveform: mono audio, shape ``(samples,)`` -> returns ``(1, 128, 204)``, or a batch
            ``(batch, samples)`` -> returns ``(batch, 1, 128, 204)``. Never modified in place.
        sample_rate: rate of ``waveform``; other rates are resampled to ``config.sample_rate`` first.
    """
    waveform = _as_tensor(waveform)
    if waveform.ndim not in (1, 2):
        raise ValueError(f"expected (samples,) or (batch, samples) mono audio, got shape {tuple(waveform.shape)}")
    batched = waveform.ndim == 2
    clips = center_crop(resample(waveform.float(), sample_rate, config.sample_rate), config.clip_samples)
    clips = clips if batched else clips.unsqueeze(0)
    mels = torch.stack([_fbank(clip, config) for clip in clips]).unsqueeze(1)
    mels = (mels - config.mean) / config.std
    return mels if batched else mels[0]
