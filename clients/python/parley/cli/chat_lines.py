"""What `parley chat` prints: each message and notice as one line of text, stamped with the time."""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from typing import Any

from rich.filesize import decimal

from parley.files import MEDIA_TYPE_TAG


def clock(moment: datetime, now: datetime) -> str:
    """The local time of day; the date too when it is not today."""
    local = moment.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def from_ms(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000).astimezone()


def payload_text(data: Any) -> str:
    """A chat line's text ({"text": "..."} or a bare string); a file as its name, size and caption (never its key);
    any other payload as compact JSON."""
    if isinstance(data, dict) and data.get("type") == MEDIA_TYPE_TAG:
        return _file_text(data)
    if isinstance(data, dict) and set(data) == {"text"} and isinstance(data["text"], str):
        return printable(data["text"])
    if isinstance(data, str):
        return printable(data)
    return printable(json.dumps(_whole_numbers(data), ensure_ascii=False, separators=(",", ":")))


def _file_text(data: dict[str, Any]) -> str:
    file = data["file"] if isinstance(data.get("file"), dict) else {}
    name, size, caption = file.get("name"), file.get("size"), data.get("caption")
    shown = f"[file] {name if isinstance(name, str) else '?'}"
    if isinstance(size, (int, float)):
        shown += f" ({decimal(int(size))})"
    if isinstance(caption, str) and caption:
        shown += f" {caption}"
    return printable(shown)


def _whole_numbers(data: Any) -> Any:
    """JSON numbers arrive as floats (protobuf's Value): 2.0 is shown as the 2 that was sent."""
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, dict):
        return {key: _whole_numbers(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_whole_numbers(value) for value in data]
    return data


def printable(text: str) -> str:
    """Control characters escaped: another member's message must not move the cursor or clear the screen."""
    return "".join(
        char.encode("unicode_escape").decode() if unicodedata.category(char) in ("Cc", "Cf") else char for char in text
    )


def message_line(when: str, sender: str, data: Any) -> str:
    return f"{when} {sender}: {payload_text(data)}"


def notice_line(when: str, text: str) -> str:
    return f"{when} -- {text}"


def divider(earlier: int) -> str:
    """Between the history shown on join and the lines that come live."""
    messages = "message" if earlier == 1 else "messages"
    return f"──── {earlier} earlier {messages} above · live from here ────"
