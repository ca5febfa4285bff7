"""`client.message`: pub/sub subjects (plaintext, never stored) and end-to-end encrypted direct messages
to "user:<id>" (see `direct_messages`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from parley.errors import UnavailableError
from parley.files import media_body, sent_or_deleted
from parley.gateway.v1 import gateway_pb2
from parley.values import to_value

if TYPE_CHECKING:
    from pathlib import Path

    from parley.connection import Connection
    from parley.direct_messages import DirectHandler, DirectMessages, DirectSent, RejectedHandler
    from parley.files import Files, Progress
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


DIRECT_PREFIX = "user:"


class Messages:
    """`client.message.subscribe("presence:*", handler)`, `client.message.publish(subject, data)`;
    `client.message.send("user:<id>", data)` and `client.message.subscribe("user:<my id>", handler)`."""

    def __init__(
        self,
        sender: Sender,
        runner: HandlerRunner,
        connection: Connection,
        direct: DirectMessages,
        user_id: Callable[[], str],
        files: Files,
    ) -> None:
        self._sender = sender
        self._files = files
        self._runner = runner
        self._direct = direct
        self._user_id = user_id
        self._handlers: dict[str, list[MessageHandler]] = {}
        connection.on_open(self.resubscribe)

    async def send(self, target: str, data: Any, *, message_id: str | None = None) -> DirectSent:
        """Sends `data` (any JSON value) end-to-end encrypted to "user:<id>": sealed for each of their devices
        and your own other devices, kept for offline ones until they come online. Raises `KeyChangedError`
        (parley.crypto.errors) when the user's key is not the one pinned."""
        return await self._direct.send(_direct_user(target), data, message_id=message_id)

    async def send_file(
        self,
        target: str,
        source: bytes | Path | str,
        *,
        name: str | None = None,
        media_type: str | None = None,
        caption: str = "",
        thumbnail: bool = True,
        progress: Progress | None = None,
    ) -> DirectSent:
        """Encrypts and uploads a file (`client.files.put`), then sends its reference, its key and (for an
        image) a thumbnail to "user:<id>" as a direct message; the recipient's `DirectMessage.media` holds
        them and `client.files.get(message.media.file)` fetches the file."""
        user_id = _direct_user(target)
        media = await self._files.put_media(
            source, name=name, media_type=media_type, caption=caption, thumbnail=thumbnail, progress=progress
        )
        return await sent_or_deleted(self._files, media, self._direct.send(user_id, media_body(media)))

    def on_rejected(self, handler: RejectedHandler) -> None:
        """Calls `handler(envelope, error)` for a direct message that failed a check (forged, replayed,
        corrupt, or from a user whose key changed: that one waits for `client.trust(user)`)."""
        self._direct.on_rejected(handler)

    async def held(self) -> dict[str, int]:
        """Direct messages kept aside because their sender's key changed, by sender: they reach your handler
        once you `client.trust(sender)`."""
        return await self._direct.held()

    async def subscribe(self, subject: str, handler: MessageHandler | DirectHandler) -> None:
        """Calls `handler(message)` for each message on `subject` (a prefix when it ends in "*").

        "user:<your user id>" receives your direct messages, decrypted, as `DirectMessage`s."""
        if subject.startswith(DIRECT_PREFIX):
            if _direct_user(subject) != self._user_id():
                raise ValueError(f"only your own direct messages can be subscribed to: user:{self._user_id()}")
            await self._direct.subscribe(handler)  # type: ignore[arg-type]
            return
        if subject not in self._handlers:
            await self._sender.command(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=subject))
            self._handlers[subject] = []
        self._handlers[subject].append(handler)  # type: ignore[arg-type]

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


def _direct_user(target: str) -> str:
    user_id = target.removeprefix(DIRECT_PREFIX)
    if not target.startswith(DIRECT_PREFIX) or not user_id:
        raise ValueError(f"direct messages go to 'user:<user id>', not {target!r}")
    return user_id
