"""`parley chat ROOM`: talk in a room from a terminal, through lost connections and refused lines.

Each line typed goes out as {"text": line} through the client's outbox, so a
line typed while the connection is down is sent once it is back. A refused
line prints why and the chat goes on. Everything shown passes through one
queue, printed in order by one task: the recent history the room sends on
join, a divider, then live messages, presence and connection notices.

Ctrl-D (end of input) leaves once every line typed has been answered: exit
0. Ctrl-C leaves at once: KeyboardInterrupt, which `parley` turns into 130.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime

from parley.cli.chat_input import line_input
from parley.cli.chat_lines import clock, divider, from_ms, message_line, notice_line
from parley.cli.failures import describe
from parley.cli.people import UserNames
from parley.client import Client
from parley.connection import ConnectionState
from parley.errors import ParleyError
from parley.outbox import Send
from parley.room.v1 import room_pb2
from parley.rooms import Room, RoomEvent

ANY_EVENT = "*"


@dataclasses.dataclass(frozen=True)
class Arrival:
    """Someone joined (or left) the room."""

    user_id: str
    joined: bool
    at: datetime


@dataclasses.dataclass(frozen=True)
class Notice:
    text: str
    at: datetime


Shown = RoomEvent | Arrival | Notice | str


async def chat(client: Client, room_id: str, event: str) -> None:
    """Joins ROOM and sends each line typed as EVENT {"text": line}; shows what is said there as it comes."""
    typed = line_input(f"{room_id}> ")
    with typed.screen():
        await ChatSession(client, room_id, event).run(typed.lines())


def write_refusal(room: room_pb2.Room, event: str) -> str | None:
    """Why lines typed here will be refused, known from the room's definition alone; None when they may go."""
    accepted = {definition.name for definition in room.events}
    if not accepted:
        return "read-only: you can read, not write"
    if ANY_EVENT not in accepted and event not in accepted:
        return f"this room takes no {event!r} events: you can read, not write"
    return None


class ChatSession:
    def __init__(self, client: Client, room_id: str, event: str) -> None:
        self._client = client
        self._room_id = room_id
        self._event = event
        self._names = UserNames(client)
        self._screen: asyncio.Queue[Shown | None] = asyncio.Queue()
        self._answers: set[asyncio.Task[None]] = set()
        self._history_shown = 0
        self._live = False
        self._connection_lost = False
        self._room: Room | None = None

    async def run(self, lines: AsyncIterator[str]) -> None:
        room = self._room = await self._client.join(self._room_id)
        # Registered before the next await: presence that came with the join reaches them.
        room.on_presence(lambda user_id, joined: self._arrived(user_id, joined))
        self._client.on_state(self._state_changed)
        self._show(f"in {self._room_id} as {self._client.identity.username}; type to talk, Ctrl-D to leave")
        if (refusal := write_refusal(room.info, self._event)) is not None:
            self._notify(refusal)
        printer = asyncio.create_task(self._print())
        pump = asyncio.create_task(self._pump(room))
        # The join's catch-up frames came ahead of its reply, so they wait in the
        # room's backlog: the pump's first turn moves all of them onto the screen.
        await asyncio.sleep(0)
        self._live = True
        if self._history_shown:
            self._show(divider(self._history_shown))
        typing = asyncio.create_task(self._send_lines(room, lines))
        try:
            await asyncio.wait({typing, pump}, return_when=asyncio.FIRST_COMPLETED)
            if typing.done() and typing.result():
                raise KeyboardInterrupt
            if typing.done():
                await asyncio.gather(*self._answers)  # every line typed is answered before leaving
                await room.leave()
            await pump
            self._screen.put_nowait(None)
            await printer
            if not typing.done():
                raise SystemExit(f"error: left {self._room_id}: the room ended, or the connection gave up")
        finally:
            for task in (typing, pump, printer, *self._answers):
                task.cancel()
            await asyncio.gather(typing, pump, printer, *self._answers, return_exceptions=True)

    async def _send_lines(self, room: Room, lines: AsyncIterator[str]) -> bool:
        """Sends each line typed until the input ends; True when it ended with Ctrl-C."""
        try:
            async for line in lines:
                if line.strip():
                    self._send(room, line)
        except KeyboardInterrupt:
            # Returned, not raised: an exception this task raised would bypass `run`.
            return True
        return False

    def _send(self, room: Room, line: str) -> None:
        try:
            send = room.send(self._event, {"text": line})
        except ParleyError as exc:  # the outbox is full
            self._refused(line, exc)
            return
        if self._client.state is not ConnectionState.CONNECTED:
            self._notify(f"queued {line!r}: it goes out once the connection is back")
        answer = asyncio.create_task(self._await_answer(send, line))
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)

    async def _await_answer(self, send: Send, line: str) -> None:
        try:
            await send
        except ParleyError as exc:
            self._refused(line, exc)

    def _refused(self, line: str, error: ParleyError) -> None:
        self._notify(f"not sent {line!r}: {describe(error, self._client.address).removeprefix('error: ')}")

    async def _pump(self, room: Room) -> None:
        """The room's events onto the screen, in order, until the room is left or ends."""
        async for incoming in room.events():
            if incoming.event != self._event:
                continue
            if not self._live:
                self._history_shown += 1
            self._show(incoming)

    async def _print(self) -> None:
        while (shown := await self._screen.get()) is not None:
            print(await self._line(shown), flush=True)

    async def _line(self, shown: Shown) -> str:
        now = datetime.now().astimezone()
        if isinstance(shown, RoomEvent):
            sender = await self._names.of(shown.sender) or shown.sender
            return message_line(clock(from_ms(shown.time_ms), now), sender, shown.data)
        if isinstance(shown, Arrival):
            name = await self._names.of(shown.user_id) or shown.user_id
            return notice_line(clock(shown.at, now), f"{name} {'joined' if shown.joined else 'left'}")
        if isinstance(shown, Notice):
            return notice_line(clock(shown.at, now), shown.text)
        return shown

    def _arrived(self, user_id: str, joined: bool) -> None:
        if user_id != self._client.user_id:
            self._show(Arrival(user_id, joined, datetime.now().astimezone()))

    def _state_changed(self, state: ConnectionState, error: ParleyError | None) -> None:
        if state is ConnectionState.RECONNECTING and not self._connection_lost:
            self._connection_lost = True
            why = f" ({error.reason or error.code.name}: {' '.join(error.message.split())})" if error else ""
            self._notify(f"connection lost — reconnecting…{why}")
        elif state is ConnectionState.CONNECTED and self._connection_lost:
            self._connection_lost = False
            missed = "" if self._room is None or self._room.recovered else " (some were missed: see `parley history`)"
            self._notify(f"reconnected{missed}")
        elif state is ConnectionState.FAILED and error is not None:
            self._notify(f"gave up reconnecting: {describe(error, self._client.address).removeprefix('error: ')}")

    def _notify(self, text: str) -> None:
        self._show(Notice(text, datetime.now().astimezone()))

    def _show(self, shown: Shown) -> None:
        self._screen.put_nowait(shown)
