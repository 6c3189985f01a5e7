"""Waveform utilities and the ImageBind/Kaldi mel front end used by AVSyncD and the sync classifier.

Pure tensor code: no file I/O here (decoding lives in :mod:`avsync_ray.media.decoding`).
"""

from __future__ import annotations

import math
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


class StreamingResampler:
    """:func:`resample` of one long signal that arrives in pieces, sample for sample (bit for bit) what resampling
    the whole signal gives, in memory that does not grow with its length (curation's passes over a long source).

    torchaudio resamples with one strided convolution over the zero-padded signal; output block ``j`` (``new``
    samples after reducing the rates by their gcd) is a dot product of the kernel with ``padded[j*orig : j*orig +
    kernel]``. Torch's CPU convolution gives every output the same sum whatever the input's length and offset once
    the input is long enough (shorter inputs take another code path, whose sums differ in the last bit), so every
    convolution here sees at least ``MIN_CONV_INPUT`` samples; a signal shorter than that is resampled in one
    call, as a whole, like torchaudio's. ``tests/test_media.py`` checks the equality for the common rates."""

    MIN_CONV_INPUT = 2**17

    def __init__(self, orig_sample_rate: int, new_sample_rate: int = TARGET_SAMPLE_RATE):
        self.identity = int(orig_sample_rate) == int(new_sample_rate)
        self.length = 0
        if self.identity:
            return
        # torchaudio.functional.resample computes its kernel in the waveform's dtype; the transform does the same
        # when given that dtype.
        transform = torchaudio.transforms.Resample(int(orig_sample_rate), int(new_sample_rate), dtype=torch.float32)
        self.orig, self.new = int(orig_sample_rate) // transform.gcd, int(new_sample_rate) // transform.gcd
        self.kernel, self.width = transform.kernel, transform.width
        self.buffer = torch.zeros(self.width)  # the padded signal from padded index ``self.base`` on ...
        self.pending: list[torch.Tensor] = []  # ... followed by these pieces (joined when a convolution is due)
        self.pending_length = 0
        self.base = 0
        self.next_block = 0

    def _blocks(self, first: int, stop: int) -> torch.Tensor:
        """Output blocks ``first`` .. ``stop - 1`` in one convolution."""
        start = first * self.orig - self.base
        piece = self.buffer[start : start + (stop - 1 - first) * self.orig + self.kernel.shape[-1]]
        return torch.nn.functional.conv1d(piece[None, None], self.kernel, stride=self.orig)[0].T.reshape(-1)

    def push(self, samples) -> torch.Tensor:
        """Add the next samples; returns the output samples they complete (possibly none)."""
        samples = _as_tensor(samples).float()
        if self.identity:
            self.length += len(samples)
            return samples
        self.pending.append(samples)
        self.pending_length += len(samples)
        self.length += len(samples)
        stop = (self.base + len(self.buffer) + self.pending_length - self.kernel.shape[-1]) // self.orig + 1
        if (stop - 1 - self.next_block) * self.orig + self.kernel.shape[-1] < self.MIN_CONV_INPUT:
            return torch.zeros(0)
        self._join()
        out = self._blocks(self.next_block, stop)
        self.next_block = stop
        # Keep MIN_CONV_INPUT samples before the next block, so the last convolution can be that long too.
        keep = max(self.base, self.next_block * self.orig - -(-self.MIN_CONV_INPUT // self.orig) * self.orig)
        self.buffer, self.base = self.buffer[keep - self.base :], keep
        return out

    def _join(self) -> None:
        self.buffer = torch.cat([self.buffer, *self.pending])
        self.pending, self.pending_length = [], 0

    def finish(self) -> torch.Tensor:
        """The remaining output samples (the signal has ended): ``ceil(length * new / orig)`` in all."""
        if self.identity:
            return torch.zeros(0)
        self.pending.append(torch.zeros(self.width + self.orig))
        self._join()
        stop = self.length // self.orig + 1
        end = (stop - 1) * self.orig + self.kernel.shape[-1]  # padded index after the last block's input
        first = min(self.next_block, max(self.base // self.orig, -(-(end - self.MIN_CONV_INPUT) // self.orig)))
        out = self._blocks(first, stop)[(self.next_block - first) * self.new :]
        total = math.ceil(self.new * self.length / self.orig)
        return out[: total - self.next_block * self.new]


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
