"""Media a careless or hostile client sends: files whose header says less than they hold, truncated containers,
files of the wrong kind, empty files and huge dimensions. Each is made on the spot, small on disk."""

from __future__ import annotations

import io
import struct
import zlib

import av
import numpy as np
import soundfile
from serve_support import mp4, png


def lying_flac(header_s: float = 2.0, holds_s: float = 600.0, rate: int = 48_000, channels: int = 2) -> bytes:
    """A FLAC whose STREAMINFO says ``header_s`` seconds but whose frames hold ``holds_s`` (silence after a short
    tone, so it packs into a few hundred KB however long it is)."""
    buffer = io.BytesIO()
    block = rate * 10
    with soundfile.SoundFile(buffer, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as flac:
        tone = (0.3 * np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
        flac.write(np.repeat(tone[:, None], channels, axis=1))
        left = int((holds_s - 1) * rate)
        while left > 0:
            flac.write(np.zeros((min(block, left), channels), dtype=np.float32))
            left -= block
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first, its fields from byte 8
    # Bytes 18-25: sample rate (20 bits), channels - 1 (3), bits per sample - 1 (5), total samples (36).
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | int(header_s * rate)
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def lying_mkv(header_s: float = 2.0, holds_s: float = 30.0, size: int = 64, fps: int = 6, rate: int = 16_000) -> bytes:
    """A Matroska video (H.264 and FLAC) whose Segment duration says ``header_s`` seconds but which holds ``holds_s``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("flac", rate=rate, layout="mono")
        picture = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        for index in range(int(holds_s * fps)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        sound = (0.3 * np.sin(np.arange(int(holds_s * rate)) / 5)).astype(np.float32)
        for start in range(0, len(sound), 4096):
            frame = av.AudioFrame.from_ndarray(sound[None, start : start + 4096], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(audio.encode(frame))
        out.mux(video.encode())
        out.mux(audio.encode())
    data = bytearray(buffer.getvalue())
    duration = data.index(b"\x44\x89")  # the Duration element (EBML ID 0x4489), a float in ms at the default timecode scale
    assert data[duration + 2] == 0x88  # an 8-byte float
    data[duration + 3 : duration + 11] = struct.pack(">d", header_s * 1000)
    return bytes(data)


def endless_wav(holds_s: float = 240.0, rate: int = 8_000) -> bytes:
    """A WAV whose RIFF and data sizes are 0xFFFFFFFF ("until the end", as a stream writes them), holding ``holds_s``
    seconds of 8-bit audio."""
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    tone = (128 + 60 * np.sin(np.arange(int(holds_s * rate)) * 2 * np.pi * 440 / rate)).astype(np.uint8)
    return header + b"data" + struct.pack("<I", 0xFFFFFFFF) + tone.tobytes()


def jpeg(width: int = 160, height: int = 120) -> bytes:
    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(2).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (CRCs included) for a ``width`` x ``height`` RGB image whose data is a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


def zero_png(width: int, height: int) -> bytes:
    """A real ``width`` x ``height`` PNG of black pixels: tiny compressed, ``3 * width * height`` bytes decoded."""
    rows = (b"\x00" + b"\x00" * (3 * width)) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows, 9)) + _png_chunk(b"IEND", b"")


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]


def corrupt_png() -> bytes:
    """A PNG whose image data chunk is garbage (with a correct CRC, so only decoding it fails)."""
    good = png(80, 60)
    start = good.index(b"IDAT") - 4
    length = struct.unpack(">I", good[start : start + 4])[0]
    garbage = bytes(range(256)) * (length // 256 + 1)
    return good[:start] + _png_chunk(b"IDAT", garbage[:length]) + good[start + 12 + length :]


def hostile_files() -> dict[str, bytes]:
    """Every kind of bad upload, by name."""
    return {
        "lying flac (says 2 s, holds 600 s)": lying_flac(),
        "lying mkv (says 2 s, holds 30 s)": lying_mkv(),
        "wav of no stated length (holds 240 s)": endless_wav(),
        "truncated png": truncated(png(160, 120)),
        "truncated jpeg": truncated(jpeg()),
        "png with a corrupt data chunk": corrupt_png(),
        "truncated mp4 (no index)": truncated(mp4(3.0)),
        "truncated flac": truncated(lying_flac(header_s=3.0, holds_s=3.0, rate=16_000, channels=1), 0.3),
        "png": png(80, 60),
        "empty": b"",
        "text": b"this is not media" * 10,
        "png header of 60000x60000": png_claiming(60_000, 60_000),
        "png of 5000x5000 black pixels": zero_png(5000, 5000),
    }
