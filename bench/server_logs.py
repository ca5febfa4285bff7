"""Warning and error lines in servers' logs, counted section by section (start, each scenario, stop).

A line's level is read the way each server writes it: Parley's JSON lines
(`"level": "warning"`), nats-server's `[WRN]`/`[ERR]`/`[FTL]`, gRPC core's
`W1201 ...`/`E1201 ...`, and Python logging's text format (`WARNING ...`).
Parley's launcher prints "Parley <server> listening on ..." and "Parley
<server> stopped" on purpose; those are not log records. A line none of these
recognise (a bare traceback, a print) counts as unrecognised, so nothing a
server says is silently ignored.

Standard library only, like `server_process.py`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# How many lines of each section are quoted in the report.
QUOTED_LINES = 5
QUOTED_CHARS = 300

NATS_LEVEL = re.compile(r"\[(TRC|DBG|INF|WRN|ERR|FTL)\]")
ABSL_LEVEL = re.compile(r"^([IWEF])\d{4} ")
TEXT_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
LAUNCHER_LINE = re.compile(r"^Parley .+ (stopped|listening on \S+)$")

LEVELS = {
    "trc": "info",
    "dbg": "info",
    "inf": "info",
    "debug": "info",
    "info": "info",
    "wrn": "warning",
    "warn": "warning",
    "warning": "warning",
    "err": "error",
    "error": "error",
    "critical": "error",
    "fatal": "error",
    "ftl": "error",
    "i": "info",
    "w": "warning",
    "e": "error",
    "f": "error",
}


def json_record(text: str) -> dict[str, Any] | None:
    """A JSON log record with a level (Parley's format), or None."""
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("level"), str) else None


def quote(line: str) -> str:
    """A line as the report quotes it; for a JSON record its level, logger, message and the exception's last line."""
    text = line.strip()
    record = json_record(text)
    if record is None:
        return text[:QUOTED_CHARS]
    error = str(record.get("error", "")).strip().splitlines()
    cause = f" ({error[-1]})" if error else ""
    return f"{record['level']} {record.get('logger', '')}: {record.get('message', '')}{cause}"[:QUOTED_CHARS]


def line_level(line: str) -> str:
    """The line's level: "info", "warning", "error" or "unrecognised"."""
    text = line.strip()
    if not text or LAUNCHER_LINE.match(text):
        return "info"
    if (record := json_record(text)) is not None:
        return LEVELS.get(record["level"].lower(), "unrecognised")
    for pattern in (NATS_LEVEL, ABSL_LEVEL, TEXT_LEVEL):
        if match := pattern.search(text):
            return LEVELS[match.group(1).lower()]
    if text.startswith("Traceback (most recent call last)"):
        return "error"
    return "unrecognised"


@dataclasses.dataclass
class LogSection:
    """What the servers logged over one section of a run."""

    warnings: int = 0
    errors: int = 0
    unrecognised: int = 0
    quoted: list[str] = dataclasses.field(default_factory=list)

    def add(self, source: str, lines: Iterable[str]) -> None:
        for line in lines:
            level = line_level(line)
            if level == "info":
                continue
            if level == "warning":
                self.warnings += 1
            elif level == "error":
                self.errors += 1
            else:
                self.unrecognised += 1
            if len(self.quoted) < QUOTED_LINES:
                self.quoted.append(f"{source}: {quote(line)}")

    def merge(self, other: LogSection) -> None:
        self.warnings += other.warnings
        self.errors += other.errors
        self.unrecognised += other.unrecognised
        self.quoted.extend(other.quoted[: max(0, QUOTED_LINES - len(self.quoted))])

    @property
    def clean(self) -> bool:
        return not (self.warnings or self.errors or self.unrecognised)

    def report(self) -> dict[str, Any]:
        return {
            "warning_lines": self.warnings,
            "error_lines": self.errors,
            "unrecognised_lines": self.unrecognised,
            "first_lines": self.quoted,
        }


class LogWatch:
    """Reads log files from where it last stopped: each `section()` covers what was written since the last."""

    def __init__(self) -> None:
        self._offsets: dict[Path, int] = {}
        self._sources: dict[Path, str] = {}

    def watch(self, source: str, path: Path) -> None:
        """Follows `path` from its start, quoting its lines as `source`."""
        self._sources[path] = source
        self._offsets[path] = 0

    def section(self) -> LogSection:
        """Every complete line written since the last call (a partial last line waits for the next)."""
        found = LogSection()
        for path, offset in self._offsets.items():
            if not path.exists():
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            found.add(self._sources[path], data[:end].decode(errors="replace").splitlines())
        return found
