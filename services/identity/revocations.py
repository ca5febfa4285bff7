"""Device revocations as a feed: what gateways follow to cut a revoked device off at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from parley.identity.v1 import identity_pb2
from services.identity.storage import DeviceRow
from services.runtime.change_feed import ChangeFeed
from services.runtime.timestamps import to_timestamp


def revoked_device(row: DeviceRow) -> identity_pb2.RevokedDevice:
    assert row.revoked_at is not None
    return identity_pb2.RevokedDevice(
        device_id=row.device_id, user_id=row.user_id, revoke_time=to_timestamp(row.revoked_at)
    )


class RevocationFeed:
    """Announces each revocation to every watcher, after a snapshot of the recent ones."""

    def __init__(self) -> None:
        self._feed: ChangeFeed[identity_pb2.RevokedDevice] = ChangeFeed("revocation watch")

    def announce(self, row: DeviceRow) -> None:
        self._feed.announce(revoked_device(row))

    async def watch(
        self, snapshot: Callable[[], Awaitable[list[DeviceRow]]]
    ) -> AsyncIterator[identity_pb2.WatchRevocationsResponse]:
        """The snapshot (devices whose tokens may still be live), then each revocation."""
        async with self._feed.watching() as batches:
            rows = await snapshot()
            yield identity_pb2.WatchRevocationsResponse(
                devices=[revoked_device(row) for row in rows], snapshot_complete=True
            )
            async for batch in batches:
                yield identity_pb2.WatchRevocationsResponse(devices=batch)
