"""Devices revoked recently enough that tokens issued to them may still be unexpired."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from services.runtime.config import AuthConfig


def token_life_after_revocation(auth: AuthConfig) -> float:
    """How long a token issued before its device was revoked may still verify: its lifetime, and clock skew."""
    return auth.access_token_ttl_seconds + auth.clock_skew_seconds


class RevokedDevices:
    """Device ids whose tokens no longer count, each kept until its last token must have expired.

    Filled from the identity service's revocation feed; the token verifier
    refuses the tokens of these devices before they expire by themselves.
    Entries leave in the order they came, so adding costs O(1) amortised.
    """

    def __init__(self, keep_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._keep = keep_seconds
        self._clock = clock
        self._revoked: set[str] = set()
        self._arrivals: deque[tuple[float, str]] = deque()

    def add(self, device_id: str) -> bool:
        """Records a revocation; False when it was known already."""
        now = self._clock()
        while self._arrivals and now - self._arrivals[0][0] >= self._keep:
            _, gone = self._arrivals.popleft()
            self._revoked.discard(gone)
        if device_id in self._revoked:
            return False
        self._revoked.add(device_id)
        self._arrivals.append((now, device_id))
        return True

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._revoked

    def __len__(self) -> int:
        return len(self._revoked)
