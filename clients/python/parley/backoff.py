"""How long the client waits before each reconnection attempt: exponential backoff with full jitter."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

# How long one connection attempt may take before gRPC gives it up: gRPC's own default. gRPC reads it from
# "grpc.min_reconnect_backoff_ms" (the name notwithstanding, see grpc's doc/connection-backoff.md,
# MIN_CONNECT_TIMEOUT): set to a short backoff, a handshake slower than that (a far or busy server) never succeeds.
CONNECT_ATTEMPT_MS = 20_000


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Attempt n (from 0) waits a random time in [0, min(cap, initial × 2ⁿ)] seconds.

    Full jitter spreads a crowd of clients that lost the same server over the
    whole window, so a restarted gateway is not hit by all of them at once.
    After `max_attempts` failed attempts in a row (None: never) the client
    gives up and its state becomes `failed`.
    """

    initial: float = 0.1
    cap: float = 10.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial:
            raise ValueError(f"backoff: need 0 < initial <= cap, got initial={self.initial}, cap={self.cap}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"backoff: max_attempts must be at least 1, got {self.max_attempts}")

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.initial * 2.0 ** min(attempt, 60))

    def delay(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        return uniform(0.0, self.ceiling(attempt))

    def channel_options(self) -> list[tuple[str, int]]:
        """gRPC's own reconnection of the channel at the same pace (its default starts at 1 s and grows
        to 2 minutes, which would add itself to this backoff after a server restart); each attempt is
        given CONNECT_ATTEMPT_MS."""
        initial_ms = max(1, int(self.initial * 1000))
        return reconnect_options(initial_ms, max(initial_ms, int(self.cap * 1000)))

    def gives_up_after(self, failures: int) -> bool:
        return self.max_attempts is not None and failures >= self.max_attempts


def reconnect_options(initial_ms: int, max_ms: int) -> list[tuple[str, int]]:
    """gRPC channel options: reconnection backoff from `initial_ms` up to `max_ms`, each attempt given
    CONNECT_ATTEMPT_MS."""
    return [
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", CONNECT_ATTEMPT_MS),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]
