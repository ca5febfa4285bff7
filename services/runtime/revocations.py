"""Devices revoked recently enough that tokens issued to them may still be unexpired."""

from __future__ import annotations

import time
from collections.abc import Callable


class RevokedDevices:
    """Device ids whose tokens no longer count, each kept until its last token must have expired.

    Filled from the identity service's revocation feed; the token verifier
    refuses the tokens of these devices before they expire by themselves.
    """

    def __init__(self, keep_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._keep = keep_seconds
        self._clock = clock
        self._revoked_at: dict[str, float] = {}

    def add(self, device_id: str, revoked_at: float) -> bool:
        """Records a revocation; False when it was known already."""
        now = self._clock()
        self._revoked_at = {d: at for d, at in self._revoked_at.items() if now - at < self._keep}
        known = device_id in self._revoked_at
        self._revoked_at[device_id] = revoked_at
        return not known

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._revoked_at

    def __len__(self) -> int:
        return len(self._revoked_at)
