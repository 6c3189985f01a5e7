"""Media I/O: probe and one-pass decode of real files, frame/sample exactness, typed errors, mp4/wav encode."""

from __future__ import annotations

import io

import av
import fsspec
import numpy as np
import pytest
import soundfile

from avsync_ray.media import MediaError, MediaErrorReason, decode, encode_mp4, encode_wav, load_audio, load_image, probe

# From ../shared/media/SOURCES.md (probed with PyAV 18.1): container duration, audio rate/channels, video.
REAL_MEDIA = {
    "av_speech_grid/bbaf2n.mpg": dict(duration=2.98, rate=44100, channels=2, video=("mpeg1video", 25.0, 360, 288)),
    "av_speech_grid/swiz3n.mpg": dict(duration=2.98, rate=44100, channels=2, video=("mpeg1video", 25.0, 360, 288)),
    "av_animation/big_buck_bunny_0_30.webm": dict(duration=30.003, rate=44100, channels=2, video=("vp8", 24.0, 1280, 720)),
    "video_scene_cuts/pyscenedetect_testvideo.mp4": dict(duration=24.023, rate=None, channels=None, video=("h264", 29.97, 1280, 720)),
    "video_scene_cuts/tears_of_steel_clip01.mp4": dict(duration=10.0, rate=None, channels=None, video=("h264", 24.0, 640, 360)),
    "video_scene_cuts/cityCC0.mpg": dict(duration=7.6, rate=None, channels=None, video=("mpeg2video", 25.0, 720, 405)),
    "audio_speech/jfk.flac": dict(duration=11.0, rate=44100, channels=2, video=None),
    "audio_speech/librispeech_198-209-0000.ogg": dict(duration=13.91, rate=22050, channels=1, video=None),
    "audio_sfx/sonicpi_drum_snare_hard.flac": dict(duration=0.445, rate=44100, channels=1, video=None),
    "audio_sfx/freedesktop_camera-shutter.oga": dict(duration=0.872, rate=96000, channels=2, video=None),
    "audio_sfx/glacier-bay-humpback.ogg": dict(duration=64.809, rate=22050, channels=1, video=None),
}


@pytest.mark.parametrize("name", sorted(REAL_MEDIA))
def test_probe_and_decode_real_media(media_dir, name):
    expected = REAL_MEDIA[name]
    uri = str(media_dir / name)
    info = probe(uri)
    assert info.duration == pytest.approx(expected["duration"], abs=0.01)
    if expected["video"]:
        codec, fps, width, height = expected["video"]
        assert (info.video.codec, info.video.width, info.video.height) == (codec, width, height)
        assert info.video.fps == pytest.approx(fps, rel=1e-3)
    else:
        assert info.video is None
    if expected["rate"]:
        assert (info.audio.sample_rate, info.audio.channels) == (expected["rate"], expected["channels"])
    else:
        assert info.audio is None

    has_video, has_audio = bool(expected["video"]), bool(expected["rate"])
    clip = decode(uri, fps=6 if has_video else None, size=64 if has_video else None, video=has_video, audio=has_audio)
    if has_video:
        assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] in {(64, 113, 3), (64, 114, 3), (64, 80, 3)}
        np.testing.assert_allclose(clip.frame_times, np.arange(len(clip.frames)) / 6)
        assert len(clip.frames) == int(np.ceil(expected["duration"] * 6 - 1e-6))
    if has_audio:
        assert clip.audio.dtype == np.float32 and clip.sample_rate == 16_000
        assert len(clip.audio) / 16_000 == pytest.approx(expected["duration"], abs=0.02)
        peak = np.abs(clip.audio).max()  # resampling may overshoot full scale a little (Gibbs)
        assert 0.01 < peak < 1.5


def test_decode_window_from_real_grid_clip(media_dir):
    uri = str(media_dir / "av_speech_grid" / "id2_vcd_swwp2s.mpg")
    clip = decode(uri, fps=6, start=0.5, end=2.5)
    assert clip.frames.shape == (12, 288, 360, 3)
    np.testing.assert_allclose(clip.frame_times, 0.5 + np.arange(12) / 6)
    # 25 fps source: the nearest frame to each grid time is at most half a frame period away.
    assert np.abs(clip.source_frame_times - clip.frame_times).max() <= 0.02 + 1e-9
    assert len(clip.audio) == pytest.approx(32_000, abs=2) and clip.audio_start == pytest.approx(0.5, abs=1 / 44100)


