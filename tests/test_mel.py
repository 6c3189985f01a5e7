"""The ImageBind/Kaldi mel front end (reference §3.4) on real and constructed audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from avsync_ray.media import DEFAULT_MEL, load_audio, resample, waveform_to_mel

PAD_VALUE = (0.0 + 4.268) / 9.138  # a zero-padded fbank cell after normalisation


def reference_mel(waveform_16k: torch.Tensor) -> torch.Tensor:
    """The reference recipe written out step by step with torchaudio's Kaldi fbank."""
    if waveform_16k.shape[-1] > 32_000:
        start = (waveform_16k.shape[-1] - 32_000) // 2
        waveform_16k = waveform_16k[start : start + 32_000]
    centred = (waveform_16k - waveform_16k.mean()).unsqueeze(0)
    fbank = torchaudio.compliance.kaldi.fbank(
        centred, htk_compat=True, sample_frequency=16_000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
    ).T  # fmt: skip
    fbank = torch.nn.functional.pad(fbank, (0, max(0, 204 - fbank.shape[1])))[:, :204]
    return ((fbank - (-4.268)) / 9.138).unsqueeze(0)


@pytest.fixture(scope="module")
def drum_roll(media_dir) -> np.ndarray:
    return load_audio(str(media_dir / "audio_sfx" / "sonicpi_drum_roll.flac"))  # 6.24 s, 44.1 kHz source


def test_shape_and_recipe_on_real_audio(drum_roll):
    mel = waveform_to_mel(drum_roll, 16_000)
    assert mel.shape == (1, 128, 204) and mel.dtype == torch.float32
    torch.testing.assert_close(mel, reference_mel(torch.from_numpy(drum_roll)))


def test_two_seconds_give_198_frames_then_padding(drum_roll):
    mel = waveform_to_mel(drum_roll[:32_000], 16_000)
    padded = mel[0, :, 198:]
    assert torch.allclose(padded, torch.full_like(padded, PAD_VALUE))
    assert not torch.allclose(mel[0, :, 197], torch.full_like(mel[0, :, 197], PAD_VALUE))


def test_short_audio_is_padded_not_stretched(media_dir):
    snare = load_audio(str(media_dir / "audio_sfx" / "sonicpi_drum_snare_hard.flac"))  # 0.445 s
    mel = waveform_to_mel(snare, 16_000)
    frames = 1 + (len(snare) - 400) // 160
    assert torch.allclose(mel[0, :, frames:], torch.full_like(mel[0, :, frames:], PAD_VALUE))
    torch.testing.assert_close(mel, reference_mel(torch.from_numpy(snare)))


def test_long_audio_uses_the_centred_two_seconds(media_dir):
    speech = load_audio(str(media_dir / "audio_speech" / "jfk.flac"))  # 11 s, 44.1 kHz stereo source
    start = (len(speech) - 32_000) // 2
    torch.testing.assert_close(waveform_to_mel(speech, 16_000), waveform_to_mel(speech[start : start + 32_000], 16_000))


def test_other_sample_rates_are_resampled_first(media_dir):
    import soundfile

    native, rate = soundfile.read(media_dir / "audio_sfx" / "sonicpi_drum_roll.flac", dtype="float32")
    assert rate == 44_100
    expected = reference_mel(torchaudio.functional.resample(torch.from_numpy(native), 44_100, 16_000))
    torch.testing.assert_close(waveform_to_mel(native, 44_100), expected)
    torch.testing.assert_close(resample(native, 44_100), torchaudio.functional.resample(torch.from_numpy(native), 44_100, 16_000))


def test_batched_equals_single_and_input_is_not_mutated(drum_roll):
    batch = torch.from_numpy(np.stack([drum_roll[:40_000], drum_roll[40_000:80_000]]))
    before = batch.clone()
    mels = waveform_to_mel(batch, 16_000)
    assert torch.equal(batch, before)
    assert mels.shape == (2, 1, 128, 204)
    for i in range(2):
        torch.testing.assert_close(mels[i], waveform_to_mel(batch[i], 16_000))


def test_too_short_or_wrong_rank_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 400"):
        waveform_to_mel(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        waveform_to_mel(np.zeros((2, 2, 100), dtype=np.float32))
    assert DEFAULT_MEL.shape == (1, 128, 204)
