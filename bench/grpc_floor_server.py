"""The grpc.aio floor of the fan-out benchmark: the least a grpc.aio server does for the same client behaviour.

    python -m bench.grpc_floor_server [--host 127.0.0.1] [--port 0]

One bidi-streaming method, /floor.Floor/Connect, served by a generic handler
on raw bytes (frames in bench/grpc_floor_wire.py, no .proto). A join puts the
stream in a room; a publish puts one event frame per member of the room in
that member's queue; each is acknowledged once done. Every stream's handler
drains its own queue, one gRPC message written per frame. No users, no
history, no ordering beyond one event loop's. Prints "listening on HOST:PORT"
once it accepts connections and stops on SIGTERM or SIGINT; logs warnings
and errors on stderr. Started by `bench.fanout_bench`; not part of the test
suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import sys
from collections.abc import AsyncIterator, Sequence

import grpc

from bench import grpc_floor_wire as wire
from bench.stop_signal import until_stopped

STOP_GRACE_SECONDS = 2.0


class Floor:
    """The rooms: each a set of its members' outgoing queues (None in a queue ends its stream)."""

    def __init__(self) -> None:
        self.rooms: collections.defaultdict[str, set[asyncio.Queue[bytes | None]]] = collections.defaultdict(set)

    async def connect(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        joined: set[str] = set()
        reader = asyncio.create_task(self._read(requests, outgoing, joined))
        try:
            while (frame := await outgoing.get()) is not None:
                await context.write(frame)
            await reader  # raises what ended the reading, if anything did
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for room in joined:
                self.rooms[room].discard(outgoing)

    async def _read(
        self, requests: AsyncIterator[bytes], outgoing: asyncio.Queue[bytes | None], joined: set[str]
    ) -> None:
        try:
            async for frame in requests:
                request = wire.parse_request(frame)
                if request.kind == wire.JOIN:
                    self.rooms[request.room].add(outgoing)
                    joined.add(request.room)
                else:
                    event = wire.event(request.payload)
                    for member in self.rooms.get(request.room, ()):
                        member.put_nowait(event)
                outgoing.put_nowait(wire.ack(request.request_id))
        finally:
            outgoing.put_nowait(None)

    def handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        # No (de)serializers: the messages are the frames' bytes as they are.
        connect = grpc.stream_stream_rpc_method_handler(self.connect)
        service, method = wire.METHOD.strip("/").split("/")
        return grpc.method_handlers_generic_handler(service, {method: connect})


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Floor().handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    try:
        print(f"listening on {host}:{bound}", flush=True)
        await until_stopped()
    finally:
        await server.stop(STOP_GRACE_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
