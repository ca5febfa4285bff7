"""The SDK's connection life: states, backoff, heartbeat, the outbox and its idempotent retries (issue 11)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client, ParleyError, Room, RoomEvent, UnavailableError
from parley.backoff import Backoff
from parley.connection import ConnectionState, Heartbeat
from parley.outbox import OutboxFullError, Send, SendStatus
from parley.room_registry import RoomRegistry
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.chaos_proxy import chaos_proxy
from tests.support import make_config, running, wait_until

ROOMS = [RoomDefinition(id="chat", events=[EventDefinition(name="message", history=HistorySettings(enabled=True))])]
FAST = Backoff(initial=0.02, cap=0.2)


def _config(data_dir: Path, **overrides: object) -> object:
    return make_config(data_dir, rooms=ROOMS, **overrides)


@pytest.fixture
async def chat_server(data_dir: Path) -> AsyncIterator[str]:
    async with running(allinone.create_server, _config(data_dir)) as (_, address):
        yield address


async def _kept(client: Client, room_id: str = "chat") -> list[RoomEvent]:
    return list(reversed(await client.history(room_id, limit=1000)))


async def test_states_go_connecting_connected_reconnecting_connected_with_rooms_resumed(
    data_dir: Path, tmp_path: Path
) -> None:
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with Client(address, username="ann", key_file=tmp_path / "a.json", backoff=FAST) as ann:
            states: list[str] = []
            ann.on_state(lambda state, error: states.append(state.value))
            assert ann.state is ConnectionState.DISCONNECTED
            room = await ann.join("chat")
            assert ann.state is ConnectionState.CONNECTED
            await room.trigger("message", "before")
            await server.stop(1)
            await wait_until(lambda: ann.state is ConnectionState.RECONNECTING)
            async with running(allinone.create_server, _config(data_dir, **{"server.port": port})):
                await wait_until(lambda: ann.state is ConnectionState.CONNECTED, within=15)
                assert room.joined
                await room.trigger("message", "after")
            await wait_until(lambda: states[-1] == "reconnecting")
        await wait_until(lambda: states[-1] == "disconnected")
        assert states[:4] == ["connecting", "connected", "reconnecting", "connected"]


async def test_the_attempt_limit_ends_in_failed_and_queued_sends_fail(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        ann = Client(
            address,
            username="ann",
            key_file=tmp_path / "a.json",
            backoff=Backoff(initial=0.01, cap=0.05, max_attempts=3),
        )
        await ann.connect()
        try:
            errors: list[ParleyError] = []
            ann.on_error(errors.append)
            room = await ann.join("chat")
            await server.stop(0)
            await wait_until(lambda: ann.state is not ConnectionState.CONNECTED)
            queued = room.send("message", "never")
            await wait_until(lambda: ann.state is ConnectionState.FAILED, within=15)
            with pytest.raises(ParleyError):
                await asyncio.wait_for(queued.result(), 5)
            assert queued.status is SendStatus.FAILED
            assert errors, "giving up is reported through on_error"
            with pytest.raises(ParleyError):
                room.send("message", "refused at once")
        finally:
            await ann.close()


async def test_backoff_waits_follow_full_jitter_up_to_the_cap(data_dir: Path, tmp_path: Path) -> None:
    no_drain_hint = _config(data_dir, **{"gateway.drain_reconnect_within_ms": 0})
    async with running(allinone.create_server, no_drain_hint) as (server, address):
        policy = Backoff(initial=0.5, cap=4.0, max_attempts=6)
        waits: list[float] = []

        async def fake_sleep(seconds: float) -> None:  # an injected clock: no real waiting
            waits.append(seconds)

        async with Client(address, username="ann", key_file=tmp_path / "a.json", backoff=policy) as ann:
            ann._connection._sleep = fake_sleep
            await ann.join("chat")
            await server.stop(0)
            await wait_until(lambda: ann.state is ConnectionState.FAILED, within=15)
    assert len(waits) == 6
    for attempt, wait in enumerate(waits):
        assert 0 <= wait <= min(4.0, 0.5 * 2**attempt)


async def test_a_dead_link_is_noticed_within_the_heartbeat_and_the_client_comes_back(
    chat_server: str, tmp_path: Path
) -> None:
    async with chaos_proxy(chat_server) as proxy:
        heartbeat = Heartbeat(interval=0.2, timeout=0.3)
        async with Client(proxy.address, username="ann", key_file=tmp_path / "a.json", heartbeat=heartbeat) as ann:
            room = await ann.join("chat")
            proxy.stall()  # no packet says the link is gone
            stalled_at = time.monotonic()
            await wait_until(lambda: ann.state is not ConnectionState.CONNECTED, within=5, interval=0.02)
            noticed_after = time.monotonic() - stalled_at
            assert noticed_after < 0.2 + 0.3 + 0.5
            await proxy.cut()
            proxy.heal()
            await wait_until(lambda: ann.state is ConnectionState.CONNECTED, within=15)
            assert room.joined
            await room.trigger("message", "alive")


async def test_sends_made_while_reconnecting_wait_in_the_outbox_and_go_out_in_order_once(
    data_dir: Path, tmp_path: Path
) -> None:
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with Client(address, username="ann", key_file=tmp_path / "a.json", backoff=FAST) as ann:
            sent: list[Send] = []
            ann.on_message_sent(sent.append)
            room = await ann.join("chat")
            await server.stop(0)
            await wait_until(lambda: ann.state is ConnectionState.RECONNECTING)
            queued = [room.send("message", n) for n in range(20)]
            assert all(s.status is SendStatus.PENDING for s in queued)
            assert [s.id for s in ann.outbox] == [s.id for s in queued]
            async with running(allinone.create_server, _config(data_dir, **{"server.port": port})):
                seqs = [(await s.result()).publish.seqs[0] for s in queued]
                assert seqs == sorted(seqs)
                kept = await _kept(ann)
                assert [e.data for e in kept] == list(range(20))
                await wait_until(lambda: len(sent) == 20)
                assert {s.id for s in sent} == {s.id for s in queued}
                assert not ann.outbox


async def test_a_send_whose_answer_was_lost_is_sent_again_and_stored_once(chat_server: str, tmp_path: Path) -> None:
    async with chaos_proxy(chat_server) as proxy:
        async with (
            Client(chat_server, username="obs", key_file=tmp_path / "o.json") as observer,
            Client(proxy.address, username="ann", key_file=tmp_path / "a.json", backoff=FAST) as ann,
        ):
            room = await ann.join("chat")
            watched = await observer.join("chat")
            seen: list[RoomEvent] = []
            watched.on("message", seen.append)
            proxy.stall(to_server=False)  # the command reaches the server; its answer does not come back
            pending = room.send("message", "once")
            await wait_until(lambda: len(seen) == 1)
            await proxy.cut()
            proxy.heal()
            reply = await asyncio.wait_for(pending.result(), 15)
            kept = await _kept(observer)
            assert [e.data for e in kept] == ["once"]
            assert reply.publish.seqs[0] == kept[0].seq
            assert pending.retries >= 1
            assert pending.status is SendStatus.SENT
            await asyncio.sleep(0.3)
            assert len(seen) == 1, "a retry is not delivered again"


async def test_an_overfull_outbox_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        async with Client(address, username="ann", key_file=tmp_path / "a.json", backoff=FAST, outbox_limit=3) as ann:
            room = await ann.join("chat")
            await server.stop(0)
            await wait_until(lambda: ann.state is ConnectionState.RECONNECTING)
            for n in range(3):
                room.send("message", n)
            with pytest.raises(OutboxFullError, match="3 pending sends"):
                room.send("message", 3)


async def test_an_outbox_file_keeps_sends_for_the_next_run(data_dir: Path, tmp_path: Path) -> None:
    outbox_file = tmp_path / "outbox.jsonl"
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        first = Client(address, username="ann", key_file=tmp_path / "a.json", backoff=FAST, outbox_file=outbox_file)
        await first.connect()
        room = await first.join("chat")
        await room.trigger("message", "sent in the first run")
        await server.stop(0)
        await wait_until(lambda: first.state is ConnectionState.RECONNECTING)
        kept_for_later = [room.send("message", f"queued {n}") for n in range(3)]
        await first.close()
        assert all(s.status is SendStatus.PENDING for s in kept_for_later)
    assert outbox_file.stat().st_mode & 0o077 == 0
    entries = [json.loads(line) for line in outbox_file.read_text().splitlines()]
    pending = {e["id"] for e in entries if e["op"] == "add"} - {e["id"] for e in entries if e["op"] == "done"}
    assert pending == {s.id for s in kept_for_later}

    async with running(allinone.create_server, _config(data_dir, **{"server.port": port})) as (_, address):
        async with Client(address, key_file=tmp_path / "a.json", outbox_file=outbox_file) as second:
            assert len(second.outbox) == 3
            assert all(s.restored for s in second.outbox)
            sent: list[Send] = []
            second.on_message_sent(sent.append)
            await second.join("chat")  # restored sends go out once their room is joined
            await wait_until(lambda: len(sent) == 3)
            kept = await _kept(second)
            assert [e.data for e in kept] == ["sent in the first run", "queued 0", "queued 1", "queued 2"]
            assert not second.outbox
    entries = [json.loads(line) for line in outbox_file.read_text().splitlines()]
    assert {e["id"] for e in entries if e["op"] == "add"} <= {e["id"] for e in entries if e["op"] == "done"}


async def test_a_receive_stage_that_awaits_keeps_each_rooms_order(chat_server: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    async with (
        Client(chat_server, username="ann", key_file=tmp_path / "a.json") as ann,
        Client(chat_server, username="bob", key_file=tmp_path / "b.json") as bob,
    ):

        async def slow_stage(event: object) -> None:
            await asyncio.sleep(rng.random() / 200)

        bob.add_receive_stage(slow_stage)
        received: list[int] = []
        (await bob.join("chat")).on("message", lambda e: received.append(e.data))
        room = await ann.join("chat")
        await asyncio.gather(*(room.trigger("message", n) for n in range(50)))
        await wait_until(lambda: len(received) == 50)
        assert received == list(range(50))


async def test_a_join_during_close_while_reconnecting_ends_at_once(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        ann = Client(address, username="ann", key_file=tmp_path / "a.json", backoff=Backoff(initial=30.0, cap=30.0))
        await ann.connect()
        await ann.join("chat")
        await server.stop(0)
        await wait_until(lambda: ann.state is ConnectionState.RECONNECTING)
        closing = asyncio.ensure_future(ann.close())
        with pytest.raises(ParleyError):
            await asyncio.wait_for(ann.join("chat"), 5)
        await asyncio.wait_for(closing, 5)
        assert ann.state is ConnectionState.DISCONNECTED


async def test_a_rejoin_that_fails_part_way_leaves_no_room_dead(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms = [*ROOMS, RoomDefinition(id="den")]
    async with running(allinone.create_server, make_config(data_dir, rooms=rooms)) as (_, address):
        async with (
            chaos_proxy(address) as proxy,
            Client(proxy.address, username="ann", key_file=tmp_path / "a.json", backoff=FAST) as ann,
            Client(address, username="bob", key_file=tmp_path / "b.json") as bob,
        ):
            chat = await ann.join("chat")
            await ann.join("den")
            seen: list[object] = []
            chat.on("message", lambda e: seen.append(e.data))
            failures = {"den": 1}
            send_join = RoomRegistry._send_join

            async def flaky_join(self: RoomRegistry, stream: object, room: Room, before: Room | None) -> Room:
                if failures.get(room.id):
                    failures[room.id] -= 1
                    raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the room service blinked")
                return await send_join(self, stream, room, before)  # type: ignore[arg-type]

            monkeypatch.setattr(RoomRegistry, "_send_join", flaky_join)
            await proxy.cut()
            await wait_until(lambda: ann.state is ConnectionState.CONNECTED and failures["den"] == 0, within=15)
            participants = await bob.participants("chat")
            assert ann.user_id in participants, "chat was joined again on the stream that stayed"
            await (await bob.join("chat")).trigger("message", "still here")
            await wait_until(lambda: seen == ["still here"])


async def test_close_fails_pending_sends_whatever_the_state_and_logout_leaves_the_client_usable(
    data_dir: Path, tmp_path: Path
) -> None:
    async with running(allinone.create_server, _config(data_dir)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        ann = Client(address, username="ann", key_file=tmp_path / "a.json", backoff=FAST)
        await ann.connect()
        await ann.logout()
        await asyncio.wait_for(ann.message.publish("news", "after logout"), 10)  # logs in anew
        await server.stop(0)
        await wait_until(lambda: ann.state is not ConnectionState.CONNECTED)
        pending = asyncio.ensure_future(ann.message.publish("news", "never"))
        await asyncio.sleep(0.2)
        await ann.close()
        with pytest.raises(ParleyError):
            await asyncio.wait_for(pending, 5)

    async with running(allinone.create_server, _config(data_dir, **{"server.port": port})) as (server, address):
        bob = Client(address, username="bob", key_file=tmp_path / "b.json", backoff=FAST)
        await bob.connect()
        await server.stop(0)
        queued = asyncio.ensure_future(bob.message.publish("news", "queued while down"))
        with pytest.raises(ParleyError):
            await bob.join("chat")  # the attempt the application asked for fails ...
        async with running(allinone.create_server, _config(data_dir, **{"server.port": port})):
            await asyncio.wait_for(queued, 15)  # ... but the queued send is not stranded
        await bob.close()
