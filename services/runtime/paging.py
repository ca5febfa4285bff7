"""Page tokens: opaque to clients, validated on the way back in."""

from __future__ import annotations

import base64

from services.runtime.errors import invalid_field

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def clamp_page_size(requested: int) -> int:
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


def encode_page_token(after: str) -> str:
    return base64.urlsafe_b64encode(f"after:{after}".encode()).decode()


def decode_page_token(token: str) -> str:
    """The key after which the next page starts; "" for the first page."""
    if not token:
        return ""
    try:
        decoded = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_field("page_token", "is not a token this server issued") from exc
    if not decoded.startswith("after:"):
        raise invalid_field("page_token", "is not a token this server issued")
    return decoded[len("after:") :]
