"""Which (sender device, epoch, counter) a device has accepted, so a group message opens at most once.

Per (device, epoch) the guard keeps the highest counter and a bitmap of the
`window` counters up to it (as IPsec's anti-replay window does): a counter
above the highest, or inside the window and not yet seen, is accepted; a
repeat, or a counter that fell below the window, is refused.
"""

from __future__ import annotations

from typing import Any

from parley.crypto.errors import MalformedInputError
from parley.crypto.group_errors import ReplayedGroupMessageError

DEFAULT_WINDOW = 1024
_VERSION = 1


class ReplayGuard:
    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("a replay window holds at least one counter")
        self._window = window
        # (device id, epoch) -> (highest counter, bitmap: bit i set when highest - i was accepted)
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}

    @property
    def window(self) -> int:
        return self._window

    def check(self, device_id: str, epoch: int, counter: int) -> None:
        """`ReplayedGroupMessageError` if the counter was accepted before or is below the window."""
        slot = self._seen.get((device_id, epoch))
        if slot is None or counter > slot[0]:
            return
        highest, bitmap = slot
        behind = highest - counter
        if behind >= self._window:
            raise ReplayedGroupMessageError(
                f"counter {counter} of {device_id!r} in epoch {epoch} is below the replay window"
            )
        if bitmap >> behind & 1:
            raise ReplayedGroupMessageError(f"counter {counter} of {device_id!r} in epoch {epoch} was already accepted")

    def accept(self, device_id: str, epoch: int, counter: int) -> None:
        """Check, then remember the counter as accepted."""
        self.check(device_id, epoch, counter)
        key = (device_id, epoch)
        slot = self._seen.get(key)
        if slot is None:
            self._seen[key] = (counter, 1)
            return
        highest, bitmap = slot
        if counter > highest:
            shifted = (bitmap << (counter - highest)) | 1
            self._seen[key] = (counter, shifted & ((1 << self._window) - 1))
        else:
            self._seen[key] = (highest, bitmap | 1 << (highest - counter))

    def forget_epochs_before(self, epoch: int) -> None:
        """Drop what is kept for older epochs (whose keys the caller no longer holds)."""
        self._seen = {key: slot for key, slot in self._seen.items() if key[1] >= epoch}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "window": self._window,
            "seen": [
                [device, epoch, highest, format(bitmap, "x")]
                for (device, epoch), (highest, bitmap) in self._seen.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayGuard:
        if data.get("version") != _VERSION:
            raise MalformedInputError(f"replay guard version {data.get('version')!r} is not {_VERSION}")
        try:
            guard = cls(int(data["window"]))
            for device, epoch, highest, bitmap_hex in data["seen"]:
                bitmap = int(bitmap_hex, 16)
                if not 0 <= bitmap < 1 << guard.window:
                    raise ValueError(f"bitmap {bitmap_hex!r} does not fit the window")
                guard._seen[(str(device), int(epoch))] = (int(highest), bitmap)
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedInputError(f"not a replay guard: {error}") from error
        return guard
