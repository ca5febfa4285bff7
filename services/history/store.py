"""Per-room log state on SQLite."""

from __future__ import annotations

import dataclasses

import sqlite_utils


def _migration_1(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE room_logs (
            room_id TEXT PRIMARY KEY,
            epoch TEXT NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        ) WITHOUT ROWID
        """
    )


MIGRATIONS = [_migration_1]


@dataclasses.dataclass(frozen=True)
class LogStateRow:
    room_id: str
    epoch: str
    last_seq: int
    created_at: float


def log_state(db: sqlite_utils.Database, room_id: str) -> LogStateRow | None:
    """The room's log state; None for a room whose log was never started."""
    row = db.execute(
        "SELECT room_id, epoch, last_seq, created_at FROM room_logs WHERE room_id = ?", [room_id]
    ).fetchone()
    return None if row is None else LogStateRow(*row)
