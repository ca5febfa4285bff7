"""The users you share a room with who are online (`client.peers()`), and word when one goes offline."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from parley.auth import Auth
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.handlers import HandlerRunner


@dataclasses.dataclass(frozen=True)
class Peer:
    user_id: str
    room_ids: tuple[str, ...]


# How many ended connections are remembered, to tell each once: a drop of this many connections that
# share several rooms with us comes as each room's frames in turn.
REMEMBERED_ENDINGS = 100_000


class Peers:
    def __init__(self, auth: Auth, runner: HandlerRunner) -> None:
        self._auth = auth
        self._runner = runner
        # Connections already reported as ended (one in several of your rooms is reported by each).
        self._told: OrderedDict[str, None] = OrderedDict()

    async def list(self) -> list[Peer]:
        stub = gateway_pb2_grpc.GatewayServiceStub(self._auth.channel())
        response = await self._auth.call(stub.ListPeers, gateway_pb2.ListPeersRequest())
        return [Peer(p.user_id, tuple(p.room_ids)) for p in response.peers]

    def on_disconnected(self, handler: Callable[[str], Any]) -> None:
        self._runner.add("peer_disconnected", handler)

    def offline(self, user_id: str, session_id: str) -> None:
        """A user's connection `session_id` ended in a room of ours (PresenceChange.ended_session_id)."""
        if session_id in self._told:
            return
        self._told[session_id] = None
        if len(self._told) > REMEMBERED_ENDINGS:
            self._told.popitem(last=False)
        self._runner.fire("peer_disconnected", user_id)
