"""Gateways of one deployment over a bus: who is alive, questions to all and to one."""

from __future__ import annotations

import asyncio
from typing import Any

from services.gateway.deployment import GatewayPeers
from services.runtime.bus import InProcessBus
from services.runtime.session_ids import gateway_of, new_gateway_id, new_session_id


def answering(name: str) -> Any:
    async def answer(op: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"who": name, "op": op, "args": args}

    return answer


async def test_a_question_to_all_gets_every_live_gateways_answer() -> None:
    bus = InProcessBus()
    peers = [GatewayPeers(bus, new_gateway_id(), answering(n), heartbeat=0.05) for n in ("a", "b", "c")]
    for p in peers:
        await p.start()
    try:
        await asyncio.sleep(0.01)  # each hears the others say they are alive
        assert peers[0].alive() == sorted(p.gateway_id for p in peers)
        answers = await peers[0].ask_all("count", {"x": 1})
        assert sorted(a["who"] for a in answers) == ["a", "b", "c"]
        assert {a["args"]["x"] for a in answers} == {1}
        one = await peers[2].ask(peers[1].gateway_id, "hello", {})
        assert one is not None
        assert one["who"] == "b"
    finally:
        for p in peers:
            await p.close()


async def test_a_gateway_that_stopped_is_no_longer_waited_for() -> None:
    bus = InProcessBus()
    alive = GatewayPeers(bus, new_gateway_id(), answering("alive"), heartbeat=0.05, dead_after=0.2)
    gone = GatewayPeers(bus, new_gateway_id(), answering("gone"), heartbeat=0.05, dead_after=0.2)
    await alive.start()
    await gone.start()
    await asyncio.sleep(0.01)
    assert len(alive.alive()) == 2
    await gone.close()
    await asyncio.sleep(0.3)
    try:
        assert alive.alive() == [alive.gateway_id]
        assert [a["who"] for a in await alive.ask_all("count", {})] == ["alive"]
        assert await alive.ask(gone.gateway_id, "hello", {}) is None
    finally:
        await alive.close()


async def test_an_unanswered_question_returns_what_came_in_time() -> None:
    bus = InProcessBus()

    async def never(op: str, args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    quick = GatewayPeers(bus, new_gateway_id(), answering("quick"), answer_within=0.2)
    slow = GatewayPeers(bus, new_gateway_id(), never, answer_within=0.2)
    await quick.start()
    await slow.start()
    try:
        await asyncio.sleep(0.01)
        assert [a["who"] for a in await quick.ask_all("count", {})] == ["quick"]
    finally:
        await quick.close()
        await slow.close()


def test_a_session_id_names_its_gateway() -> None:
    gateway_id = new_gateway_id()
    assert gateway_of(new_session_id(gateway_id)) == gateway_id
