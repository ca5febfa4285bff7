"""The client's Connect stream: commands matched to replies, frames dispatched."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from parley.backlog import HandlerBacklog
from parley.errors import ParleyError, UnavailableError, error_from_rpc, error_from_status
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger("parley.client")
COMMAND_TIMEOUT_SECONDS = 10.0
FrameHandler = Callable[[gateway_pb2.ConnectResponse], None]


class ConnectStream:
    """One open Connect stream. Commands return their Reply or raise the typed error.

    After each frame handed to `on_frame` the reader waits, if a backlog is
    given and holding, until the application's handlers have caught up before
    it reads the next: they set the pace (see `parley.backlog`).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        token: str,
        on_frame: FrameHandler,
        on_end: Callable[[ParleyError | None], None],
        backlog: HandlerBacklog | None = None,
    ) -> None:
        self._outgoing: asyncio.Queue[gateway_pb2.ConnectRequest | None] = asyncio.Queue()
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._call = stub.Connect(self._requests(), metadata=(("authorization", f"Bearer {token}"),))
        self._on_frame = on_frame
        self._on_end = on_end
        self._backlog = backlog
        self._pending: dict[str, asyncio.Future[gateway_pb2.Reply]] = {}
        self._ids = (f"c{n}" for n in itertools.count(1))
        self._reader: asyncio.Task[None] | None = None
        self._frames: AsyncIterator[gateway_pb2.ConnectResponse] | None = None
        self.welcome: gateway_pb2.Welcome | None = None
        self._waiting_for_handlers = False
        self._abort_reason: ParleyError | None = None
        # For the heartbeat: frames read, and pauses for the handlers, so far.
        self.frames_received = 0
        self.pauses = 0

    async def _requests(self) -> AsyncIterator[gateway_pb2.ConnectRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def open(self) -> gateway_pb2.Welcome:
        self._frames = aiter(self._call)
        try:
            first = await self._first_frame()
            if first is None or first.WhichOneof("frame") != "welcome":
                raise ParleyError(grpc.StatusCode.INTERNAL, "", "the server did not start the stream with a Welcome")
        except BaseException:
            self._call.cancel()
            self._outgoing.put_nowait(None)  # the request generator ends too, not left waiting forever
            raise
        self.welcome = first.welcome
        self._reader = asyncio.create_task(self._read())
        return first.welcome

    async def _first_frame(self) -> gateway_pb2.ConnectResponse | None:
        assert self._frames is not None
        try:
            return await asyncio.wait_for(anext(self._frames, None), COMMAND_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        except TimeoutError:
            raise UnavailableError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "", f"no Welcome within {COMMAND_TIMEOUT_SECONDS:.0f}s"
            ) from None

    def send(self, **command: Any) -> asyncio.Future[gateway_pb2.Reply]:
        """Sends one command; the future gets its Reply (failed or not), or the stream's ending."""
        return self.send_request(gateway_pb2.ConnectRequest(**command))

    def send_request(self, request: gateway_pb2.ConnectRequest) -> asyncio.Future[gateway_pb2.Reply]:
        """Sends `request` under a new request id (set in it); the future as for `send`."""
        if self._reader is None or self._reader.done():
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the stream is closed")
        request_id = request.request_id = next(self._ids)
        future: asyncio.Future[gateway_pb2.Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        future.add_done_callback(lambda _: self._pending.pop(request_id, None))
        self._outgoing.put_nowait(request)
        return future

    async def command(self, **command: Any) -> gateway_pb2.Reply:
        """Sends one command and waits for its Reply; raises the typed error if it failed."""
        future = self.send(**command)
        try:
            reply = await asyncio.wait_for(future, COMMAND_TIMEOUT_SECONDS)
        except TimeoutError:
            raise UnavailableError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"no reply within {COMMAND_TIMEOUT_SECONDS:.0f}s; the command may or may not have taken effect",
            ) from None
        if reply.status.code != 0:
            raise error_from_status(reply.status)
        return reply

    @property
    def waiting_for_handlers(self) -> bool:
        """The reader is paused until the application's handlers catch up (it reads no replies meanwhile)."""
        return self._waiting_for_handlers

    def abort(self, reason: ParleyError) -> None:
        """Ends the stream from this side, with `reason` as its ending (e.g. the link is dead)."""
        self._abort_reason = reason
        self._call.cancel()

    async def _read(self) -> None:
        ending: ParleyError | None = None
        try:
            assert self._frames is not None
            async for frame in self._frames:
                if frame is None:  # grpc's way of saying the bytes did not decode as a ConnectResponse
                    ending = ParleyError(
                        grpc.StatusCode.INTERNAL,
                        "",
                        "the server sent a frame that does not decode; the stream is closed",
                    )
                    self._call.cancel()
                    break
                self.frames_received += 1
                kind = frame.WhichOneof("frame")
                if kind in ("reply", "replies"):
                    for reply in [frame.reply] if kind == "reply" else frame.replies.replies:
                        future = self._pending.get(reply.request_id)
                        if future is not None and not future.done():
                            future.set_result(reply)
                    continue
                if kind == "go_away":  # the status the stream ends with follows; this says why
                    self._abort_reason = self._abort_reason or error_from_status(frame.go_away.status)
                try:
                    self._on_frame(frame)
                except Exception:
                    log.exception("a frame handler failed")
                if self._backlog is not None and self._backlog.holding:
                    self.pauses += 1
                    self._waiting_for_handlers = True
                    try:
                        await self._backlog.caught_up()
                    finally:
                        self._waiting_for_handlers = False
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                ending = error_from_rpc(exc)
        finally:
            ending = ending or self._abort_reason
            self._outgoing.put_nowait(None)  # the request generator ends too, not left waiting forever
            # Also on a local cancel, which grpc reports as CancelledError.
            failure = ending or UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the stream ended")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._on_end(ending)

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()  # it may be waiting for the handlers, not for the call
            with contextlib.suppress(Exception):
                await asyncio.gather(self._reader, return_exceptions=True)
