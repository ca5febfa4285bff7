"""The browser path: sessions opened by Subscribe, whose commands come one by one through SendCommand.

A Subscribe session is a Connect session whose commands arrive in an inbox
instead of on the stream: each SendCommand call puts its command there and
waits for the Reply. The session's command reader takes them in the order
they came, exactly as it reads a Connect stream's commands (see
Realtime.connect), so the same lanes order them: commands naming one room run
in the order their calls reached the session. (gRPC keeps no order between
calls under way at once: a client that needs one waits for each reply.)

The Reply to a ping goes on the session's Subscribe stream too, after it
answers its call: a client's heartbeat then proves that the stream still
carries frames, which the SendCommand answer alone cannot (a stalled stream
would go unnoticed while calls get through).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from services.gateway.commands import status_of
from services.gateway.connections import Connection
from services.runtime.errors import ServiceError, invalid_field, not_found, rate_limited

# What a command refused for a full inbox is told to wait before it is sent again.
FULL_INBOX_RETRY_SECONDS = 0.1


def session_not_found(session_id: str, why: str = "") -> ServiceError:
    return not_found(
        errors_pb2.ERROR_REASON_SESSION_NOT_FOUND,
        f"no Subscribe session {session_id!r} of this device on this gateway{why}; subscribe again",
        session_id=session_id,
    )


class CommandInbox:
    """One session's commands from SendCommand calls, in the order they came, and their replies.

    Each command is renamed with an id of the inbox's own while it runs (the
    callers' request ids need not be unique), and its caller's id is put back
    in the Reply. At most `limit` commands wait for their reply at once; more
    are answered RATE_LIMITED, as a Connect stream would stop reading them.
    The Reply to a ping, refused or not, also goes where `stream_pings_to`
    says once its caller has it.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: asyncio.Queue[gateway_pb2.ConnectRequest] = asyncio.Queue()
        self._ids = itertools.count(1)
        # Own id -> (the caller's request id, where its Reply goes, whether it answers a ping).
        self._waiting: dict[str, tuple[str, asyncio.Future[gateway_pb2.Reply], bool]] = {}
        self._closed_for: str | None = None
        self._on_stream: Callable[[gateway_pb2.Reply], None] | None = None

    def stream_pings_to(self, on_stream: Callable[[gateway_pb2.Reply], None]) -> None:
        """Where the replies to pings go besides their calls: the session's Subscribe stream."""
        self._on_stream = on_stream

    async def commands(self) -> AsyncIterator[gateway_pb2.ConnectRequest]:
        """The session's command reader takes the commands from here, until it is stopped."""
        while True:
            yield await self._queue.get()

    async def run(self, command: gateway_pb2.ConnectRequest) -> gateway_pb2.Reply:
        """Queues the command for the session and waits for its Reply."""
        if self._closed_for is not None:
            raise session_not_found(self._closed_for)
        caller_id = command.request_id
        is_ping = command.WhichOneof("command") == "ping"
        if len(self._waiting) >= self._limit:
            refused = rate_limited(
                f"at most {self._limit} commands of a session wait for their reply at once",
                FULL_INBOX_RETRY_SECONDS,
            )
            reply = gateway_pb2.Reply(request_id=caller_id, status=status_of(refused))
            self._answered(reply, is_ping)
            return reply
        own_id = str(next(self._ids))
        answer: asyncio.Future[gateway_pb2.Reply] = asyncio.get_running_loop().create_future()
        self._waiting[own_id] = (caller_id, answer, is_ping)
        command.request_id = own_id
        self._queue.put_nowait(command)
        return await answer

    def answer(self, reply: gateway_pb2.Reply) -> None:
        """The session's reply channel: the Reply goes to the SendCommand call that is waiting for it."""
        waiting = self._waiting.pop(reply.request_id, None)
        if waiting is None:
            return  # answered after the session ended: its caller was told so
        caller_id, answer, is_ping = waiting
        reply.request_id = caller_id
        if not answer.done():  # its caller may have gone (the command ran all the same)
            answer.set_result(reply)
        self._answered(reply, is_ping)

    def _answered(self, reply: gateway_pb2.Reply, is_ping: bool) -> None:
        """A command's caller has its Reply: a ping's goes on the Subscribe stream too."""
        if is_ping and self._on_stream is not None:
            self._on_stream(reply)

    def close(self, session_id: str) -> None:
        """The session ended: commands not answered yet, and any sent from now on, find no session."""
        self._closed_for = session_id
        gone = session_not_found(session_id, " (it ended before the command was answered)")
        for _, answer, _ in self._waiting.values():
            if not answer.done():
                answer.set_exception(gone)
        self._waiting.clear()


class BrowserSessions:
    """This gateway's Subscribe sessions, by session id, for the SendCommand calls addressed to them."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Connection, CommandInbox]] = {}

    def open(self, connection: Connection, inbox: CommandInbox) -> None:
        self._open[connection.session_id] = (connection, inbox)

    def ended(self, connection: Connection) -> None:
        found = self._open.pop(connection.session_id, None)
        if found is not None:
            found[1].close(connection.session_id)

    async def send(
        self, request: gateway_pb2.SendCommandRequest, user_id: str, device_id: str
    ) -> gateway_pb2.SendCommandResponse:
        """Runs the command in the caller's own session (SESSION_NOT_FOUND for anyone else's)."""
        if not request.session_id:
            raise invalid_field("session_id", "is required: the session_id of your Subscribe stream's Welcome")
        found = self._open.get(request.session_id)
        if found is None or (found[0].user_id, found[0].device_id) != (user_id, device_id):
            raise session_not_found(request.session_id)
        reply = await found[1].run(request.command)
        return gateway_pb2.SendCommandResponse(reply=reply)