def test_stereo_becomes_the_channel_mean(tmp_path):
    """Opposite-phase channels must cancel; the official `view` reshape would interleave them instead."""
    rate, t = 16_000, np.arange(16_000) / 16_000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, -left], axis=1), rate, subtype="FLOAT")
    assert np.abs(load_audio(str(path))).max() < 1e-6
    soundfile.write(path, np.stack([left, left], axis=1), rate, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(str(path)), left, atol=1e-6)


def _indexed_video(path, fps=24, seconds=2, audio=True):
    """Frame k is a flat grey of value 5k, so decoded frames reveal which source frame they are."""
    frames = np.stack([np.full((32, 32, 3), 5 * k, dtype=np.uint8) for k in range(int(fps * seconds))])
    sound = (0.1 * np.sin(2 * np.pi * 220 * np.arange(16_000 * seconds) / 16_000)).astype(np.float32) if audio else None
    encode_mp4(frames, fps, sound, 16_000, str(path), crf=0)
    return frames


def _frame_ids(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / 5)) for f in frames]


def test_frame_sampling_is_exact_to_the_frame(tmp_path):
    path = tmp_path / "indexed.mp4"
    _indexed_video(path, fps=24)
    clip = decode(str(path), fps=6, start=0.5, end=1.5)
    assert _frame_ids(clip.frames) == [12, 16, 20, 24, 28, 32]
    assert clip.num_decoded_frames <= 48
    every = decode(str(path), fps=None, start=0.5, end=1.0, audio=False)
    assert _frame_ids(every.frames) == list(range(12, 24))
    # 25 fps grid on a 24 fps source: "next" takes the first frame at or after each time, "nearest" the closest.
    nearest = decode(str(path), fps=25, start=0.0, end=0.2, audio=False, frame_selection="nearest")
    following = decode(str(path), fps=25, start=0.0, end=0.2, audio=False, frame_selection="next")
    assert _frame_ids(nearest.frames) == [0, 1, 2, 3, 4]
    assert _frame_ids(following.frames) == [0, 1, 2, 3, 4]
    assert _frame_ids(decode(str(path), fps=24 / 1.5, end=0.5, audio=False, frame_selection="next").frames) == [0, 2, 3, 5, 6, 8, 9, 11]


def test_audio_window_is_exact_to_the_sample(tmp_path):
    rate = 16_000
    ramp = (np.arange(3 * rate) / (3 * rate)).astype(np.float32) * 0.9
    path = tmp_path / "ramp.wav"
    soundfile.write(path, ramp, rate, subtype="FLOAT")
    clip = decode(str(path), video=False, start=1.25, end=2.25)
    np.testing.assert_allclose(clip.audio, ramp[int(1.25 * rate) : int(2.25 * rate)], atol=1e-6)


def test_any_fsspec_uri(tmp_path):
    path = tmp_path / "clip.mp4"
    _indexed_video(path)
    memory_uri = "memory://avsync-test/clip.mp4"
    with fsspec.open(memory_uri, "wb") as handle:
        handle.write(path.read_bytes())
    local = decode(f"file://{path}", fps=6)
    remote = decode(memory_uri, fps=6)
    assert np.array_equal(local.frames, remote.frames) and np.array_equal(local.audio, remote.audio)
    assert probe(memory_uri).video.num_frames == 48


def test_bytes_in_memory_decode_like_the_file(tmp_path):
    """WebDataset members arrive as bytes: they decode exactly like the file, and fail with the same reasons."""
    path = tmp_path / "clip.mp4"
    _indexed_video(path)
    data = path.read_bytes()
    from_file, from_bytes = decode(str(path), fps=6, start=0.5), decode(data, fps=6, start=0.5)
    assert np.array_equal(from_file.frames, from_bytes.frames) and np.array_equal(from_file.audio, from_bytes.audio)
    assert probe(data).video.num_frames == 48 and probe(data).uri == f"<{len(data)} bytes in memory>"
    with pytest.raises(MediaError) as empty:
        decode(b"")
    assert empty.value.reason is MediaErrorReason.ZERO_BYTES
    with pytest.raises(MediaError) as garbage:
        decode(b"\x00\x01not a video at all" * 64)
    assert garbage.value.reason is MediaErrorReason.CORRUPT


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", MediaErrorReason.ZERO_BYTES), (b"\x00\x01not a video at all" * 64, MediaErrorReason.CORRUPT)],
)
def test_bad_files_raise_the_typed_error(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError) as error:
        decode(str(path), fps=6)
    assert error.value.reason == reason and str(path) in str(error.value)


