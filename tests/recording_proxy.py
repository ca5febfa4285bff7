"""A loopback TCP proxy that keeps every byte through it, both ways, and reads the gRPC messages out of them.

Raw bytes alone could hide a secret: HTTP/2 cuts a gRPC message into DATA
frames and puts a frame header wherever it cuts. `grpc_messages()` undoes
that (per connection, direction and stream), so a search sees each message
whole; it also says whether any message was compressed, which would make a
search for plaintext meaningless.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import AsyncIterator

CHUNK = 65536
CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
DATA_FRAME = 0x0
PADDED = 0x8


@dataclasses.dataclass
class Connection:
    """The bytes one connection carried: `to_server` from the client, `to_client` back."""

    to_server: bytearray = dataclasses.field(default_factory=bytearray)
    to_client: bytearray = dataclasses.field(default_factory=bytearray)


@dataclasses.dataclass(frozen=True)
class GrpcMessage:
    to_server: bool
    compressed: bool
    body: bytes


class RecordingProxy:
    """Forwards 127.0.0.1:<port> to `target` and records each connection (`connections`)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self.connections: list[Connection] = []

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def recorded(self) -> list[bytes]:
        """Every connection's bytes, each direction on its own."""
        return [bytes(side) for c in self.connections for side in (c.to_server, c.to_client)]

    def grpc_messages(self) -> list[GrpcMessage]:
        """The gRPC messages of every connection, both ways (for a proxy in front of a gRPC server)."""
        found: list[GrpcMessage] = []
        for connection in self.connections:
            for to_server, raw in ((True, connection.to_server), (False, connection.to_client)):
                for data in http2_data(bytes(raw), from_client=to_server).values():
                    found.extend(GrpcMessage(to_server, flag, body) for flag, body in grpc_frames(data))
        return found

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        connection = Connection()
        self.connections.append(connection)
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await asyncio.gather(
                    _pump(reader, upstream_writer, connection.to_server),
                    _pump(upstream_reader, writer, connection.to_client),
                )
        finally:
            self._links.discard(task)
            for end in (writer, upstream_writer):
                end.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
    while data := await reader.read(CHUNK):
        record += data
        writer.write(data)
        await writer.drain()
    raise ConnectionResetError("one side closed")


def http2_data(raw: bytes, *, from_client: bool) -> dict[int, bytes]:
    """The DATA payloads of one direction of an HTTP/2 connection, joined per stream id."""
    position = len(CLIENT_PREFACE) if from_client and raw.startswith(CLIENT_PREFACE) else 0
    streams: dict[int, bytearray] = defaultdict(bytearray)
    while position + FRAME_HEADER <= len(raw):
        length = int.from_bytes(raw[position : position + 3], "big")
        kind, flags = raw[position + 3], raw[position + 4]
        stream_id = int.from_bytes(raw[position + 5 : position + 9], "big") & 0x7FFFFFFF
        payload = raw[position + FRAME_HEADER : position + FRAME_HEADER + length]
        position += FRAME_HEADER + length
        if kind != DATA_FRAME or len(payload) < length:
            continue
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        streams[stream_id] += payload
    return {stream_id: bytes(data) for stream_id, data in streams.items()}


def grpc_frames(data: bytes) -> list[tuple[bool, bytes]]:
    """(compressed, message) for each length-prefixed gRPC message of one stream's DATA (a cut-off tail dropped)."""
    frames: list[tuple[bool, bytes]] = []
    position = 0
    while position + 5 <= len(data):
        compressed = data[position] != 0
        length = int.from_bytes(data[position + 1 : position + 5], "big")
        body = data[position + 5 : position + 5 + length]
        if len(body) < length:
            break
        frames.append((compressed, body))
        position += 5 + length
    return frames


@contextlib.asynccontextmanager
async def recording_proxy(target: str) -> AsyncIterator[RecordingProxy]:
    proxy = RecordingProxy(target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
