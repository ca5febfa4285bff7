"""Subject subscriptions are capped per user over all of the user's streams."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.values import to_value as value
from services import allinone
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