def test_missing_streams_truncation_and_windows(tmp_path):
    silent = tmp_path / "silent.mp4"
    _indexed_video(silent, audio=False)
    with pytest.raises(MediaError) as error:
        decode(str(silent), fps=6)
    assert error.value.reason == MediaErrorReason.NO_AUDIO_STREAM
    sound = tmp_path / "sound.wav"
    sound.write_bytes(encode_wav(np.zeros(16_000, dtype=np.float32)))
    with pytest.raises(MediaError) as error:
        decode(str(sound), fps=6)
    assert error.value.reason == MediaErrorReason.NO_VIDEO_STREAM
    with pytest.raises(MediaError) as error:
        decode(str(tmp_path / "absent.mp4"))
    assert error.value.reason == MediaErrorReason.NOT_FOUND

    full = tmp_path / "full.mp4"
    _indexed_video(full)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MediaError) as error:
        decode(str(truncated), fps=6)
    assert error.value.reason == MediaErrorReason.TRUNCATED
    with pytest.raises(MediaError) as error:
        decode(str(full), fps=6, start=1.0, end=3.0)
    assert error.value.reason == MediaErrorReason.OUT_OF_RANGE


def test_media_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(MediaError("x.mp4", MediaErrorReason.TRUNCATED, "cut")))
    assert (error.uri, error.reason, error.detail) == ("x.mp4", MediaErrorReason.TRUNCATED, "cut")


def test_encode_mp4_muxes_h264_and_aac_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 64, 96, 3), dtype=np.uint8)
    audio = (0.3 * np.sin(2 * np.pi * 330 * np.arange(32_000) / 16_000)).astype(np.float32)
    data = encode_mp4(frames, 6, audio, 16_000, str(tmp_path / "out.mp4"))
    assert data == encode_mp4(frames, 6, audio, 16_000) == (tmp_path / "out.mp4").read_bytes()
    with av.open(io.BytesIO(data)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, sound.codec_context.name) == ("h264", "aac")
        assert video.frames == 12 and float(video.average_rate) == 6.0
        assert sound.codec_context.sample_rate == 16_000 and sound.codec_context.channels == 1
    clip = decode(str(tmp_path / "out.mp4"), fps=6)
    assert clip.frames.shape == (12, 64, 96, 3) and len(clip.audio) == pytest.approx(32_000, abs=1100)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames[:, :63], 6)


def test_encode_wav_round_trip():
    audio = np.linspace(-0.5, 0.5, 16_000, dtype=np.float32)
    data, rate = soundfile.read(io.BytesIO(encode_wav(audio)), dtype="float32")
    assert rate == 16_000 and np.abs(data - audio).max() < 1 / 2**14


def test_load_image_reads_pictures_and_videos(tmp_path):
    import PIL.Image

    picture = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    PIL.Image.fromarray(picture).save(tmp_path / "p.png")
    assert np.array_equal(load_image(str(tmp_path / "p.png")), picture)
    _indexed_video(tmp_path / "v.mp4")
    assert load_image(str(tmp_path / "v.mp4")).shape == (32, 32, 3)


def test_every_shared_media_file_decodes(media_dir):
    """Every audio/video file shipped in ../shared/media decodes in one pass, to its probed duration."""
    files = sorted(p for p in media_dir.rglob("*") if p.suffix in {".mpg", ".mp4", ".webm", ".flac", ".ogg", ".oga"})
    assert len(files) >= 30
    for path in files:
        info = probe(str(path))
        clip = decode(str(path), fps=6 if info.video else None, size=32 if info.video else None, video=bool(info.video), audio=bool(info.audio))
        if info.audio:
            assert len(clip.audio) / 16_000 == pytest.approx(info.audio.duration, abs=0.03), path.name
        if info.video:
            assert len(clip.frames) == pytest.approx(info.video.duration * 6, abs=1.01), path.name


_ENCODE_DIGEST = """
import hashlib, sys
from avsync_ray.media import decode, encode_mp4
clip = decode(sys.argv[1], fps=None, size=256, audio=False)
print(" ".join(hashlib.sha256(encode_mp4(clip.frames[:72], 24, crf=18, preset="faster")).hexdigest() for _ in range(2)))
"""


def test_encode_mp4_gives_the_same_bytes_in_separate_processes(media_dir):
    """Real footage (odd widths, motion), each encode in a fresh process where the first encode used to differ."""
    import subprocess
    import sys

    source = str(media_dir / "video_scene_cuts" / "tears_of_steel_clip01.mp4")
    runs = [subprocess.run([sys.executable, "-c", _ENCODE_DIGEST, source], capture_output=True, text=True, check=True).stdout.split() for _ in range(3)]
    assert len({digest for run in runs for digest in run}) == 1, runs


