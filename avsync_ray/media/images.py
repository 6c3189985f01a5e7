"""Image I/O: the header of any image Pillow reads, and its pixels (or a video's first frame) as RGB."""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec
import numpy as np
import PIL.Image

from avsync_ray.media.container import Source, check_source
from avsync_ray.media.decoding import decode
from avsync_ray.media.errors import MediaError, MediaErrorReason


@dataclass(frozen=True)
class ImageInfo:
    format_name: str
    width: int
    height: int


def _open_image(uri: Source):
    return io.BytesIO(uri) if isinstance(uri, bytes) else fsspec.open(str(uri), "rb").open()


def probe_image(uri: Source) -> ImageInfo:
    """Format and size of an image (any format Pillow reads) from its header, without decoding the pixels."""
    check_source(uri)
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
    check_source(uri)
    try:
        with _open_image(uri) as handle:
            return np.asarray(PIL.Image.open(handle).convert("RGB"))
    except PIL.UnidentifiedImageError:
        return decode(uri, audio=False, fps=None, end=None).frames[0]
