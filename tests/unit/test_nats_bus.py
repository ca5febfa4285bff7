"""The NATS bus against the real NATS server on 127.0.0.1:4222, two connections as two processes would hold."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime import nats_bus
from services.runtime.bus import BusMessage
from services.runtime.bus_factory import open_bus
from services.runtime.config import BusConfig, ConfigError
from services.runtime.nats_bus import NatsBus, decode_name, encode_name

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def buses() -> AsyncIterator[tuple[NatsBus, NatsBus]]:
    prefix = f"t{secrets.token_hex(6)}"
    first = await NatsBus.connect(NATS_URL, prefix)
    second = await NatsBus.connect(NATS_URL, prefix)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def received_within(box: list[BusMessage], count: int, seconds: float = 3.0) -> list[BusMessage]:
    for _ in range(int(seconds * 100)):
        if len(box) >= count:
            break
        await asyncio.sleep(0.01)
    return box


@given(st.text(max_size=40))
def test_names_become_one_token_and_come_back(name: str) -> None:
    token = encode_name(name)
    assert token
    assert not any(c in token for c in ". *>\t\r\n")
    assert decode_name(token) == name


def test_different_names_never_share_a_token() -> None:
    names = ["a.b", "a_b", "~ab", "ab", "a b", "", "presence:lobby", "ÄÖ", "a>b", "a*"]
    assert len({encode_name(n) for n in names}) == len(names)


async def test_a_message_crosses_connections_with_its_headers(buses: tuple[NatsBus, NatsBus]) -> None:
    first, second = buses
    box: list[BusMessage] = []
    await second.subscribe("room.chat.2024 q3", box.append)
    # Subscribed means subscribed: a publish right after is not lost.
    await first.publish(BusMessage("room.chat.2024 q3", b"hello", {"seq": "7", "kind": "event"}))
    (got,) = await received_within(box, 1)
    assert (got.subject, got.data, dict(got.headers)) == ("room.chat.2024 q3", b"hello", {"seq": "7", "kind": "event"})


async def test_prefixes_are_matched_here_and_exact_subjects_are_not_delivered_twice(
    buses: tuple[NatsBus, NatsBus],
) -> None:
    first, second = buses
    exact: list[BusMessage] = []
    wild: list[BusMessage] = []
    await second.subscribe("subject.presence:lobby", exact.append)
    await second.subscribe_prefix("subject.presence:", wild.append)
    for subject in ("subject.presence:lobby", "subject.presence:hall", "subject.other", "room.presence:lobby"):
        await first.publish(BusMessage(subject, b"x", {}))
    await received_within(wild, 2)
    await asyncio.sleep(0.1)
    assert [m.subject for m in exact] == ["subject.presence:lobby"]
    assert sorted(m.subject for m in wild) == ["subject.presence:hall", "subject.presence:lobby"]


async def test_one_nats_subscription_serves_many_handlers_until_the_last_goes(buses: tuple[NatsBus, NatsBus]) -> None:
    first, second = buses
    boxes: list[list[BusMessage]] = [[], [], []]
    subscriptions = [await second.subscribe("room.shared", box.append) for box in boxes]
    assert len(second._client()._subs) == 1
    assert len(second._shared) == 1
    await first.publish(BusMessage("room.shared", b"1", {}))
    for box in boxes:
        await received_within(box, 1)
    subscriptions[0].cancel()
    subscriptions[0].cancel()  # a second cancel changes nothing
    subscriptions[1].cancel()
    assert len(second._shared) == 1
    subscriptions[2].cancel()
    assert not second._shared
    await first.publish(BusMessage("room.shared", b"2", {}))
    await asyncio.sleep(0.2)
    assert [len(box) for box in boxes] == [1, 1, 1]


async def test_a_subscription_that_falls_behind_is_told_of_the_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    publisher = await NatsBus.connect(NATS_URL, prefix)
    slow = await NatsBus.connect(NATS_URL, prefix)
    gaps: list[str] = []
    try:
        monkeypatch.setattr(nats_bus, "PENDING_MESSAGES", 5)
        await slow.subscribe("room.flood", lambda message: time.sleep(0.02), on_gap=lambda: gaps.append("gap"))
        for n in range(200):
            await publisher.publish(BusMessage("room.flood", str(n).encode(), {}))
        await publisher._client().flush()
        for _ in range(300):
            if gaps:
                break
            await asyncio.sleep(0.01)
        assert gaps
    finally:
        await publisher.close()
        await slow.close()


class Proxy:
    """A TCP proxy to NATS whose connections can be cut, so a client must reconnect."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 4222)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_reconnection_is_a_gap_for_every_subscription_and_shows_in_health() -> None:
    proxy = Proxy()
    bus = await NatsBus.connect(await proxy.start(), f"t{secrets.token_hex(6)}")
    health: list[bool] = []
    gaps: list[str] = []
    bus.on_health(health.append)
    try:
        await bus.subscribe("room.a", lambda message: None, on_gap=lambda: gaps.append("a"))
        await bus.subscribe_prefix("subject.x", lambda message: None, on_gap=lambda: gaps.append("x"))
        proxy.cut()
        for _ in range(500):
            if health == [False, True] and len(gaps) == 2:
                break
            await asyncio.sleep(0.01)
        assert health == [False, True]
        assert sorted(gaps) == ["a", "x"]
        assert bus.healthy
    finally:
        await bus.close()
        await proxy.close()


async def test_the_factory_picks_the_bus_by_url() -> None:
    in_process = await open_bus(BusConfig())
    assert in_process.healthy
    nats = await open_bus(BusConfig(url=NATS_URL, subject_prefix="t" + secrets.token_hex(4)))
    try:
        assert isinstance(nats, NatsBus)
        assert nats.healthy
    finally:
        await nats.close()
    with pytest.raises(ConfigError, match=r"nats://host:port"):
        await open_bus(BusConfig(url="redis://127.0.0.1:6379"))