# ------------------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("rate", [8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 96_000])
def test_streaming_resampler_equals_resampling_the_whole_signal(rate):
    """Bit for bit, for signals shorter and longer than one convolution's input, fed in pieces of any size."""
    import torch
    import torchaudio

    from avsync_ray.media.audio import StreamingResampler

    rng = np.random.default_rng(rate)
    for length in (0, 5, 20_000, StreamingResampler.MIN_CONV_INPUT + 1, 700_003):
        signal = torch.from_numpy(rng.standard_normal(length).astype(np.float32))
        whole = torchaudio.functional.resample(signal, rate, 16_000) if length else torch.zeros(0)
        for piece in (1_000, 65_536, 10**6):
            resampler = StreamingResampler(rate)
            streamed = torch.cat([resampler.push(signal[i : i + piece]) for i in range(0, length, piece)] + [resampler.finish()])
            assert streamed.shape == whole.shape and torch.equal(streamed, whole), (length, piece)


def _stream(path, size=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """(frames, their times, 16 kHz audio, summary) of two whole-file passes, as curation makes them."""
    from avsync_ray.media.reader import AudioBlock, WholeFileReader

    first = WholeFileReader(str(path), size=size)
    frames = [item.rgb() for item in first]
    second = WholeFileReader(str(path), size=size, video_end=first.summary.video_end)
    audio = []
    for item in second:
        if isinstance(item, AudioBlock):
            assert item.offset == sum(len(block) for block in audio)
            audio.append(item.samples)
    return np.stack(frames), first.summary.frame_times, np.concatenate(audio), first.summary


def _long_stereo_video(path, rate: int) -> None:
    """40 s of stereo at `rate` with distinct channels: several of the resampler's convolutions."""
    from avsync_ray.synth import bouncing_ball

    clip = bouncing_ball(duration=40.0, fps=8, size=(48, 64), hit_times=(5.0, 23.0, 31.0), seed=9)
    t = np.arange(int(40.0 * rate)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 97 * t)]).astype(np.float32)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="stereo")
        for image in clip.frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        for start in range(0, stereo.shape[1], rate):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, start : start + rate]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))


def _check_passes_equal_decode(paths) -> None:
    for path in paths:
        frames, times, audio, summary = _stream(path, size=64)
        whole = decode(str(path), fps=None, size=64)
        np.testing.assert_array_equal(frames, whole.frames)
        np.testing.assert_array_equal(times, whole.source_frame_times)
        assert audio.dtype == whole.audio.dtype and np.array_equal(audio, whole.audio), path.name
        assert (summary.num_decoded_frames, summary.audio_start, summary.video_end) == (whole.num_decoded_frames, whole.audio_start, whole.end)


def test_whole_file_passes_see_what_one_decode_holds(tmp_path, media_dir):
    """Frames, timestamps, frame count, audio start and every 16 kHz sample equal those of decode(fps=None), for a
    long 48 kHz stereo file, a variable-frame-rate one, and a real MPEG-1 clip (44.1 kHz MP2)."""
    from test_curation import _vfr_video

    _long_stereo_video(tmp_path / "long.mp4", 48_000)
    _vfr_video(tmp_path / "vfr.mp4")
    _check_passes_equal_decode([tmp_path / "long.mp4", tmp_path / "vfr.mp4", media_dir / "av_speech_grid" / "bbaf2n.mpg"])


@pytest.mark.slow
def test_whole_file_passes_of_a_real_film_see_what_one_decode_holds(media_dir):
    """The same for 30 s of 720p VP8 with 44.1 kHz Vorbis (three full decodes, about 15 s here)."""
    _check_passes_equal_decode([media_dir / "av_animation" / "big_buck_bunny_0_30.webm"])


