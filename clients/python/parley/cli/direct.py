"""CLI commands for end-to-end encrypted direct messages: dm, inbox, safety-number, trust.

Each command opens this device's key store, which on first use pins our own
key and publishes the device's prekeys: a device can receive direct messages
once one of these commands has run on it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from parley.cli.chat_lines import clock, from_ms, payload_text
from parley.cli.people import UserNames, UserProfile, look_up
from parley.client import Client
from parley.connection import ConnectionState
from parley.crypto.errors import CryptoError, KeyChangedError
from parley.direct_messages import DirectMessage, DirectSent, RejectedEnvelope
from parley.errors import ParleyError


def key_changed_advice(name: str) -> str:
    return (
        f"{name}'s user key changed since you first used it; compare `parley safety-number {name}` with {name} "
        f"in person or over another channel you trust, then accept the new key with `parley trust {name} NUMBER`"
    )


async def send_text(client: Client, who: str, text: str) -> None:
    """`parley dm USER TEXT`: sends {"text": TEXT} and says how many devices got it."""
    peer = await look_up(client, who)
    try:
        sent = await client.message.send(f"user:{peer.user_id}", {"text": text})
    except KeyChangedError:
        raise SystemExit(f"error: not sent: {key_changed_advice(peer.username)}") from None
    if not sent.device_ids:
        raise SystemExit(
            f"error: not sent: no device of {peer.username} can receive direct messages yet; a device can once "
            "its keys are published (`user register` does; an added device on its first `parley inbox`)"
        )
    print(sent_line(peer, sent))


def sent_line(peer: UserProfile, sent: DirectSent) -> str:
    """ "sent to bob (2 devices, 1 of your other devices); 1 device could not get it …"."""
    theirs = {device.device_id for device in peer.devices}
    to_them = sum(device_id in theirs for device_id in sent.device_ids)
    copies = len(sent.device_ids) - to_them
    line = f"sent to {peer.username} ({_count(to_them, 'device')}"
    line += f", {copies} of your other devices)" if copies else ")"
    if sent.unreachable_device_ids:
        line += (
            f"; {_count(len(sent.unreachable_device_ids), 'device')} could not get it (keys not published yet, "
            f"or not vouched for by their user's key): {', '.join(sent.unreachable_device_ids)}"
        )
    return line


async def inbox(client: Client, *, wait: float, follow: bool) -> None:
    """`parley inbox`: prints messages as they are handed over until none came for `wait` seconds (or Ctrl-C)."""
    printer = InboxPrinter(client)
    client.message.on_rejected(printer.rejected)
    client.on_state(printer.state_changed)
    await client.message.subscribe(f"user:{client.user_id}", printer.message)
    await client.stream()  # the mailbox is handed over on the stream
    await printer.until_quiet(None if follow else wait)
    if not printer.lines:
        print("no new messages")


class InboxPrinter:
    """Prints each direct message, and each one held or dropped, as a line; the SDK acknowledges a message
    once `message` has returned, so a message is removed from the server only after it was printed."""

    def __init__(self, client: Client) -> None:
        self._me = client.user_id
        self._names = UserNames(client)
        self._activity: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self._held_from: set[str] = set()
        self.lines = 0

    async def message(self, message: DirectMessage) -> None:
        when = self._when(message.sent_at_ms)
        peer = await self._name(message.peer_user_id)
        if message.sender_user_id == self._me:
            self._print(f"{when} you → {peer}: {payload_text(message.data)}")
        else:
            self._print(f"{when} {peer}: {payload_text(message.data)}")
        if message.missed_before:
            missed = _count(message.missed_before, "earlier message")
            self._print(f"{when} -- {missed} from that device of {peer} did not arrive (yet)")

    async def rejected(self, envelope: RejectedEnvelope, error: CryptoError) -> None:
        sender = await self._name(envelope.sender_user_id)
        when = self._when()
        if not isinstance(error, KeyChangedError):
            self._print(f"{when} -- a message from {sender} was dropped: {error}")
        elif envelope.sender_user_id not in self._held_from:
            await self.held_from(envelope.sender_user_id)
        else:
            self._activity.put_nowait(None)

    async def held_from(self, user_id: str) -> None:
        self._held_from.add(user_id)
        sender = await self._name(user_id)
        self._print(f"{self._when()} -- messages from {sender} are held: {key_changed_advice(sender)}")

    def state_changed(self, state: ConnectionState, error: ParleyError | None) -> None:
        if state is ConnectionState.FAILED:
            self._activity.put_nowait(error or SystemExit("error: the connection to the server failed"))

    async def until_quiet(self, wait: float | None) -> None:
        """Returns once nothing arrived for `wait` seconds (never with None); raises a failed connection's error."""
        while True:
            try:
                failure = await asyncio.wait_for(self._activity.get(), wait)
            except TimeoutError:
                return
            if failure is not None:
                raise failure

    def _print(self, line: str) -> None:
        print(line, flush=True)
        self.lines += 1
        self._activity.put_nowait(None)

    async def _name(self, user_id: str) -> str:
        return await self._names.of(user_id) or user_id

    @staticmethod
    def _when(time_ms: int | None = None) -> str:
        now = datetime.now().astimezone()
        return f"[{clock(from_ms(time_ms) if time_ms is not None else now, now)}]"


async def show_safety_number(client: Client, who: str) -> None:
    """`parley safety-number USER`: the number for the key pinned for USER, and for the one presented now if
    it differs."""
    peer = await look_up(client, who)
    name = peer.username
    number = await client.safety_number(peer.user_id)
    presented = await client.safety_number(peer.user_id, presented=True)
    print(f"safety number with {name}:")
    print(f"  {number}")
    print(
        f"compare it with {name} in person or over another channel you trust: {name} sees the same digits "
        "(`parley safety-number` on their side) when both of you have the right keys"
    )
    if presented != number:
        print(f"{name}'s key is not the one you pinned on first use; the server presents a key with this number:")
        print(f"  {presented}")
        print(f"if {name} reads you these digits, accept it with `parley trust {name} {presented.digits}`")


async def trust_user(client: Client, who: str, digits: str | None) -> None:
    """`parley trust USER [NUMBER]`: pins the key the server presents for USER now, if it gives NUMBER."""
    peer = await look_up(client, who)
    name = peer.username
    presented = await client.safety_number(peer.user_id, presented=True)
    if digits is None:
        raise SystemExit(
            f"error: compare first: the key the server presents for {name} gives\n  {presented}\n"
            f"if {name} sees the same digits, run `parley trust {name} {presented.digits}`"
        )
    try:
        await client.trust(peer.user_id, safety_number=digits)
    except KeyChangedError:
        raise SystemExit(
            f"error: not trusted: {name}'s key gives another number now:\n  {presented}\n"
            "compare again; a number that does not match means someone is in the middle"
        ) from None
    print(f"trusted {name}'s current key; safety number: {await client.safety_number(peer.user_id)}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
