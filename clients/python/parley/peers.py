"""The users you share a room with who are online (`client.peers()`), and word when one goes offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from parley.auth import Auth
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.handlers import HandlerRunner


@dataclasses.dataclass(frozen=True)
class Peer:
    user_id: str
    room_ids: tuple[str, ...]


class Peers:
    def __init__(self, auth: Auth, runner: HandlerRunner) -> None:
        self._auth = auth
        self._runner = runner
        # Users reported offline and not seen since: a user in several of your rooms is reported once.
        self._offline: set[str] = set()

    async def list(self) -> list[Peer]:
        stub = gateway_pb2_grpc.GatewayServiceStub(self._auth.channel())
        response = await self._auth.call(stub.ListPeers, gateway_pb2.ListPeersRequest())
        return [Peer(p.user_id, tuple(p.room_ids)) for p in response.peers]

    def on_disconnected(self, handler: Callable[[str], Any]) -> None:
        self._runner.add("peer_disconnected", handler)

    def offline(self, user_id: str) -> None:
        if user_id not in self._offline:
            self._offline.add(user_id)
            self._runner.fire("peer_disconnected", user_id)

    def seen(self, user_id: str) -> None:
        """The user is online again (joined a room of yours): a later disconnection is reported again."""
        self._offline.discard(user_id)
