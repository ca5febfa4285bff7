"""Pub/sub subjects through `client.message`: plaintext, never stored."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from parley.gateway.v1 import gateway_pb2
from parley.rooms import call_handler
from parley.values import to_value

if TYPE_CHECKING:
    from parley.client import Client
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

    def __init__(self, client: Client) -> None:
        self._client = client
        self._handlers: dict[str, list[MessageHandler]] = {}

    async def subscribe(self, subject: str, handler: MessageHandler) -> None:
        """Calls `handler(message)` for each message on `subject` (a prefix when it ends in "*")."""
        stream = await self._client.stream()
        if subject not in self._handlers:
            await stream.command(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=subject))
            self._handlers[subject] = []
        self._handlers[subject].append(handler)

    async def unsubscribe(self, subject: str) -> None:
        stream = await self._client.stream()
        await stream.command(subject_unsubscribe=gateway_pb2.SubjectUnsubscribeCommand(subject=subject))
        self._handlers.pop(subject, None)

    async def publish(self, subject: str, data: Any) -> None:
        """Sends `data` (any JSON value) to everyone subscribed to `subject`."""
        stream = await self._client.stream()
        await stream.command(subject_publish=gateway_pb2.SubjectPublishCommand(subject=subject, data=to_value(data)))

    async def resubscribe(self, stream: ConnectStream) -> None:
        """Subscriptions live on a stream: a new stream gets them again."""
        for subject in self._handlers:
            await stream.command(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=subject))

    def dispatch(self, event: gateway_pb2.SubjectEvent) -> None:
        message = SubjectMessage(event.subject, event.sender, json_format.MessageToDict(event.data))
        for pattern, handlers in self._handlers.items():
            if matches(pattern, event.subject):
                for handler in handlers:
                    self._client.spawn(call_handler(handler, message))
