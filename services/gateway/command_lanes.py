"""A connection's commands, run side by side where that is safe.

Each command belongs to a lane: the room it names, the connection's subjects,
its direct messages, or its token. A lane runs its commands one after another in the order they
came; lanes run concurrently, so a slow join to one room never holds up a
publish to another. A command may finish in the background (a publish is
queued for its append in its turn and answered once durable), so the next
command of its lane need not wait for the disk. Pings and answers to server
questions have no lane: they are handled as they arrive.

At most `limit` commands of a connection are under way at once; past that the
reader waits, and the client's sends wait on the stream's flow control.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from parley.gateway.v1 import gateway_pb2

# A command's answer now, or later (a future).
Answer = gateway_pb2.Reply | asyncio.Future[gateway_pb2.Reply]
Run = Callable[[gateway_pb2.ConnectRequest], Awaitable[Answer]]
Send = Callable[[gateway_pb2.Reply], None]
# Told of an exception that is not a command's own refusal; the connection ends.
Fail = Callable[[BaseException], None]

ROOM_COMMANDS = frozenset({"join", "leave", "subscribe", "unsubscribe", "publish", "edit", "delete", "ephemeral"})
SUBJECT_COMMANDS = frozenset({"subject_subscribe", "subject_unsubscribe", "subject_publish"})
DIRECT_COMMANDS = frozenset({"send_direct", "ack_direct"})


def lane_of(request: gateway_pb2.ConnectRequest) -> str | None:
    """The lane a command waits its turn in (None: answered at once)."""
    command = request.WhichOneof("command")
    if command in ROOM_COMMANDS:
        return "room:" + str(getattr(request, command).room_id)
    if command in SUBJECT_COMMANDS:
        return "subjects"
    if command == "refresh":
        return "token"
    if command in DIRECT_COMMANDS:
        return "direct"
    return None


class CommandLanes:
    def __init__(self, run: Run, send: Send, fail: Fail, limit: int, ended: Callable[[], bool]) -> None:
        self._run = run
        # True once the stream was ended from outside: commands still waiting in a lane do not run.
        self._ended = ended
        self._send = send
        self._fail = fail
        self._limit = limit
        self._lanes: dict[str, deque[gateway_pb2.ConnectRequest]] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._under_way = 0
        # Made only while someone waits: an idle connection holds none.
        self._room: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None

    async def submit(self, request: gateway_pb2.ConnectRequest) -> None:
        """Starts the command in its lane's turn; waits first while `limit` commands are under way."""
        while self._under_way >= self._limit:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        self._under_way += 1
        lane = lane_of(request)
        if lane is None:
            await self._run_one(request)
            return
        waiting = self._lanes.get(lane)
        if waiting is not None:
            waiting.append(request)
            return
        self._lanes[lane] = deque([request])
        self._hold(asyncio.get_running_loop().create_task(self._run_lane(lane)))

    async def finished(self) -> None:
        """Waits until every command submitted so far is answered."""
        while self._under_way:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle

    async def stop(self) -> None:
        """Cancels the commands still running and waits until they have stopped (answers due later still come)."""
        for runner in self._runners:
            runner.cancel()
        while self._runners:
            await asyncio.gather(*self._runners, return_exceptions=True)

    def _hold(self, runner: asyncio.Task[None]) -> None:
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    async def _run_lane(self, lane: str) -> None:
        waiting = self._lanes[lane]
        try:
            while waiting:
                await self._run_one(waiting[0])
                waiting.popleft()
        finally:
            del self._lanes[lane]

    async def _run_one(self, request: gateway_pb2.ConnectRequest) -> None:
        if self._ended():
            self._end()
            return
        try:
            answer = await self._run(request)
        except Exception as exc:
            self._end()
            self._fail(exc)
            return
        except BaseException:
            self._end()
            raise
        if isinstance(answer, gateway_pb2.Reply):
            self._answered(answer)
        else:
            answer.add_done_callback(self._answered_later)

    def _answered_later(self, answer: asyncio.Future[gateway_pb2.Reply]) -> None:
        if answer.cancelled():
            self._end()
        elif answer.exception() is not None:
            self._end()
            self._fail(answer.exception())  # type: ignore[arg-type]
        else:
            self._answered(answer.result())

    def _answered(self, reply: gateway_pb2.Reply) -> None:
        self._send(reply)
        self._end()

    def _end(self) -> None:
        self._under_way -= 1
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        if not self._under_way and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