def test_whole_file_passes_raise_the_errors_of_a_decode(tmp_path):
    from avsync_ray.media.reader import WholeFileReader

    full = tmp_path / "full.mp4"
    _indexed_video(full)
    (tmp_path / "truncated.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _indexed_video(tmp_path / "silent.mp4", audio=False)
    (tmp_path / "zero.mp4").write_bytes(b"")
    for name, reason in [("truncated.mp4", MediaErrorReason.TRUNCATED), ("silent.mp4", MediaErrorReason.NO_AUDIO_STREAM), ("zero.mp4", MediaErrorReason.ZERO_BYTES)]:
        with pytest.raises(MediaError) as streamed:
            list(WholeFileReader(str(tmp_path / name)))
        with pytest.raises(MediaError) as whole:
            decode(str(tmp_path / name), fps=None)
        assert (streamed.value.reason, streamed.value.detail) == (whole.value.reason, whole.value.detail) == (reason, whole.value.detail), name


def test_mp4_encoder_fed_in_pieces_writes_the_bytes_of_encode_mp4():
    from avsync_ray.media.encoding import Mp4Encoder

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (25, 48, 64, 3), dtype=np.uint8)
    audio = (0.2 * np.sin(2 * np.pi * 200 * np.arange(40_000) / 16_000)).astype(np.float32)
    with Mp4Encoder(10, with_audio=True, crf=28, preset="faster") as encoder:
        for start in range(0, 25, 4):
            encoder.add(frames[start : start + 4])
        pieces = encoder.finish(audio)
    assert pieces == encode_mp4(frames, 10, audio, 16_000, crf=28, preset="faster")


def test_decode_limits_count_what_is_decoded_not_what_the_header_says(tmp_path):
    """A FLAC whose STREAMINFO says 2 s but which holds 120 s: refused once 8 s are decoded, whatever the header;
    a whole track within the limit decodes as before, its channels averaged as they arrive."""
    from hostile_media import lying_flac

    lying = lying_flac(header_s=2.0, holds_s=120.0, rate=16_000, channels=6)
    assert probe(lying).audio.duration == 2.0
    with pytest.raises(MediaError) as refused:
        load_audio(lying, max_seconds=8)
    assert refused.value.reason is MediaErrorReason.TOO_LONG and "more than 8 s of audio decoded, and the header says 2.0 s" in str(refused.value)
    assert len(load_audio(lying)) == 120 * 16_000  # unbounded: the whole of it
    channels = np.random.default_rng(3).uniform(-0.5, 0.5, (16_000 * 3, 6)).astype(np.float32)
    soundfile.write(tmp_path / "six.wav", channels, 16_000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(str(tmp_path / "six.wav"), max_seconds=8), channels.mean(axis=1, dtype=np.float32))


def test_decode_limits_bound_frame_sizes_and_frame_counts(tmp_path):
    path = tmp_path / "v.mp4"
    _indexed_video(path, fps=24, seconds=2)
    with pytest.raises(MediaError) as large:
        decode(str(path), fps=6, end=2.0, max_pixels=32 * 32 - 1)
    assert large.value.reason is MediaErrorReason.TOO_LARGE and "32x32" in str(large.value)
    with pytest.raises(MediaError) as long:
        decode(str(path), fps=None, max_seconds=0.5)  # frames past 0.5 s (+ the 1-s slack) are refused, not kept
    assert long.value.reason is MediaErrorReason.TOO_LONG
    assert decode(str(path), fps=6, start=0.5, end=1.5, max_seconds=2.0, max_pixels=32 * 32).frames.shape == (6, 32, 32, 3)


def test_images_are_bounded_before_their_pixels_are_decoded_and_bad_ones_are_typed(tmp_path):
    from hostile_media import corrupt_png, png_claiming, truncated, zero_png
    from serve_support import png

    with pytest.raises(MediaError) as large:
        load_image(zero_png(3000, 3000), max_pixels=100 * 100)
    assert large.value.reason is MediaErrorReason.TOO_LARGE and "3000x3000" in str(large.value)
    with pytest.raises(MediaError) as bomb:
        load_image(png_claiming(60_000, 60_000))
    assert bomb.value.reason is MediaErrorReason.TOO_LARGE and "Pillow" not in str(bomb.value)
    for data, reason in ((truncated(png(160, 120)), MediaErrorReason.TRUNCATED), (corrupt_png(), MediaErrorReason.CORRUPT)):
        with pytest.raises(MediaError) as bad:
            load_image(data)
        assert bad.value.reason is reason, bad.value
    frames = _indexed_video(tmp_path / "v.mp4")
    assert np.array_equal(load_image(str(tmp_path / "v.mp4"), max_pixels=32 * 32), frames[0])  # a video's first frame


def test_a_frame_over_the_limit_is_never_allocated_by_the_decoder():
    """FFmpeg decodes one frame of an image stream to learn its size when it opens a file: with a pixel limit it does
    not (the stream opens as 0 x 0), and decoding it fails instead of allocating it."""
    import resource

    from hostile_media import zero_png

    huge = zero_png(6000, 6000)  # 108 MB of pixels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = probe(huge, max_pixels=100_000)
    assert (info.video.width, info.video.height) == (0, 0)
    with pytest.raises(MediaError):
        decode(huge, fps=None, audio=False, max_pixels=100_000)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 50  # MB
