"""The bus's prefix index: what a naive scan delivers, at the cost of the subject's length."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.values import to_value
from services.gateway.connections import Connection
from services.gateway.outbox import FlushScheduler, Outbox
from services.gateway.subjects import SubjectRouter
from services.runtime.bus import BusMessage, Handler, InProcessBus, Subscription
from services.runtime.errors import ServiceError
from services.runtime.prefix_tree import PrefixTree

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
            self.subscription: Subscription = bus.add_prefix(pattern[:-1], handler)
        else:
            self.subscription = bus.add(pattern, handler)

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
            bus.deliver(BusMessage(argument, b"", {}))
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
        bus.add_prefix(f"subject.presence:{n:05d}", handler)
    bus.add_prefix("subject.presence:", handler)
    walk = bus.prefixes.path
    visited: list[object] = []

    def counted(key: str) -> Iterator[object]:
        for node in walk(key):
            visited.append(node)
            yield node

    monkeypatch.setattr(bus.prefixes, "path", counted)
    subject = "subject.presence:lobby"
    bus.deliver(BusMessage(subject, b"", {}))
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
            await router.subscribe(connection(f"u{n}"), pattern)
    bob = connection("bob")
    await router.subscribe(bob, "user:bob")
    await router.publish("user:bob", "alice", to_value("psst"))
    assert bob.outbox.pending_bytes > 0
    assert bus.deliveries == 1  # bob's own subscription, not 2,000 wildcards filtered one by one


@pytest.mark.parametrize("pattern", ["*", "u*", "user*", "user:*", "user:m*", "user:me", "user:me*"])
async def test_a_wildcard_over_user_subjects_delivers_only_the_subscribers_own(pattern: str) -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=1000)
    me = connection("me")
    await router.subscribe(me, pattern)
    await router.publish("user:you", "x", to_value(1))
    await router.publish("user:mine", "x", to_value(1))
    assert me.outbox.pending_bytes == 0
    await router.publish("user:me", "x", to_value(2))
    delivered = me.outbox.pending_bytes
    assert delivered > 0
    await router.subscribe(me, "user:me")  # an overlapping pattern: still one delivery
    await router.publish("user:me", "x", to_value(2))
    assert me.outbox.pending_bytes == 2 * delivered
    await router.unsubscribe(me, pattern)
    await router.unsubscribe(me, "user:me")
    await router.publish("user:me", "x", to_value(2))
    assert me.outbox.pending_bytes == 2 * delivered


async def test_wildcards_that_cover_user_subjects_still_deliver_the_others() -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=1000)
    me = connection("me")
    await router.subscribe(me, "u*")
    await router.publish("updates:x", "x", to_value(1))
    assert me.outbox.pending_bytes > 0


async def test_a_user_holds_a_limited_number_of_subscriptions_over_all_connections() -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=3)
    first, second = connection("me", "s1"), connection("me", "s2")
    await router.subscribe(first, "a")
    await router.subscribe(first, "b*")
    await router.subscribe(first, "b*")  # already held: not counted twice
    await router.subscribe(second, "a")
    with pytest.raises(ServiceError) as refused:
        await router.subscribe(second, "c")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.reason == "TOO_MANY_SUBSCRIPTIONS"
    assert "3 subject subscriptions" in refused.value.message
    await router.subscribe(connection("someone else"), "c")  # other users have their own allowance
    await router.unsubscribe(first, "a")
    await router.subscribe(second, "c")
    router.unsubscribe_all(first)
    router.unsubscribe_all(second)
    for pattern in ("x", "y", "z"):
        await router.subscribe(second, pattern)


async def test_a_connection_holds_a_limited_number_of_subscriptions() -> None:
    router = SubjectRouter(InProcessBus(), max_per_user=10_000)
    mine = connection("me")
    for n in range(100):
        await router.subscribe(mine, f"s{n}")
    with pytest.raises(ServiceError) as refused:
        await router.subscribe(mine, "one-more")
    assert refused.value.reason == "TOO_MANY_SUBSCRIPTIONS"


class RecordingOutbox(Outbox):
    """An outbox that also counts the subject messages put into it."""

    def __init__(self) -> None:
        super().__init__(FlushScheduler(60), max_bytes=10_000_000, max_frame_bytes=1_000_000)
        self.received = 0

    def put(self, kind: int, data: bytes, *, urgent: bool = False) -> bool:
        self.received += 1
        return super().put(kind, data, urgent=urgent)


def recording(user_id: str, session: str) -> tuple[Connection, RecordingOutbox]:
    outbox = RecordingOutbox()
    return Connection(session_id=session, user_id=user_id, device_id="d", outbox=outbox), outbox


def hears(pattern: str, subject: str, user_id: str) -> bool:
    """The naive rule: the pattern matches, and a `user:` subject is only ever its owner's."""
    if subject.startswith("user:") and subject != f"user:{user_id}":
        return False
    return subject.startswith(pattern[:-1]) if pattern.endswith("*") else subject == pattern


