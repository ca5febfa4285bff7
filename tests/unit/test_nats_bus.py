"""The NATS bus against the real NATS server on 127.0.0.1:4222, two connections as two processes would hold.

Each test uses its own subject prefix, so tests (and test runs) sharing the server never meet.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.errors import SlowConsumerError

from services.runtime import nats_bus
from services.runtime.bus import BusMessage, InProcessBus
from services.runtime.bus_factory import open_bus
from services.runtime.config import BusConfig, ConfigError, load_config
from services.runtime.nats_bus import NatsBus

NATS_URL = "nats://127.0.0.1:4222"
WAIT_SECONDS = 5.0


def new_prefix() -> str:
    return f"t{secrets.token_hex(6)}"


@pytest.fixture
async def buses() -> AsyncIterator[tuple[NatsBus, NatsBus]]:
    """(publisher, subscriber): two connections under one fresh prefix."""
    prefix = new_prefix()
    first = await NatsBus.connect(NATS_URL, prefix)
    second = await NatsBus.connect(NATS_URL, prefix)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def until(condition: Callable[[], bool], seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def settle(publisher: NatsBus, subscriber: NatsBus) -> None:
    """Everything published so far has been delivered: a marker sent after it has arrived."""
    marker: list[BusMessage] = []
    subscription = await subscriber.subscribe("settle.marker", marker.append)
    await publisher.publish(BusMessage("settle.marker", b"", {}))
    await until(lambda: bool(marker))
    subscription.cancel()


# Delivery


async def test_a_message_crosses_connections_with_its_headers_exactly(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []
    await subscriber.subscribe("room.chat.2024 q3", box.append)
    headers = {"seq": "7", "kind": "event", "note": " spaced\r\n", "ключ": "значение"}
    await publisher.publish(BusMessage("room.chat.2024 q3", b"hello", headers))
    await until(lambda: bool(box))
    (got,) = box
    assert (got.subject, got.data, dict(got.headers)) == ("room.chat.2024 q3", b"hello", headers)


async def test_exact_subjects_and_prefixes_match_whole_names_with_dots_and_spaces(
    buses: tuple[NatsBus, NatsBus],
) -> None:
    publisher, subscriber = buses
    got: dict[str, list[str]] = {"exact a.b": [], "exact a b": [], "prefix a.b": [], "prefix a": [], "prefix sub": []}

    def record(name: str) -> Callable[[BusMessage], None]:
        return lambda message: got[name].append(message.subject)

    await subscriber.subscribe("room.a.b", record("exact a.b"))
    await subscriber.subscribe("room.a b", record("exact a b"))
    await subscriber.subscribe_prefix("room.a.b", record("prefix a.b"))
    await subscriber.subscribe_prefix("room.a", record("prefix a"))
    await subscriber.subscribe_prefix("subject.presence:", record("prefix sub"))
    subjects = ["room.a.b", "room.a.b.c", "room.a.bc", "room.a", "room.a b", "room.x", "subject.a.b"]
    subjects += ["subject.presence:lobby", "subject.presence", "room.presence:lobby"]
    for subject in subjects:
        await publisher.publish(BusMessage(subject, b"", {}))
    await settle(publisher, subscriber)
    assert got == {
        "exact a.b": ["room.a.b"],
        "exact a b": ["room.a b"],
        "prefix a.b": ["room.a.b", "room.a.b.c", "room.a.bc"],
        "prefix a": ["room.a.b", "room.a.b.c", "room.a.bc", "room.a", "room.a b"],
        "prefix sub": ["subject.presence:lobby"],
    }


async def test_a_subscription_is_in_place_when_subscribe_returns(buses: tuple[NatsBus, NatsBus]) -> None:
    # nats-py 2.16's own flush could return before the server had the SUB (services/runtime/nats_bus.py
    # `OrderedFlushClient`): then some of these were lost, in most runs.
    publisher, subscriber = buses
    box: list[BusMessage] = []
    expected = []
    for n in range(200):
        # Published on the other connection right after: it must not pass the subscription.
        await subscriber.subscribe(f"room.fresh.{n}", box.append)
        await publisher.publish(BusMessage(f"room.fresh.{n}", b"", {}))
        await subscriber.subscribe_prefix(f"ns{n}.x", box.append)
        await publisher.publish(BusMessage(f"ns{n}.xy", b"", {}))
        expected += [f"room.fresh.{n}", f"ns{n}.xy"]
    await settle(publisher, subscriber)
    assert sorted(m.subject for m in box) == sorted(expected)


async def test_one_publisher_s_messages_arrive_in_order(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []
    await subscriber.subscribe("room.ordered", box.append)
    for n in range(2000):
        await publisher.publish(BusMessage("room.ordered", str(n).encode(), {}))
    await until(lambda: len(box) == 2000)
    assert [int(m.data) for m in box] == list(range(2000))


async def test_what_was_published_before_close_is_delivered() -> None:
    prefix = new_prefix()
    subscriber = await NatsBus.connect(NATS_URL, prefix)
    box: list[BusMessage] = []
    try:
        await subscriber.subscribe("room.last", box.append)
        publisher = await NatsBus.connect(NATS_URL, prefix)
        for n in range(100):
            await publisher.publish(BusMessage("room.last", str(n).encode(), {}))
        await publisher.close()
        await until(lambda: len(box) == 100)
    finally:
        await subscriber.close()


async def test_a_handler_that_raises_is_logged_and_the_others_still_get_the_message(
    buses: tuple[NatsBus, NatsBus], caplog: pytest.LogCaptureFixture
) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []

    def broken(message: BusMessage) -> None:
        raise RuntimeError("handler bug")

    await subscriber.subscribe("room.r", broken)
    await subscriber.subscribe("room.r", box.append)
    await subscriber.subscribe_prefix("room.", broken)
    await subscriber.subscribe_prefix("room.", box.append)
    with caplog.at_level(logging.ERROR, logger="parley.bus"):
        await publisher.publish(BusMessage("room.r", b"1", {}))
        await publisher.publish(BusMessage("room.r", b"2", {}))
        await until(lambda: len(box) == 4)
    assert sorted(m.data for m in box) == [b"1", b"1", b"2", b"2"]
    assert [r.message for r in caplog.records].count("bus handler failed") == 4


async def test_a_message_parley_did_not_write_is_ignored(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []
    await subscriber.subscribe("room.r", box.append)
    await subscriber.subscribe_prefix("room.", box.append)
    raw = await nats.connect(NATS_URL)
    try:
        prefix = subscriber.nats_subject("room.r").split(".")[0]
        await raw.publish(f"{prefix}.room.r", b"not framed")
        await raw.publish(f"{prefix}.room.~!!", b"\x00\x00\x00\x00")
        await raw.publish(f"{prefix}.room.a.b", b"\x00\x00\x00\x00")
        await raw.flush()
    finally:
        await raw.close()
    await publisher.publish(BusMessage("room.r", b"ours", {}))
    await until(lambda: len(box) == 2)
    await settle(publisher, subscriber)
    assert [m.data for m in box] == [b"ours", b"ours"]


# Sharing NATS subscriptions


async def test_one_nats_subscription_serves_many_handlers_until_the_last_goes(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    boxes: list[list[BusMessage]] = [[] for _ in range(5)]
    subscriptions = [await subscriber.subscribe("room.shared", box.append) for box in boxes]
    prefix_box: list[BusMessage] = []
    prefix_subscriptions = [await subscriber.subscribe_prefix(p, prefix_box.append) for p in ("room.s", "room.sh")]
    assert subscriber.nats_subscription_count() == 2  # room.shared and room.>
    received = subscriber._client().stats["in_msgs"]
    await publisher.publish(BusMessage("room.shared", b"1", {}))
    await until(lambda: all(boxes) and len(prefix_box) == 2)
    # The server sent it once to each NATS subscription, not once per handler.
    assert subscriber._client().stats["in_msgs"] - received == 2

    for subscription in subscriptions[:-1]:
        subscription.cancel()
    subscriptions[0].cancel()  # a second cancel changes nothing
    for subscription in prefix_subscriptions:
        subscription.cancel()
    assert subscriber.nats_subscription_count() == 1
    subscriptions[-1].cancel()
    assert subscriber.nats_subscription_count() == 0

    await subscriber.flush()  # the unsubscriptions have reached the server
    received = subscriber._client().stats["in_msgs"]
    await publisher.publish(BusMessage("room.shared", b"2", {}))
    await publisher.flush()
    await asyncio.sleep(0.2)
    assert subscriber._client().stats["in_msgs"] == received
    assert [len(box) for box in boxes] == [1, 1, 1, 1, 1]


async def test_a_cancelled_subscription_gets_nothing_more_at_once(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []
    subscription = await subscriber.subscribe("room.c", box.append)
    for n in range(500):
        await publisher.publish(BusMessage("room.c", str(n).encode(), {}))
    await until(lambda: bool(box))
    subscription.cancel()
    seen = len(box)
    await settle(publisher, subscriber)
    assert len(box) == seen


async def test_subscribing_again_after_the_last_cancel_gets_each_message_once(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    before: list[BusMessage] = []
    after: list[BusMessage] = []
    for n in range(20):
        await publisher.publish(BusMessage("room.again", f"early {n}".encode(), {}))
    # At the server before anyone subscribes (a publish is buffered until flushed): no subscription gets them.
    await publisher.flush()
    (await subscriber.subscribe("room.again", before.append)).cancel()
    await subscriber.subscribe("room.again", after.append)
    for n in range(20):
        await publisher.publish(BusMessage("room.again", str(n).encode(), {}))
    await until(lambda: len(after) >= 20)
    await settle(publisher, subscriber)
    assert [m.data for m in after] == [str(n).encode() for n in range(20)]
    assert before == []


async def test_concurrent_subscribes_to_one_subject_share_one_nats_subscription(
    buses: tuple[NatsBus, NatsBus],
) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []
    subscriptions = await asyncio.gather(*(subscriber.subscribe("room.together", box.append) for _ in range(10)))
    assert subscriber.nats_subscription_count() == 1
    await publisher.publish(BusMessage("room.together", b"", {}))
    await until(lambda: len(box) == 10)
    for subscription in subscriptions:
        subscription.cancel()
    assert subscriber.nats_subscription_count() == 0


async def test_a_subscribe_cancelled_while_it_waits_leaves_nothing_behind(buses: tuple[NatsBus, NatsBus]) -> None:
    publisher, subscriber = buses
    box: list[BusMessage] = []
    first = asyncio.ensure_future(subscriber.subscribe("room.w", box.append))
    waiting = asyncio.ensure_future(subscriber.subscribe("room.w", box.append))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # The one waiting for the cancelled one's NATS subscription makes its own.
    subscription = await waiting
    await publisher.publish(BusMessage("room.w", b"x", {}))
    await until(lambda: len(box) == 1)
    subscription.cancel()
    assert subscriber.nats_subscription_count() == 0
    await settle(publisher, subscriber)
    assert len(box) == 1


# Gaps and health


async def test_a_subscription_that_falls_behind_is_told_of_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = new_prefix()
    publisher = await NatsBus.connect(NATS_URL, prefix)
    slow = await NatsBus.connect(NATS_URL, prefix)
    gaps: list[str] = []
    delivered: list[BusMessage] = []

    def blocking_handler(message: BusMessage) -> None:
        delivered.append(message)
        time.sleep(0.002)  # a handler far slower than the flood

    try:
        monkeypatch.setattr(nats_bus, "PENDING_MESSAGES", 5)
        await slow.subscribe("room.flood", blocking_handler, on_gap=lambda: gaps.append("exact"))
        await slow.subscribe("room.flood", lambda message: None, on_gap=lambda: gaps.append("exact 2"))
        await slow.subscribe("room.calm", lambda message: None, on_gap=lambda: gaps.append("calm"))
        for n in range(500):
            await publisher.publish(BusMessage("room.flood", str(n).encode(), {}))
        await publisher.flush()
        await until(lambda: bool(gaps))
        await settle(publisher, slow)
        dropped = 500 - len(delivered)
        assert dropped > 0
        assert "calm" not in gaps
        assert gaps.count("exact") == gaps.count("exact 2")
        assert 1 <= gaps.count("exact") <= dropped
        # The subscription goes on (once the five it holds have been handled).
        await asyncio.sleep(0.2)
        await publisher.publish(BusMessage("room.flood", b"after", {}))
        await until(lambda: delivered[-1].data == b"after")
    finally:
        await publisher.close()
        await slow.close()


async def test_a_burst_of_drops_is_told_once(buses: tuple[NatsBus, NatsBus]) -> None:
    _, subscriber = buses
    gaps: list[str] = []
    await subscriber.subscribe("room.burst", lambda message: None, on_gap=lambda: gaps.append("burst"))
    await subscriber.subscribe("room.other", lambda message: None, on_gap=lambda: gaps.append("other"))
    sub = next(s for s in subscriber._client()._subs.values() if s.subject == subscriber.nats_subject("room.burst"))
    # What nats-py does for each message it drops, here three in one read.
    for _ in range(3):
        await subscriber._on_error(SlowConsumerError(sub.subject, "", sub._id, sub))
    await asyncio.sleep(0)
    assert gaps == ["burst"]
    await subscriber._on_error(SlowConsumerError(sub.subject, "", sub._id, sub))
    await asyncio.sleep(0)
    assert gaps == ["burst", "burst"]


class Proxy:
    """A TCP proxy to NATS whose connections can be cut, so that a client must reconnect."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        # What clients sent, as the server got it.
        self.sent = bytearray()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 4222)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray) -> None:
            try:
                while data := await source.read(65536):
                    record += data
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer, self.sent), pipe(upstream_reader, writer, bytearray()))

    def cut(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_subscribe_returns_after_the_server_answered_a_ping_sent_after_the_sub() -> None:
    # nats-py 2.16's own flush wrote its PING ahead of the buffered SUB (see `OrderedFlushClient`).
    proxy = Proxy()
    bus = await NatsBus.connect(await proxy.start(), new_prefix())
    try:
        for subject in ("room.one", "room.two.2"):
            await bus.subscribe(subject, lambda message: None)
            sent = bytes(proxy.sent)
            assert sent.find(f"SUB {bus.nats_subject(subject)} ".encode()) < sent.rfind(b"PING\r\n")
    finally:
        await bus.close()
        await proxy.close()


async def test_a_reconnection_is_a_gap_for_every_subscription_and_shows_in_health() -> None:
    proxy = Proxy()
    prefix = new_prefix()
    bus = await NatsBus.connect(await proxy.start(), prefix)
    publisher = await NatsBus.connect(NATS_URL, prefix)
    health: list[bool] = []
    gaps: list[str] = []
    box: list[BusMessage] = []
    bus.on_health(health.append)
    try:
        assert bus.healthy
        await bus.subscribe("room.a", box.append, on_gap=lambda: gaps.append("a"))
        await bus.subscribe("room.a", lambda message: None, on_gap=lambda: gaps.append("a2"))
        await bus.subscribe_prefix("subject.x", box.append, on_gap=lambda: gaps.append("x"))
        await bus.subscribe("room.quiet", lambda message: None)
        proxy.cut()
        await until(lambda: health == [False, True] and len(gaps) == 3)
        assert sorted(gaps) == ["a", "a2", "x"]
        assert bus.healthy
        # Subscribed again by the time it was told: what is published now arrives.
        await publisher.publish(BusMessage("room.a", b"after", {}))
        await publisher.publish(BusMessage("subject.xy", b"after", {}))
        await until(lambda: len(box) == 2)
    finally:
        await bus.close()
        await publisher.close()
        await proxy.close()


async def test_a_health_handler_that_raises_does_not_stop_the_others() -> None:
    proxy = Proxy()
    bus = await NatsBus.connect(await proxy.start(), new_prefix())
    health: list[bool] = []

    def broken(healthy: bool) -> None:
        raise RuntimeError("health handler bug")

    bus.on_health(broken)
    bus.on_health(health.append)
    try:
        proxy.cut()
        await until(lambda: health == [False, True])
    finally:
        await bus.close()
        await proxy.close()


async def test_closing_is_not_reported_as_ill_health(buses: tuple[NatsBus, NatsBus]) -> None:
    _, subscriber = buses
    health: list[bool] = []
    subscriber.on_health(health.append)
    await subscriber.close()
    assert health == []


# Opening


def refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


async def test_no_nats_server_at_start_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats_bus, "CONNECT_WAIT_SECONDS", 1.5)
    url = refused_url()
    with pytest.raises(ConnectionError, match=f"no NATS server answered at {url} within 1.5 s"):
        await NatsBus.connect(url, new_prefix())


