"""Small JPEG previews of images, made on the sending device and sealed with the message that carries the file."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Longest side of a thumbnail, in pixels; a few KB of JPEG.
THUMBNAIL_PIXELS = 320
THUMBNAIL_QUALITY = 75
# Images larger than this (decompressed) are not previewed: Pillow's own bomb guard, made explicit.
MAX_IMAGE_PIXELS = 64_000_000


def thumbnail(source: bytes | Path | str, media_type: str) -> bytes | None:
    """A JPEG of at most THUMBNAIL_PIXELS on its longest side, or None when `source` is not an image Pillow reads."""
    if not media_type.startswith("image/"):
        return None
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return None
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=THUMBNAIL_QUALITY)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