# Stems that nest, and that cross the `user:` boundary, for users "a" and "b".
stems = st.sampled_from(["", "u", "us", "user", "user:", "user:a", "user:ab", "user:b", "x", "xy", "xyz", "y"])
subject_patterns = st.builds(lambda stem, wildcard: stem + ("*" if wildcard or not stem else ""), stems, st.booleans())
published = stems.filter(bool)
CONNECTION_USERS = ("a", "a", "b")  # two streams of one user, one of another
PER_USER_CAP = 6
router_operations = st.lists(
    st.one_of(
        st.tuples(st.just("subscribe"), st.integers(0, 2), subject_patterns),
        st.tuples(st.just("unsubscribe"), st.integers(0, 2), st.integers(0, 10)),
        st.tuples(st.just("close"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("publish"), st.integers(0, 2), published),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(router_operations)
def test_subject_deliveries_equal_a_naive_model(operations: list[tuple[str, int, Any]]) -> None:
    asyncio.run(deliveries_equal_a_naive_model(operations))


async def deliveries_equal_a_naive_model(operations: list[tuple[str, int, Any]]) -> None:
    bus = CountingBus()
    router = SubjectRouter(bus, max_per_user=PER_USER_CAP)
    streams = [recording(user, f"s{n}") for n, user in enumerate(CONNECTION_USERS)]
    model: list[set[str]] = [set() for _ in streams]

    def held_by(user_id: str) -> int:
        return sum(len(model[n]) for n, user in enumerate(CONNECTION_USERS) if user == user_id)

    for action, n, argument in operations:
        mine, user = streams[n][0], CONNECTION_USERS[n]
        if action == "subscribe":
            foreign = argument.startswith("user:") and not argument.endswith("*") and argument != f"user:{user}"
            refused = foreign or (argument not in model[n] and held_by(user) >= PER_USER_CAP)
            if refused:
                with pytest.raises(ServiceError) as error:
                    await router.subscribe(mine, argument)
                assert error.value.reason == ("NOT_OWNER" if foreign else "TOO_MANY_SUBSCRIPTIONS")
            else:
                await router.subscribe(mine, argument)
                model[n].add(argument)
        elif action == "unsubscribe" and model[n]:
            pattern = sorted(model[n])[argument % len(model[n])]
            await router.unsubscribe(mine, pattern)
            model[n].discard(pattern)
        elif action == "close":
            router.unsubscribe_all(mine)
            model[n].clear()
        elif action == "publish":
            for _, outbox in streams:
                outbox.received = 0
            bus.deliveries = 0
            await router.publish(argument, "someone", to_value(1))
            expected = [any(hears(p, argument, user) for p in model[k]) for k, user in enumerate(CONNECTION_USERS)]
            assert [outbox.received for _, outbox in streams] == [int(wanted) for wanted in expected]
            # One handler call per connection reached, however many of its patterns match.
            assert bus.deliveries == sum(expected) <= len(streams)
        assert [mine.subjects for mine, _ in streams] == model
    for mine, _ in streams:
        router.unsubscribe_all(mine)
    assert bus.subscription_count() == 0


NESTED = [f"{'p' * length}*" for length in range(1, 101)]  # p*, pp*, ppp*, ... each covering the next


async def test_nested_wildcards_cost_one_handler_call_per_connection() -> None:
    bus = CountingBus()
    router = SubjectRouter(bus, max_per_user=1000)
    streams = [recording("me", f"s{n}") for n in range(10)]
    for mine, _ in streams:
        for pattern in NESTED:
            await router.subscribe(mine, pattern)
    assert bus.subscription_count() == len(streams)  # `p*` alone stands for the 100 on each connection
    await router.publish("p" * 120, "someone", to_value(1))
    assert bus.deliveries == len(streams)  # not 1,000
    assert [outbox.received for _, outbox in streams] == [1] * len(streams)
    # Caps still count the patterns asked for, not the bus subscriptions behind them.
    with pytest.raises(ServiceError) as refused:
        await router.subscribe(recording("me", "s-extra")[0], "q")
    assert "1000 subject subscriptions" in refused.value.message

    # Unsubscribing the outer wildcard hands its place to the next one in.
    for mine, _ in streams:
        await router.unsubscribe(mine, "p*")
    assert bus.subscription_count() == len(streams)
    bus.deliveries = 0
    await router.publish("p" * 120, "someone", to_value(1))
    await router.publish("p", "someone", to_value(1))  # only `p*` matched this one
    assert bus.deliveries == len(streams)
    assert [outbox.received for _, outbox in streams] == [2] * len(streams)


async def test_exact_subjects_under_a_wildcard_need_no_subscription_of_their_own() -> None:
    bus = CountingBus()
    router = SubjectRouter(bus, max_per_user=1000)
    mine, outbox = recording("me", "s")
    for pattern in ("presence:lobby", "presence:*", "presence:l*", "user:me", "user:*", "*"):
        await router.subscribe(mine, pattern)
    # `*` covers every subject but `user:` ones, which need `owned.user:me`: two subscriptions for six patterns.
    assert bus.subscription_count() == 2
    await router.publish("presence:lobby", "x", to_value(1))
    await router.publish("user:me", "x", to_value(1))
    assert (bus.deliveries, outbox.received) == (2, 2)
    await router.unsubscribe(mine, "*")
    await router.unsubscribe(mine, "presence:*")
    assert bus.subscription_count() == 2  # `presence:l*` and `owned.user:me`
    await router.publish("presence:lobby", "x", to_value(1))
    await router.publish("presence:other", "x", to_value(1))
    assert (bus.deliveries, outbox.received) == (3, 3)
    await router.unsubscribe(mine, "presence:l*")
    await router.publish("presence:lobby", "x", to_value(1))
    assert (bus.deliveries, outbox.received) == (4, 4)  # the exact subscription is back on the bus
    router.unsubscribe_all(mine)
    assert bus.subscription_count() == 0
