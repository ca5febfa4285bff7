"""Pub/sub subjects through `client.message`: plaintext, never stored."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from parley.errors import UnavailableError
from parley.gateway.v1 import gateway_pb2
from parley.values import to_value

if TYPE_CHECKING:
    from parley.connection import Connection
    from parley.handlers import HandlerRunner
    from parley.sender import Sender
    from parley.stream import ConnectStream


@dataclasses.dataclass(frozen=True)
class SubjectMessage:
    subject: str
    sender: str
    data: Any


MessageHandler = Callable[[SubjectMessage], Awaitable[None] | None]


def matches(pattern: str, subject: str) -> bool:
    return subject.startswith(pattern[:-1]) if pattern.endswith("*") else subject == pattern


class Messages:
    """`client.message.subscribe("presence:*", handler)`, `client.message.publish(subject, data)`."""

    def __init__(self, sender: Sender, runner: HandlerRunner, connection: Connection) -> None:
        self._sender = sender
        self._runner = runner
        self._handlers: dict[str, list[MessageHandler]] = {}
        connection.on_open(self.resubscribe)

    async def subscribe(self, subject: str, handler: MessageHandler) -> None:
        """Calls `handler(message)` for each message on `subject` (a prefix when it ends in "*")."""
        if subject not in self._handlers:
            await self._sender.command(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=subject))
            self._handlers[subject] = []
        self._handlers[subject].append(handler)

    async def unsubscribe(self, subject: str) -> None:
        self._handlers.pop(subject, None)
        with contextlib.suppress(UnavailableError):  # not connected: the next stream is not subscribed to it
            await self._sender.command(
                wait=False, subject_unsubscribe=gateway_pb2.SubjectUnsubscribeCommand(subject=subject)
            )

    async def publish(self, subject: str, data: Any) -> None:
        """Sends `data` (any JSON value) to everyone subscribed to `subject`; queued in the outbox while
        the client reconnects. Subject messages are not stored: one whose answer was lost in a
        reconnection is sent again and may arrive twice."""
        await self._sender.send(
            "", subject_publish=gateway_pb2.SubjectPublishCommand(subject=subject, data=to_value(data))
        )

    async def resubscribe(self, stream: ConnectStream) -> None:
        """Subscriptions live on a stream: a new stream gets them again."""
        for subject in self._handlers:
            await stream.command(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=subject))

    def dispatch(self, event: gateway_pb2.SubjectEvent) -> None:
        message = SubjectMessage(event.subject, event.sender, json_format.MessageToDict(event.data))
        for pattern, handlers in self._handlers.items():
            if matches(pattern, event.subject):
                self._runner.call(handlers, message)
