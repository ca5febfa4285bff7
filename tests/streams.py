"""A raw Connect stream for tests: commands by request id, frames sorted by kind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.values import to_value as value

_ids = itertools.count(1)


def payload_of(event: gateway_pb2.Event) -> Any:
    return json_format.MessageToDict(event.payload)


def changes_of(frame: gateway_pb2.ConnectResponse) -> list[tuple[str, bool]]:
    """The (user, joined) changes a Presence frame carries."""
    return [(change.user_id, change.joined) for change in frame.presence.changes]


class Stream:
    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self._outgoing: asyncio.Queue[gateway_pb2.ConnectRequest | None] = asyncio.Queue()
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.call = stub.Connect(self._requests(), metadata=(("authorization", f"Bearer {token}"),))
        self.replies: dict[str, asyncio.Future[gateway_pb2.Reply]] = {}
        self.events: asyncio.Queue[gateway_pb2.Event] = asyncio.Queue()
        self.others: asyncio.Queue[gateway_pb2.ConnectResponse] = asyncio.Queue()
        self.subject_events: asyncio.Queue[gateway_pb2.SubjectEvent] = asyncio.Queue()
        self.event_frames = 0
        self.welcome: gateway_pb2.Welcome | None = None
        self.ended: asyncio.Future[grpc.aio.AioRpcError | None] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[gateway_pb2.ConnectRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def open(self, *, read: bool = True) -> Stream:
        """Reads the Welcome, then (unless `read` is False: a stalled client) every frame."""
        first = await asyncio.wait_for(self.call.read(), 5)
        assert first.WhichOneof("frame") == "welcome", first
        self.welcome = first.welcome
        if read:
            self.start_reading()
        return self

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (frame := await self.call.read()) is not grpc.aio.EOF:
                kind = frame.WhichOneof("frame")
                if kind in ("reply", "replies"):
                    for reply in [frame.reply] if kind == "reply" else frame.replies.replies:
                        future = self.replies.pop(reply.request_id, None)
                        if future is not None and not future.done():
                            future.set_result(reply)
                elif kind == "events":
                    self.event_frames += 1
                    for event in frame.events.events:
                        self.events.put_nowait(event)
                elif kind == "subject_events":
                    for event in frame.subject_events.events:
                        self.subject_events.put_nowait(event)
                else:
                    self.others.put_nowait(frame)
            self.ended.set_result(None)
        except grpc.aio.AioRpcError as error:
            self.ended.set_result(error)

    async def command(self, **command: Any) -> gateway_pb2.Reply:
        request_id = f"r{next(_ids)}"
        future: asyncio.Future[gateway_pb2.Reply] = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        self._outgoing.put_nowait(gateway_pb2.ConnectRequest(request_id=request_id, **command))
        return await asyncio.wait_for(future, 5)

    async def ok(self, **command: Any) -> gateway_pb2.Reply:
        reply = await self.command(**command)
        assert reply.status.code == 0, reply.status
        return reply

    async def join(self, room_id: str) -> gateway_pb2.Reply:
        return await self.ok(join=gateway_pb2.JoinCommand(room_id=room_id))

    async def publish(self, room_id: str, event: str, data: Any, **options: Any) -> gateway_pb2.Reply:
        outgoing = gateway_pb2.OutgoingEvent(event=event, payload=value(data))
        return await self.command(publish=gateway_pb2.PublishCommand(room_id=room_id, events=[outgoing], **options))

    def send_raw(self, request: gateway_pb2.ConnectRequest) -> None:
        self._outgoing.put_nowait(request)

    async def next_event(self, within: float = 3.0) -> gateway_pb2.Event:
        return await asyncio.wait_for(self.events.get(), within)

    async def next_other(self, kind: str, within: float = 3.0) -> gateway_pb2.ConnectResponse:
        while True:
            frame = await asyncio.wait_for(self.others.get(), within)
            if frame.WhichOneof("frame") == kind:
                return frame

    async def presence_of(self, user_id: str, *, joined: bool = True, within: float = 3.0) -> None:
        """Waits for the Presence frame saying `user_id` joined (or left) a room this stream is in."""
        while True:
            if (user_id, joined) in changes_of(await self.next_other("presence", within)):
                return

    async def no_event(self, within: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            event = await asyncio.wait_for(self.events.get(), within)
            raise AssertionError(f"unexpected event {event}")

    def half_close(self) -> None:
        """No more commands: the server ends the stream."""
        self._outgoing.put_nowait(None)

    async def close(self) -> None:
        self.half_close()
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def stream(address: str, token: str) -> AsyncIterator[Stream]:
    async with grpc.aio.insecure_channel(address) as channel:
        opened = await Stream(channel, token).open()
        try:
            yield opened
        finally:
            await opened.close()
