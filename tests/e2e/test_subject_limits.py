"""Subject subscriptions are capped per user over all of the user's streams, and nested ones cost one delivery."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf import json_format

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.values import to_value as value
from services import allinone
from services.runtime.bus import BusMessage, Handler, InProcessBus
from tests.streams import stream
from tests.support import make_config, running, wait_until


def subscribe(subject: str) -> gateway_pb2.SubjectSubscribeCommand:
    return gateway_pb2.SubjectSubscribeCommand(subject=subject)


async def test_a_users_subject_subscriptions_are_capped_across_connections(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, **{"gateway.max_subject_subscriptions_per_user": 3})
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="sam", key_file=tmp_path / "s.json") as sam,
            Client(address, username="tess", key_file=tmp_path / "t.json") as tess,
        ):
            async with stream(address, await sam.access_token()) as second:
                async with stream(address, await sam.access_token()) as first:
                    await first.ok(subject_subscribe=subscribe("presence:*"))
                    await first.ok(subject_subscribe=subscribe("cursor:doc-1"))
                    await first.ok(subject_subscribe=subscribe("presence:*"))  # held already: not counted again
                    await second.ok(subject_subscribe=subscribe("counter:*"))

                    refused = await second.command(subject_subscribe=subscribe("cursor:doc-2"))
                    assert refused.status.code == 8  # RESOURCE_EXHAUSTED
                    assert refused.status.message.startswith("a user may hold at most 3 subject subscriptions")
                    assert refused.status.reason == "TOO_MANY_SUBSCRIPTIONS"

                    # Other users have their own allowance; freeing one lets the user subscribe again.
                    async with stream(address, await tess.access_token()) as other:
                        await other.ok(subject_subscribe=subscribe("cursor:doc-2"))
                        await first.ok(subject_unsubscribe=gateway_pb2.SubjectUnsubscribeCommand(subject="presence:*"))
                        await second.ok(subject_subscribe=subscribe("cursor:doc-2"))
                        await other.ok(
                            subject_publish=gateway_pb2.SubjectPublishCommand(subject="cursor:doc-2", data=value(7))
                        )
                        got = await asyncio.wait_for(second.subject_events.get(), 3)
                        assert (got.subject, got.sender) == ("cursor:doc-2", tess.user_id)
                    assert (await second.command(subject_subscribe=subscribe("x"))).status.code == 8

                # The first stream ended: its subscriptions no longer count.
                async def frees_up() -> bool:
                    return (await second.command(subject_subscribe=subscribe("x"))).status.code == 0

                await wait_until(frees_up, within=5)


def publish(subject: str, n: int) -> gateway_pb2.SubjectPublishCommand:
    return gateway_pb2.SubjectPublishCommand(subject=subject, data=value({"n": n}))


async def test_nested_wildcards_deliver_once_through_one_bus_handler(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler_calls: Counter[str] = Counter()
    deliver = InProcessBus._deliver

    def counted(handler: Handler, message: BusMessage) -> None:
        handler_calls[message.subject] += 1
        deliver(handler, message)

    monkeypatch.setattr(InProcessBus, "_deliver", staticmethod(counted))
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with (
            Client(address, username="sam", key_file=tmp_path / "s.json") as sam,
            Client(address, username="tess", key_file=tmp_path / "t.json") as tess,
            stream(address, await sam.access_token()) as listener,
            stream(address, await tess.access_token()) as publisher,
        ):

            async def next_message() -> tuple[str, int]:
                got = await asyncio.wait_for(listener.subject_events.get(), 3)
                return got.subject, int(json_format.MessageToDict(got.data)["n"])

            for pattern in ("presence:*", "presence:l*", "presence:lobby"):
                await listener.ok(subject_subscribe=subscribe(pattern))
            await publisher.ok(subject_publish=publish("presence:lobby", 1))
            await publisher.ok(subject_publish=publish("presence:lobby", 2))
            assert [await next_message(), await next_message()] == [("presence:lobby", 1), ("presence:lobby", 2)]
            assert handler_calls["subject.presence:lobby"] == 2  # one handler per publish, not one per pattern

            # Without the outer wildcard, the inner one still hears the lobby, and only what it matches.
            await listener.ok(subject_unsubscribe=gateway_pb2.SubjectUnsubscribeCommand(subject="presence:*"))
            await publisher.ok(subject_publish=publish("presence:hall", 3))
            await publisher.ok(subject_publish=publish("presence:lobby", 4))
            assert await next_message() == ("presence:lobby", 4)
            await listener.ok(subject_unsubscribe=gateway_pb2.SubjectUnsubscribeCommand(subject="presence:l*"))
            await publisher.ok(subject_publish=publish("presence:lounge", 5))
            await publisher.ok(subject_publish=publish("presence:lobby", 6))
            assert await next_message() == ("presence:lobby", 6)
            assert handler_calls["subject.presence:lobby"] == 4
            assert listener.subject_events.empty()
