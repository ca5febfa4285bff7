"""Sends waiting for the server's answer, in the order they were made, optionally kept in a file.

A send (a publish, an edit, a delete, a subject publish) is pending from the
moment the application makes it until the server answers: then it is sent,
or failed with the server's error. Sends made while the client is not
connected wait here (at most `limit`; beyond, `OutboxFullError`), and so do
sends whose stream ended before their answer: they go out again, in order,
once the client is connected. Publishes carry an idempotency key, so one
stored event comes of however many attempts.

With a file, pending sends survive a restart of the application: each is
written (flushed, not fsynced) when made and struck off when answered. A
restored send goes out once its room has been joined again. The server
remembers idempotency keys for `history.idempotency_window_seconds` (600 by
default): a restored send whose earlier attempt reached the server longer
ago than that may be stored a second time. One outbox file serves one
client at a time (it is locked).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import fcntl
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc

from parley.errors import ParleyError
from parley.gateway.v1 import gateway_pb2

DEFAULT_OUTBOX_LIMIT = 1000


class OutboxFileInUseError(RuntimeError):
    """Another client (in this or another process) has the outbox file open."""


class OutboxFullError(ParleyError):
    """The outbox already holds its limit of pending sends; wait for some to be answered."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
            f"the outbox holds {limit} pending sends, its limit; wait until the client is connected again",
        )


class SendStatus(enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclasses.dataclass(eq=False)
class Send:
    """One outgoing command and where it stands; `await send` returns the server's Reply or raises its error."""

    id: str
    room_id: str
    request: gateway_pb2.ConnectRequest
    restored: bool = False
    created_at: float = dataclasses.field(default_factory=time.time)
    status: SendStatus = SendStatus.PENDING
    attempts: int = 0
    error: ParleyError | None = None
    reply: gateway_pb2.Reply | None = None
    in_flight: bool = dataclasses.field(default=False, repr=False)
    _waiters: list[asyncio.Future[None]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def kind(self) -> str:
        """The command: "publish", "edit", "delete" or "subject_publish"."""
        return self.request.WhichOneof("command") or ""

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def idempotency_keys(self) -> list[str]:
        return [e.idempotency_key for e in self.request.publish.events] if self.kind == "publish" else []

    async def result(self) -> gateway_pb2.Reply:
        """Waits until the server has answered (or the send gave up); raises its error if it failed."""
        if self.status is SendStatus.PENDING:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.result().__await__()

    def release(self, error: ParleyError | None = None) -> None:
        """Wakes whoever awaits the send: with its outcome, or with `error` while it stays pending."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if error is not None and self.status is SendStatus.PENDING:
                waiter.set_exception(error)
            else:
                waiter.set_result(None)


def give_keys(request: gateway_pb2.ConnectRequest) -> None:
    """Every published event gets an idempotency key, unless the application chose one."""
    if request.WhichOneof("command") == "publish":
        for event in request.publish.events:
            if not event.idempotency_key:
                event.idempotency_key = secrets.token_hex(16)


def _added(send: Send) -> dict[str, object]:
    """A send as the file keeps it (the command as serialized protobuf, base64)."""
    return {
        "op": "add",
        "id": send.id,
        "room_id": send.room_id,
        "created_at": send.created_at,
        "request": base64.b64encode(send.request.SerializeToString()).decode(),
    }


class Outbox:
    """Pending sends in the order made; `path` keeps them across restarts."""

    def __init__(self, limit: int = DEFAULT_OUTBOX_LIMIT, path: Path | None = None) -> None:
        if limit < 1:
            raise ValueError(f"outbox limit must be at least 1, got {limit}")
        self.limit = limit
        self.path = path
        self._sends: dict[str, Send] = {}
        self._unsent_by_room: Counter[str] = Counter()
        self._journal: IO[str] | None = None
        self._lock: IO[str] | None = None
        self._struck = 0
        if path is not None:
            self._lock = _locked(path)
            self._restore(path)

    def __len__(self) -> int:
        return len(self._sends)

    def __iter__(self) -> Iterator[Send]:
        return iter(list(self._sends.values()))

    def new(self, room_id: str, request: gateway_pb2.ConnectRequest) -> Send:
        if len(self._sends) >= self.limit:
            raise OutboxFullError(self.limit)
        give_keys(request)
        send = Send(id=secrets.token_hex(8), room_id=room_id, request=request)
        self._sends[send.id] = send
        self._unsent_by_room[room_id] += 1
        self._write(_added(send))
        return send

    def unsent(self) -> list[Send]:
        """Pending sends not on the wire now, oldest first."""
        return [send for send in self._sends.values() if not send.in_flight]

    def unsent_count(self, room_id: str) -> int:
        return self._unsent_by_room[room_id]

    def on_wire(self, send: Send) -> None:
        send.in_flight = True
        send.attempts += 1
        self._unsent_by_room[send.room_id] -= 1

    def off_wire(self, send: Send) -> None:
        """The stream ended before the answer: the send waits for the next one."""
        if send.in_flight:
            send.in_flight = False
            self._unsent_by_room[send.room_id] += 1

    def finish(self, send: Send, reply: gateway_pb2.Reply | None, error: ParleyError | None) -> None:
        """Answered (or given up): the send leaves the outbox and its file."""
        if self._sends.pop(send.id, None) is None:
            return
        if not send.in_flight:
            self._unsent_by_room[send.room_id] -= 1
        send.in_flight = False
        send.reply, send.error = reply, error
        send.status = SendStatus.FAILED if error is not None else SendStatus.SENT
        self._write({"op": "done", "id": send.id})
        self._struck += 1
        if self.path is not None and self._struck > 2 * len(self._sends) + 100:
            self._compact(self.path)
        send.release()

    def close(self) -> None:
        self._close_journal()
        if self._lock is not None:
            self._lock.close()  # and the lock with it
            self._lock = None

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # The file

    def _write(self, entry: dict[str, object]) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(entry) + "\n")
            self._journal.flush()

    def _restore(self, path: Path) -> None:
        if path.exists():
            pending: dict[str, dict[str, object]] = {}
            with open(path) as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash while it was written
                    if entry.get("op") == "add":
                        pending[entry["id"]] = entry
                    elif entry.get("op") == "done":
                        pending.pop(entry["id"], None)
            for entry in pending.values():
                request = gateway_pb2.ConnectRequest.FromString(base64.b64decode(str(entry["request"])))
                send = Send(
                    id=str(entry["id"]),
                    room_id=str(entry["room_id"]),
                    request=request,
                    restored=True,
                    created_at=float(entry["created_at"]),  # type: ignore[arg-type]
                )
                self._sends[send.id] = send
                self._unsent_by_room[send.room_id] += 1
        self._compact(path)

    def _compact(self, path: Path) -> None:
        """Rewrites the file with the pending sends only (atomically, mode 0600)."""
        self._close_journal()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            for send in self._sends.values():
                handle.write(json.dumps(_added(send)) + "\n")
        os.replace(tmp, path)
        self._struck = 0
        self._journal = open(path, "a")  # noqa: SIM115 (kept open for the outbox's life)


def _locked(path: Path) -> IO[str]:
    """An exclusive lock on `<path>.lock`, held while the returned file is open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (held for the outbox's life)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutboxFileInUseError(f"{path} is in use by another client") from None
    return handle