async def test_the_factory_picks_the_bus_by_url() -> None:
    assert isinstance(await open_bus(BusConfig()), InProcessBus)
    for url in (NATS_URL, f"{NATS_URL}, {NATS_URL}", "nats://localhost:4222"):
        bus = await open_bus(BusConfig(url=url, subject_prefix=new_prefix()))
        try:
            assert isinstance(bus, NatsBus)
            assert bus.healthy
        finally:
            await bus.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "127.0.0.1:4222",
        "nats://",
        "nats://127.0.0.1:port",
        "nats://127.0.0.1:99999",
        "nats://127.0.0.1:4222/path",
        f"{NATS_URL},",
        f"{NATS_URL},http://127.0.0.1:4222",
    ],
)
async def test_the_factory_refuses_a_url_that_names_no_bus(url: str) -> None:
    with pytest.raises(ConfigError, match=r"is not nats://host:port"):
        await open_bus(BusConfig(url=url))


async def test_the_factory_refuses_a_subject_prefix_that_is_not_one_token() -> None:
    with pytest.raises(ConfigError, match=r"bus\.subject_prefix"):
        await open_bus(BusConfig(url=NATS_URL, subject_prefix="a.b"))


def test_the_bus_is_configured_by_the_environment() -> None:
    assert load_config().bus == BusConfig(url="", subject_prefix="parley")
    config = load_config(env={"PARLEY_BUS_URL": NATS_URL, "PARLEY_BUS_SUBJECT_PREFIX": "staging"})
    assert config.bus == BusConfig(url=NATS_URL, subject_prefix="staging")
