"""What an upload may be: its media type (an allow-list) and its size (a cap per top-level type)."""

from __future__ import annotations

import dataclasses
import re

from services.runtime.config import FilesConfig

# RFC 6838 names: a letter or digit, then these; parameters (";charset=...") are dropped.
_MEDIA_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]{0,126})/([a-z0-9][a-z0-9!#$&^_.+-]{0,126})")
CAPPED_TYPES = ("image", "audio", "video")
DOCUMENT = "document"


def media_type_essence(declared: str) -> str | None:
    """ "Image/PNG; q=1" -> "image/png"; None when it is not a media type."""
    essence = declared.split(";", 1)[0].strip().lower()
    return essence if _MEDIA_TYPE.fullmatch(essence) else None


def size_class(media_type: str) -> str:
    """ "image", "audio", "video", or "document" for every other type."""
    top = media_type.split("/", 1)[0]
    return top if top in CAPPED_TYPES else DOCUMENT


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    allowed: tuple[str, ...]
    max_bytes: dict[str, int]

    @classmethod
    def from_config(cls, files: FilesConfig) -> UploadLimits:
        return cls(
            tuple(pattern.lower() for pattern in files.media_types),
            {
                "image": files.max_image_bytes,
                "audio": files.max_audio_bytes,
                "video": files.max_video_bytes,
                DOCUMENT: files.max_document_bytes,
            },
        )

    def allows(self, media_type: str) -> bool:
        top = media_type.split("/", 1)[0]
        return any(pattern in (media_type, f"{top}/*", "*/*") for pattern in self.allowed)

    def cap(self, media_type: str) -> int:
        return self.max_bytes[size_class(media_type)]

    @property
    def largest(self) -> int:
        return max(self.max_bytes.values())
