"""A connection's own state: the registry's indexes, its subjects, and a room's interest read back from names."""

from __future__ import annotations

import pytest

from services.gateway.connections import Connection, ConnectionRegistry, Interest
from services.gateway.outbox import FlushScheduler, Outbox


def connection(session_id: str, user_id: str, device_id: str) -> Connection:
    outbox = Outbox(FlushScheduler(0), max_bytes=1000, max_frame_bytes=1000)
    return Connection(session_id=session_id, user_id=user_id, device_id=device_id, outbox=outbox)


def test_the_registry_finds_connections_by_user_and_device_as_they_come_and_go() -> None:
    registry = ConnectionRegistry()
    phone, laptop, other = (
        connection("s1", "ann", "phone"),
        connection("s2", "ann", "laptop"),
        connection("s3", "bo", "x"),
    )
    second_on_phone = connection("s4", "ann", "phone")
    for each in (phone, laptop, other, second_on_phone):
        registry.add(each)
    assert registry.of_user("ann") == [phone, laptop, second_on_phone]
    assert set(registry.of_device("phone")) == {phone, second_on_phone}
    assert registry.online_users() == ["ann", "bo"]
    registry.remove(phone)
    registry.remove(phone)  # twice: nothing more happens
    assert (registry.of_user("ann"), registry.of_device("phone")) == ([laptop, second_on_phone], [second_on_phone])
    for each in (laptop, second_on_phone, other):
        registry.remove(each)
    assert (registry.online_users(), registry.of_user("ann"), registry.of_device("x"), registry.all()) == (
        [],
        [],
        [],
        [],
    )


def test_removing_a_connection_another_holds_the_key_of_leaves_that_one() -> None:
    registry = ConnectionRegistry()
    kept, stranger = connection("s1", "ann", "phone"), connection("s2", "ann", "phone")
    registry.add(kept)
    registry.remove(stranger)  # never added
    assert (registry.of_user("ann"), registry.of_device("phone")) == ([kept], [kept])


def test_a_connections_subjects_are_a_set_of_its_own() -> None:
    first, second = connection("s1", "ann", "phone"), connection("s2", "ann", "phone")
    first.subjects.add("user:ann")
    assert (first.subjects, second.subjects) == ({"user:ann"}, set())


@pytest.mark.parametrize(
    ("names", "wanted", "unwanted"),
    [(["*", "-typing", "-read"], ["message"], ["typing", "read"]), (["message", "edit"], ["edit"], ["typing"])],
)
def test_an_interest_read_back_from_its_names_is_the_same(
    names: list[str], wanted: list[str], unwanted: list[str]
) -> None:
    interest = Interest.from_names(names)
    assert interest.names() == sorted(names)
    assert all(interest.wants(e) for e in wanted)
    assert not any(interest.wants(e) for e in unwanted)


def test_an_exclusion_without_all_events_is_refused_by_its_first_name() -> None:
    with pytest.raises(ValueError, match="'-typing' excludes an event"):
        Interest.from_names(["message", "-typing", "-read"])
