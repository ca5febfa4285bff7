"""Gateway leases: the memberships of a gateway that stops renewing end, and the rooms are told."""

from __future__ import annotations

import time

from services.room.leases import GatewayLeases
from services.room.membership import Membership
from services.runtime import room_stream
from services.runtime.bus import BusMessage, InProcessBus
from services.runtime.session_ids import new_gateway_id, new_session_id


async def test_a_lapsed_lease_ends_that_gateways_memberships_only() -> None:
    bus = InProcessBus()
    told: list[BusMessage] = []
    bus.add_prefix("room.", told.append)
    membership = Membership()
    leases = GatewayLeases(membership, bus)
    dead, alive, local = new_gateway_id(), new_gateway_id(), new_gateway_id()
    membership.join("lobby", 0, "ann", new_session_id(dead))
    membership.join("lobby", 0, "bob", new_session_id(dead))
    membership.join("lobby", 0, "bob", new_session_id(alive))  # bob stays: his other connection lives
    membership.join("lobby", 0, "cy", new_session_id(local))  # never leased (an all-in-one gateway's)
    leases.renew(dead, 5)
    leases.renew(alive, 20)
    assert await leases.sweep(now=leases_now(4)) == []
    assert await leases.sweep(now=leases_now(6)) == [("lobby", "ann")]
    assert sorted(membership.participants("lobby")) == ["bob", "cy"]
    assert [room_stream.parse(m).kind for m in told] == [room_stream.PRESENCE]
    assert await leases.sweep(now=leases_now(7)) == []  # swept once


def leases_now(seconds_from_now: float) -> float:
    return time.monotonic() + seconds_from_now


async def test_a_released_lease_ends_now_and_is_never_swept() -> None:
    bus = InProcessBus()
    membership = Membership()
    leases = GatewayLeases(membership, bus)
    drained = new_gateway_id()
    membership.join("lobby", 0, "ann", new_session_id(drained))  # a membership it still held
    leases.renew(drained, 5)
    assert await leases.release(drained) == [("lobby", "ann")]
    assert membership.participants("lobby") == {}
    assert await leases.sweep(now=leases_now(60)) == [], "nothing lapses later, no warning"
