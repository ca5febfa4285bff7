"""The files benchmark's baseline: raw bytes over loopback gRPC, no encryption, no coding, no disk.

    python -m bench.file_raw [--port P]

Serves one generic service (no proto: the messages are the bytes themselves, no serializer either way) with
a client-streaming `Upload` that keeps the frames it gets in memory and answers their byte count, and a
server-streaming `Download` that sends the last upload's frames back. Prints "raw bytes server listening on
HOST:PORT" once it serves; stops on SIGTERM. `upload` and `download` are its client side, shaped like the
SDK's own loops (an async generator of 256 KiB frames out, `async for` into a bytearray in).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import grpc

SERVICE = "parley.bench.RawBytes"
UPLOAD = f"/{SERVICE}/Upload"
DOWNLOAD = f"/{SERVICE}/Download"
# As the SDK's upload frames and the file service's download frames.
FRAME_BYTES = 256 * 1024
COUNT_BYTES = 8
STOP_GRACE_SECONDS = 1.0


class RawBytes:
    """Holds the last upload's frames, to send them back."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def upload(self, frames: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        received = [frame async for frame in frames]
        self.frames = received
        return sum(map(len, received)).to_bytes(COUNT_BYTES, "big")

    async def download(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame

    def handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                "Download": grpc.unary_stream_rpc_method_handler(self.download),
            },
        )


async def serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((RawBytes().handler(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"raw bytes server listening on 127.0.0.1:{bound}", flush=True)
    await stop.wait()
    await server.stop(STOP_GRACE_SECONDS)


def raw_command() -> list[str]:
    """This module as a server on a free port."""
    return [sys.executable, "-m", "bench.file_raw", "--port", "0"]


async def _frames(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), FRAME_BYTES):
        yield data[start : start + FRAME_BYTES]


async def upload(channel: grpc.aio.Channel, data: bytes) -> int:
    """Streams `data` to the server in frames; the byte count it got."""
    # No serializer either way: the messages are the bytes themselves.
    call = channel.stream_unary(UPLOAD, None, None)
    answer: bytes = await call(_frames(data))
    return int.from_bytes(answer, "big")


async def download(channel: grpc.aio.Channel) -> bytes:
    """The last upload's bytes, streamed back."""
    sink = bytearray()
    call = channel.unary_stream(DOWNLOAD, None, None)(b"")
    async for frame in call:
        sink.extend(frame)
    return bytes(sink)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.file_raw",
        description="The files benchmark's baseline server: raw bytes streamed over loopback gRPC both ways, "
        "kept in memory, no encryption, coding or disk. Stops on SIGTERM.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
