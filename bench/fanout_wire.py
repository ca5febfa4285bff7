"""What the fan-out benchmark's publishers send and what its subscribers record of it.

A payload is a 100-character string, "<time.time_ns() at publication, 20
digits>:<tag>:<index>:" padded with "x". Publishers and subscribers share this
machine's clock, so a delivery's latency is its receive time minus the stamp.
The tag names the measurement a payload belongs to, so a late delivery from a
warm-up is not counted in the measurement after it.
"""

from __future__ import annotations

import collections
import time
from typing import Any

ROOM = "bench"
EVENT = "msg"
PAYLOAD_BYTES = 100
TAG_SLICE = slice(21, 23)


def payload(tag: str, index: int) -> str:
    head = f"{time.time_ns():020d}:{tag}:{index:07d}:"
    return head + "x" * (PAYLOAD_BYTES - len(head))


class Stats:
    """What one process's subscribers received in the current measurement."""

    def __init__(self) -> None:
        self.tag = ""
        self.received = 0
        self.stale = 0
        self.last_ns = 0
        self.latencies_us: list[int] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def reset(self, tag: str) -> None:
        self.tag = tag
        self.received = 0
        self.stale = 0
        self.last_ns = 0
        self.latencies_us = []

    def record(self, data: str, now_ns: int) -> None:
        if data[TAG_SLICE] != self.tag:
            self.stale += 1
            return
        self.received += 1
        self.last_ns = now_ns
        self.latencies_us.append((now_ns - int(data[:20])) // 1000)

    def report(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stale": self.stale,
            "last_ns": self.last_ns,
            "latencies_us": self.latencies_us,
            "errors": dict(self.errors),
        }
