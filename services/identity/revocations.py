"""Device revocations as a feed: what gateways follow to cut a revoked device off at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from parley.api.v1 import errors_pb2
from parley.identity.v1 import identity_pb2
from services.identity import store
from services.runtime.errors import ServiceError
from services.runtime.timestamps import to_timestamp

# A watcher this far behind is dropped; it watches again and gets a fresh snapshot.
WATCH_QUEUE_LIMIT = 10_000


def revoked_device(row: store.DeviceRow) -> identity_pb2.RevokedDevice:
    assert row.revoked_at is not None
    return identity_pb2.RevokedDevice(
        device_id=row.device_id, user_id=row.user_id, revoke_time=to_timestamp(row.revoked_at)
    )


class RevocationFeed:
    """Announces each revocation to every watcher, after a snapshot of the recent ones."""

    def __init__(self) -> None:
        self._watchers: set[asyncio.Queue[identity_pb2.RevokedDevice | None]] = set()

    def announce(self, row: store.DeviceRow) -> None:
        device = revoked_device(row)
        for queue in list(self._watchers):
            if queue.qsize() >= WATCH_QUEUE_LIMIT - 1:
                self._watchers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(device)

    async def watch(
        self, snapshot: Callable[[], Awaitable[list[store.DeviceRow]]]
    ) -> AsyncIterator[identity_pb2.WatchRevocationsResponse]:
        """The snapshot (devices whose tokens may still be live), then each revocation.

        The watcher is registered before the snapshot is read, so a revocation
        made meanwhile is in one or the other (or both: receivers are idempotent).
        """
        queue: asyncio.Queue[identity_pb2.RevokedDevice | None] = asyncio.Queue(WATCH_QUEUE_LIMIT)
        self._watchers.add(queue)
        try:
            rows = await snapshot()
            yield identity_pb2.WatchRevocationsResponse(
                devices=[revoked_device(row) for row in rows], snapshot_complete=True
            )
            while True:
                device = await queue.get()
                if device is None:
                    raise ServiceError(
                        grpc.StatusCode.UNAVAILABLE,
                        errors_pb2.ERROR_REASON_SLOW_CONSUMER,
                        "revocation watch fell behind; watch again",
                    )
                batch = [device]
                while not queue.empty() and (more := queue.get_nowait()) is not None:
                    batch.append(more)
                yield identity_pb2.WatchRevocationsResponse(devices=batch)
        finally:
            self._watchers.discard(queue)
