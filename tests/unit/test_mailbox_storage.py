"""Mailboxes on SQLite and PostgreSQL: order, idempotent deposits, acknowledgements, expiry, and two
storages on one database depositing at once (issue 12 part 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.history.mailbox_storage import MailboxStorage, NewEnvelope, open_mailbox_storage
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]
DAY = 86_400.0


@pytest.fixture
async def mailboxes(storage_url: str, tmp_path: Path) -> AsyncIterator[list[MailboxStorage]]:
    opened: list[MailboxStorage] = []
    try:
        for _ in range(2):
            opened.append(await open_mailbox_storage(storage_config(tmp_path, storage_url)))
        yield opened
    finally:
        for storage in opened:
            await storage.close()


def envelope(device: str, message: str, sender_device: str = "dsender") -> NewEnvelope:
    return NewEnvelope(device, "usender", sender_device, message, f"sealed {message} for {device}".encode())


async def test_a_device_reads_its_envelopes_in_order_and_acks_delete_them(mailboxes: list[MailboxStorage]) -> None:
    box = mailboxes[0]
    positions = await box.deposit(
        [envelope("dphone", "m1"), envelope("dlaptop", "m1"), envelope("dphone", "m2")], 0, DAY
    )
    assert positions == sorted(positions)
    phone = await box.pending("dphone", 0, 100, now=1)
    assert [e.message_id for e in phone] == ["m1", "m2"]
    assert phone[0].ciphertext == b"sealed m1 for dphone"
    assert [e.message_id for e in await box.pending("dphone", phone[0].seq, 100, now=1)] == ["m2"]
    assert await box.ack("dphone", phone[0].seq) == 1
    assert [e.message_id for e in await box.pending("dphone", 0, 100, now=1)] == ["m2"]
    assert [e.message_id for e in await box.pending("dlaptop", 0, 100, now=1)] == ["m1"], "each device its own"


async def test_a_repeated_deposit_is_kept_once_with_its_first_position(mailboxes: list[MailboxStorage]) -> None:
    first = await mailboxes[0].deposit([envelope("dphone", "m1")], 0, DAY)
    again = await mailboxes[1].deposit([envelope("dphone", "m1"), envelope("dphone", "m1", "dother")], 5, DAY)
    assert again[0] == first[0]
    assert again[1] > first[0], "the same message id from another device is another envelope"
    assert len(await mailboxes[0].pending("dphone", 0, 100, now=6)) == 2


async def test_racing_deposits_from_two_processes_all_arrive_once_in_a_single_order(
    mailboxes: list[MailboxStorage],
) -> None:
    deposits = [mailboxes[n % 2].deposit([envelope("dphone", f"m{n}", f"d{n % 3}")], 0, DAY) for n in range(40)]
    positions = [p for batch in await asyncio.gather(*deposits) for p in batch]
    assert len(set(positions)) == 40
    stored = await mailboxes[1].pending("dphone", 0, 100, now=1)
    assert [e.seq for e in stored] == sorted(positions)


async def test_expired_envelopes_are_neither_read_nor_kept(mailboxes: list[MailboxStorage]) -> None:
    box = mailboxes[0]
    await box.deposit([envelope("dphone", "old")], 0, 10)
    await box.deposit([envelope("dphone", "new")], 5, 10)
    assert [e.message_id for e in await box.pending("dphone", 0, 100, now=12)] == ["new"]
    assert await box.prune(now=12) == 1
    assert await box.prune(now=12) == 0
    assert [e.message_id for e in await box.pending("dphone", 0, 1, now=0)] == ["new"]


async def test_a_reader_that_follows_its_cursor_misses_nothing_while_deposits_race(
    mailboxes: list[MailboxStorage],
) -> None:
    """Positions become visible in their order: a reader reading on from the last position it saw
    (as a gateway does) never skips an envelope that commits late with a lower position."""
    done = asyncio.Event()
    seen: list[int] = []

    async def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = await mailboxes[0].pending("dphone", cursor, 500, now=1)
            seen.extend(e.seq for e in page)
            cursor = page[-1].seq if page else cursor
            if finished and not page:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(follow())
    deposits = [mailboxes[n % 2].deposit([envelope("dphone", f"m{n}", f"d{n}")], 0, DAY) for n in range(80)]
    positions = [p for batch in await asyncio.gather(*deposits) for p in batch]
    done.set()
    await reader
    assert sorted(seen) == sorted(positions), "every envelope seen once, none skipped"


async def test_held_counts_what_each_mailbox_holds(mailboxes: list[MailboxStorage]) -> None:
    await mailboxes[0].deposit([envelope("dphone", "m1"), envelope("dphone", "m2"), envelope("dlaptop", "m1")], 0, DAY)
    assert await mailboxes[1].held(["dphone", "dlaptop", "dnone"]) == {"dphone": 2, "dlaptop": 1, "dnone": 0}
