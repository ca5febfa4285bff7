"""Token buckets keyed by caller, for per-user and per-name limits."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """Allows `rate` events per `per_seconds` per key, with bursts up to `rate`."""

    # Buckets that have refilled are forgotten once the table passes this size;
    # the next pass waits until it has doubled, so pruning stays amortised O(1).
    MIN_PRUNE_SIZE = 10_000

    def __init__(self, rate: int, per_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(rate)
        self._refill = rate / per_seconds
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._prune_at = self.MIN_PRUNE_SIZE

    def try_acquire(self, key: str, cost: int = 1) -> float:
        """Takes `cost` tokens; returns 0 when allowed, else seconds until they are free."""
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - updated) * self._refill)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > self._prune_at:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self._refill

    def _forget_full(self, now: float) -> None:
        full_after = self._capacity / self._refill
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._prune_at = max(self.MIN_PRUNE_SIZE, 2 * len(self._buckets))
