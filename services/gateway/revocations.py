"""Follows the identity service's revocation feed for as long as the gateway runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from parley.identity.v1 import identity_pb2
from services.gateway.identity_client import IdentityClient

log = logging.getLogger("parley.gateway")
RETRY_SECONDS = 1.0


async def follow_revocations(client: IdentityClient, on_revoked: Callable[[identity_pb2.RevokedDevice], None]) -> None:
    """Runs until cancelled: each revoked device (the recent ones first) goes to `on_revoked`.

    After a reconnection the snapshot repeats what was seen, so `on_revoked`
    must be idempotent; what was revoked while the feed was away is in it.
    """
    while True:
        try:
            async for response in client.watch_revocations():
                for device in response.devices:
                    on_revoked(device)
        except grpc.aio.AioRpcError as exc:
            log.info("revocation watch ended; retrying", extra={"code": exc.code().name})
        except Exception:
            log.exception("revocation watch failed; retrying")
        await asyncio.sleep(RETRY_SECONDS)
