"""The one path every outgoing command takes.

Commands that change something the server keeps or relays (publish, edit,
delete, subject publish) go through the outbox: queued while the client is
not connected, sent again after a reconnection when their answer was lost,
each publish with an idempotency key. Other commands (join, leave,
subscribe, ephemeral signals) need the stream as it is: they wait for a
connection that is being restored, and fail when there is none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from parley.connection import Connection, ConnectionState
from parley.errors import ParleyError, UnavailableError, error_from_status
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.outbox import Outbox, Send
from parley.stream import ConnectStream

DEFAULT_MAX_SEND_ATTEMPTS = 5


class Sender:
    def __init__(
        self,
        connection: Connection,
        outbox: Outbox,
        runner: HandlerRunner,
        *,
        max_attempts: int = DEFAULT_MAX_SEND_ATTEMPTS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_send_attempts must be at least 1, got {max_attempts}")
        self._connection = connection
        self.outbox = outbox
        self._runner = runner
        self._max_attempts = max_attempts
        # Whether a room's sends must wait (it is being joined again); set by the room registry.
        self.room_waits: Callable[[Send], bool] = lambda send: False
        connection.on_connected(self.flush)
        connection.on_end(self._stream_ended)
        connection.on_waiting(lambda: len(outbox) > 0)

    async def command(self, *, wait: bool = True, **command: Any) -> gateway_pb2.Reply:
        """A command that is not queued, on the connected stream.

        With `wait` the stream is opened first when there is none, or awaited
        while the client reconnects; without, the command fails at once
        (UnavailableError) unless the client is connected.
        """
        stream = await self._connection.stream() if wait else self._connection.live_stream
        if stream is None:
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, "", f"not connected (the client is {self._connection.state.value})"
            )
        return await stream.command(**command)

    def send(self, room_id: str, **command: Any) -> Send:
        """Queues a command in the outbox and sends it now if it can go now; see the module's text."""
        if self._connection.state is ConnectionState.FAILED and self._connection.failure is not None:
            raise self._connection.failure
        send = self.outbox.new(room_id, gateway_pb2.ConnectRequest(**command))
        stream = self._connection.live_stream
        if stream is not None:
            if not self._waiting_before(send) and not self.room_waits(send):
                self._dispatch(send, stream)
        else:
            self._connection.open_soon()
        return send

    def _waiting_before(self, send: Send) -> bool:
        """An earlier send to the same room has not gone out yet: this one goes after it."""
        return self.outbox.unsent_count(send.room_id) > 1

    def flush(self, stream: ConnectStream | None = None) -> None:
        """Sends what waits, oldest first (on connecting, and when a room has been joined)."""
        stream = stream or self._connection.live_stream
        if stream is None:
            return
        held: set[str] = set()
        for send in self.outbox.unsent():
            if send.room_id in held or self.room_waits(send):
                held.add(send.room_id)  # its room's later sends wait behind it
                continue
            self._dispatch(send, stream)

    def _dispatch(self, send: Send, stream: ConnectStream) -> None:
        try:
            answer = stream.send_request(send.request)
        except UnavailableError:
            return  # the stream just ended: the send waits for the next
        self.outbox.on_wire(send)
        answer.add_done_callback(lambda done: self._answered(send, done))

    def _answered(self, send: Send, answer: asyncio.Future[gateway_pb2.Reply]) -> None:
        if answer.cancelled() or answer.exception() is not None:
            self.outbox.off_wire(send)  # the stream ended before the server answered
            failure = None if answer.cancelled() else answer.exception()
            error = failure if isinstance(failure, ParleyError) else _stream_ended()
            if send.attempts >= self._max_attempts:
                self._finish(send, None, _gave_up(send, error))
            elif self._connection.state in (ConnectionState.DISCONNECTED, ConnectionState.FAILED):
                self._give_up(send, self._connection.failure or error)
            return
        reply = answer.result()
        self._finish(send, reply, error_from_status(reply.status) if reply.status.code else None)

    def _finish(self, send: Send, reply: gateway_pb2.Reply | None, error: ParleyError | None) -> None:
        self.outbox.finish(send, reply, error)
        self._runner.fire("message_failed" if error is not None else "message_sent", send)

    def _stream_ended(self, error: ParleyError | None, reconnecting: bool) -> None:
        if not reconnecting:
            for send in self.outbox.unsent():
                self._give_up(send, self._connection.failure or error or _stream_ended())

    def _give_up(self, send: Send, error: ParleyError) -> None:
        """No stream is coming: a kept outbox holds on to the send for the next run; otherwise it fails."""
        if self.outbox.path is not None:
            send.release(error)
        else:
            self._finish(send, None, error)


def _stream_ended() -> ParleyError:
    return UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the stream ended before the server answered")


def _gave_up(send: Send, error: ParleyError) -> ParleyError:
    return UnavailableError(
        error.code, error.reason, f"gave up after {send.attempts} attempts: {error.message}", error.metadata
    )
