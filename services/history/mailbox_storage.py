"""Mailboxes: sealed direct-message envelopes waiting for a device, kept by the history service.

The service stores opaque ciphertext addressed to a device id; it never sees
plaintext. Each envelope gets a position (`seq`), increasing in the order
deposited, so a device reads its mailbox in order and acknowledges up to a
position; acknowledged and expired envelopes are deleted. A deposit is
idempotent per (device, sender device, message id): a retried send is kept
once and keeps its position.

SQLite: `mailbox.sqlite3` under the data directory. PostgreSQL: schema
`parley_mailbox` on the history service's storage URL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from services.runtime.config import Config


@dataclasses.dataclass(frozen=True)
class NewEnvelope:
    device_id: str
    sender_user_id: str
    sender_device_id: str
    message_id: str
    ciphertext: bytes


@dataclasses.dataclass(frozen=True)
class EnvelopeRow:
    seq: int
    device_id: str
    sender_user_id: str
    sender_device_id: str
    message_id: str
    ciphertext: bytes
    created_at: float
    expires_at: float


COLUMNS = ", ".join(f.name for f in dataclasses.fields(EnvelopeRow))


class MailboxStorage(Protocol):
    async def deposit(self, envelopes: Sequence[NewEnvelope], now: float, ttl: float) -> list[int]:
        """Stores the envelopes (a repeat of one already stored is not stored again); their positions, in order."""

    async def pending(self, device_id: str, after_seq: int, limit: int, now: float) -> list[EnvelopeRow]:
        """The device's unexpired envelopes after `after_seq`, oldest first, at most `limit`."""

    async def held(self, device_ids: Sequence[str]) -> dict[str, int]:
        """How many envelopes each of these devices holds (expired ones not yet pruned included)."""

    async def ack(self, device_id: str, up_to_seq: int) -> int:
        """Deletes the device's envelopes up to `up_to_seq`; returns how many."""

    async def prune(self, now: float) -> int:
        """Deletes expired envelopes; returns how many."""

    async def close(self) -> None: ...


async def open_mailbox_storage(config: Config) -> MailboxStorage:
    """The mailboxes, opened and migrated, beside the history service's logs."""
    url = config.storage.url_of("history")
    if url:
        # Imported here: psycopg is loaded only by processes that use PostgreSQL.
        from services.history.mailbox_postgres import PostgresMailboxStorage

        return await PostgresMailboxStorage.open(url, config.storage.max_connections)
    from services.history.mailbox_sqlite import SqliteMailboxStorage

    return await SqliteMailboxStorage.open(config.server.data_dir / "mailbox.sqlite3")
