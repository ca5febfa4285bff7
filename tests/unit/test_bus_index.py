"""The bus's prefix index: what a naive scan delivers, at the cost of the subject's length."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.values import to_value
from services.gateway.bus import BusMessage, Handler, InProcessBus, Subscription
from services.gateway.connections import Connection
from services.gateway.outbox import FlushScheduler, Outbox
from services.gateway.prefix_tree import PrefixTree
from services.gateway.subjects import SubjectRouter
from services.runtime.errors import ServiceError

# A small alphabet makes prefixes share, split and merge nodes often.
keys = st.text(alphabet="ab.", max_size=6)


def compact(tree: PrefixTree[Any], live_prefixes: int) -> bool:
    """Every node but the root holds a value or forks, so nodes stay within twice the prefixes."""
    return tree.node_count() <= 2 * live_prefixes + 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), keys, st.integers(0, 9)), max_size=40), st.lists(keys, max_size=8))
def test_the_tree_matches_what_a_scan_matches(operations: list[tuple[bool, str, int]], subjects: list[str]) -> None:
    tree: PrefixTree[str] = PrefixTree()
    model: dict[int, str] = {}
    for adding, prefix, token in operations:
        if adding:
            if token in model:  # a token names one subscription: move it
                assert tree.remove(model[token], token)
            tree.add(prefix, token, prefix)
            model[token] = prefix
        else:
            assert tree.remove(model.get(token, prefix), token) == (token in model)
            model.pop(token, None)
        for subject in [*subjects, prefix]:
            assert sorted(tree.matching(subject)) == sorted(p for p in model.values() if subject.startswith(p))
        assert compact(tree, len(set(model.values())))
    for token, prefix in model.items():
        assert tree.remove(prefix, token)
    assert tree.node_count() == 1  # only the root: nothing leaks


def test_removing_twice_or_under_another_prefix_changes_nothing() -> None:
    tree: PrefixTree[str] = PrefixTree()
    tree.add("ab", 1, "x")
    assert not tree.remove("a", 1)
    assert not tree.remove("abc", 1)
    assert tree.remove("ab", 1)
    assert not tree.remove("ab", 1)
    assert tree.node_count() == 1


class Subscribed:
    """One bus subscription of the property test and what it received."""

    def __init__(self, bus: InProcessBus, pattern: str, received: list[tuple[int, str]], number: int) -> None:
        self.pattern = pattern
        handler: Handler = lambda message: received.append((number, message.subject))  # noqa: E731
        if pattern.endswith("*"):
            self.subscription: Subscription = bus.subscribe_prefix(pattern[:-1], handler)
        else:
            self.subscription = bus.subscribe(pattern, handler)

    def wants(self, subject: str) -> bool:
        return subject.startswith(self.pattern[:-1]) if self.pattern.endswith("*") else subject == self.pattern


patterns = st.builds(lambda tail, wildcard: "s." + tail + ("*" if wildcard else ""), keys, st.booleans())
bus_operations = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), patterns),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("publish"), st.builds(lambda tail: "s." + tail, keys)),
    ),
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(bus_operations)
def test_the_bus_delivers_what_a_scan_delivers(operations: list[tuple[str, Any]]) -> None:
    bus = InProcessBus()
    received: list[tuple[int, str]] = []
    live: dict[int, Subscribed] = {}
    numbers = itertools.count()
    for action, argument in operations:
        if action == "subscribe":
            number = next(numbers)
            live[number] = Subscribed(bus, argument, received, number)
        elif action == "cancel" and live:
            number = sorted(live)[argument % len(live)]
            live.pop(number).subscription.cancel()
        elif action == "publish":
            received.clear()
            bus.publish(BusMessage(argument, b"", {}))
            expected = sorted((n, argument) for n, s in live.items() if s.wants(argument))
            assert sorted(received) == expected
    for subscribed in live.values():
        subscribed.subscription.cancel()
        subscribed.subscription.cancel()  # a second cancel is harmless
    assert bus.prefixes.node_count() == 1


def test_a_publish_walks_only_its_own_subject(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = InProcessBus()
    calls: list[str] = []
    handler: Handler = lambda message: calls.append(message.subject)  # noqa: E731
    # 10,000 wildcards that do not match, many sharing the published subject's first characters.
    for n in range(10_000):
        bus.subscribe_prefix(f"subject.presence:{n:05d}", handler)
    bus.subscribe_prefix("subject.presence:", handler)
    walk = bus.prefixes.path
    visited: list[object] = []

    def counted(key: str) -> Iterator[object]:
        for node in walk(key):
            visited.append(node)
            yield node

    monkeypatch.setattr(bus.prefixes, "path", counted)
    subject = "subject.presence:lobby"
    bus.publish(BusMessage(subject, b"", {}))
    assert calls == [subject]  # the one wildcard that matches, once
    assert 0 < len(visited) <= len(subject) + 1


def connection(user_id: str, session: str = "") -> Connection:
    outbox = Outbox(FlushScheduler(60), max_bytes=1_000_000, max_frame_bytes=1_000_000)
    return Connection(session_id=session or f"s-{user_id}", user_id=user_id, device_id="d", outbox=outbox)


class CountingBus(InProcessBus):
    def __init__(self) -> None:
        super().__init__()
        self.deliveries = 0

    def _deliver(self, handler: Handler, message: BusMessage) -> None:  # type: ignore[override]
        self.deliveries += 1
        super()._deliver(handler, message)


async def test_other_users_user_wildcards_are_not_called_for_a_user_subject() -> None:
    bus = CountingBus()
    router = SubjectRouter(bus, max_per_user=1000)
    wildcards = ("user:*", "*", "u*", "user*", "user:u*")
    for n in range(400):
        for pattern in wildcards:
            router.subscribe(connection(f"u{n}"), pattern)
    bob = connection("bob")
    router.subscribe(bob, "user:bob")
    router.publish("user:bob", "alice", to_value("psst"))
    assert bob.outbox.pending_bytes > 0
    assert bus.deliveries == 1  # bob's own subscription, not 2,000 wildcards filtered one by one


@pytest.mark.parametrize("pattern", ["*", "u*", "user*", "user:*", "user:m*", "user:me", "user:me*"])
async def test_a_wildcard_over_user_subjects_delivers_only_the_subscribers_own(pattern: str) -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=1000)
    me = connection("me")
    router.subscribe(me, pattern)
    router.publish("user:you", "x", to_value(1))
    router.publish("user:mine", "x", to_value(1))
    assert me.outbox.pending_bytes == 0
    router.publish("user:me", "x", to_value(2))
    delivered = me.outbox.pending_bytes
    assert delivered > 0
    router.subscribe(me, "user:me")  # an overlapping pattern: still one delivery
    router.publish("user:me", "x", to_value(2))
    assert me.outbox.pending_bytes == 2 * delivered
    router.unsubscribe(me, pattern)
    router.unsubscribe(me, "user:me")
    router.publish("user:me", "x", to_value(2))
    assert me.outbox.pending_bytes == 2 * delivered


async def test_wildcards_that_cover_user_subjects_still_deliver_the_others() -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=1000)
    me = connection("me")
    router.subscribe(me, "u*")
    router.publish("updates:x", "x", to_value(1))
    assert me.outbox.pending_bytes > 0


async def test_a_user_holds_a_limited_number_of_subscriptions_over_all_connections() -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=3)
    first, second = connection("me", "s1"), connection("me", "s2")
    router.subscribe(first, "a")
    router.subscribe(first, "b*")
    router.subscribe(first, "b*")  # already held: not counted twice
    router.subscribe(second, "a")
    with pytest.raises(ServiceError) as refused:
        router.subscribe(second, "c")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.reason == "TOO_MANY_SUBSCRIPTIONS"
    assert "3 subject subscriptions" in refused.value.message
    router.subscribe(connection("someone else"), "c")  # other users have their own allowance
    router.unsubscribe(first, "a")
    router.subscribe(second, "c")
    router.unsubscribe_all(first)
    router.unsubscribe_all(second)
    for pattern in ("x", "y", "z"):
        router.subscribe(second, pattern)


async def test_a_connection_holds_a_limited_number_of_subscriptions() -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=10_000)
    mine = connection("me")
    for n in range(100):
        router.subscribe(mine, f"s{n}")
    with pytest.raises(ServiceError) as refused:
        router.subscribe(mine, "one-more")
    assert refused.value.reason == "TOO_MANY_SUBSCRIPTIONS"
