"""Image I/O: the header of any image Pillow reads, and its pixels (or a video's first frame) as RGB."""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec
import numpy as np
import PIL.Image

from avsync_ray.media.container import Source, check_source
from avsync_ray.media.decoding import first_frame
from avsync_ray.media.errors import MediaError, MediaErrorReason


@dataclass(frozen=True)
class ImageInfo:
    format_name: str
    width: int
    height: int


def _open_image(uri: Source):
    return io.BytesIO(uri) if isinstance(uri, bytes) else fsspec.open(str(uri), "rb").open()


# What Pillow raises for a file it recognised but cannot decode (a cut or corrupt data chunk, a broken header).
_PILLOW_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def _pillow_error(uri: Source, exc: Exception) -> MediaError:
    reason = MediaErrorReason.TRUNCATED if "truncated" in str(exc) else MediaErrorReason.CORRUPT
    return MediaError(uri, reason, f"unreadable image: {exc}")


def _bomb(uri: Source) -> MediaError:
    """Pillow refuses to open an image whose header states more than twice its ``MAX_IMAGE_PIXELS``."""
    return MediaError(uri, MediaErrorReason.TOO_LARGE, f"its header states more than {2 * PIL.Image.MAX_IMAGE_PIXELS:,} pixels")


def probe_image(uri: Source) -> ImageInfo:
    """Format and size of an image (any format Pillow reads) from its header, without decoding the pixels."""
    check_source(uri)
    try:
        with _open_image(uri) as handle, PIL.Image.open(handle) as image:
            return ImageInfo(image.format or "unknown", *image.size)
    except PIL.Image.DecompressionBombError:
        raise _bomb(uri) from None
    except PIL.UnidentifiedImageError:
        raise MediaError(uri, MediaErrorReason.CORRUPT, "not a readable image (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)") from None
    except _PILLOW_DECODE_ERRORS as exc:
        raise _pillow_error(uri, exc) from None


def load_image(uri: Source, max_pixels: int | None = None) -> np.ndarray:
    """An image file or its bytes (any format Pillow reads), or else the first frame of a video, as RGB uint8 (H, W, 3).
    An image of more than ``max_pixels`` is refused (``TOO_LARGE``) from its header, before its pixels are decoded
    (Pillow allocates what the header states); a file Pillow cannot decode is ``CORRUPT`` or ``TRUNCATED``."""
    check_source(uri)
    try:
        with _open_image(uri) as handle, PIL.Image.open(handle) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise MediaError(uri, MediaErrorReason.TOO_LARGE, f"{image.width}x{image.height} is {image.width * image.height:,} pixels; at most {max_pixels:,}")
            return np.asarray(image.convert("RGB"))
    except PIL.Image.DecompressionBombError:
        raise _bomb(uri) from None
    except PIL.UnidentifiedImageError:
        return first_frame(uri, max_pixels=max_pixels)
    except _PILLOW_DECODE_ERRORS as exc:
        raise _pillow_error(uri, exc) from None
