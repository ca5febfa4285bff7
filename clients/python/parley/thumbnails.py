"""Small JPEG previews of images, made on the sending device and sealed with the message that carries the file."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Longest side of a thumbnail, in pixels.
THUMBNAIL_PIXELS = 320
# A thumbnail rides in a sealed message (base64, then sealed and base64 again): kept well under its 64 KiB.
MAX_THUMBNAIL_BYTES = 16 * 1024
# Tried in turn until the JPEG fits MAX_THUMBNAIL_BYTES: (longest side, quality).
_ATTEMPTS = ((THUMBNAIL_PIXELS, 75), (THUMBNAIL_PIXELS, 55), (240, 55), (160, 50))
# Images larger than this (decompressed) are not previewed: Pillow's own bomb guard, made explicit.
MAX_IMAGE_PIXELS = 64_000_000
_JPEG_MAGIC = b"\xff\xd8\xff"
_FAILURES = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def thumbnail(source: bytes | Path | str, media_type: str) -> bytes | None:
    """A JPEG of at most THUMBNAIL_PIXELS on its longest side and MAX_THUMBNAIL_BYTES, or None when `source` is not
    an image Pillow reads (or no preview that small can be made)."""
    if not media_type.startswith("image/"):
        return None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return None
            image.load()
            for pixels, quality in _ATTEMPTS:
                small = image.copy()
                small.thumbnail((pixels, pixels))
                out = io.BytesIO()
                small.convert("RGB").save(out, "JPEG", quality=quality)
                if out.tell() <= MAX_THUMBNAIL_BYTES:
                    return out.getvalue()
    except _FAILURES:
        return None
    return None


def checked_thumbnail(data: bytes) -> bytes | None:
    """A received thumbnail, or None when it is not one a Parley sender makes: a JPEG of at most
    MAX_THUMBNAIL_BYTES and THUMBNAIL_PIXELS a side (only its header is read, never its pixels)."""
    if len(data) > MAX_THUMBNAIL_BYTES or not data.startswith(_JPEG_MAGIC):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or max(image.size) > THUMBNAIL_PIXELS:
                return None
    except _FAILURES:
        return None
    return data
