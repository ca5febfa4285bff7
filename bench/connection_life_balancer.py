"""A small TCP load balancer for the rolling-drain benchmark, in a process of its own.

    python -m bench.connection_life_balancer

Started by the benchmark (bench/connection_life_drain.py), never by hand.
Each new connection goes to the next gateway, round robin, among those that
are up; with none up, or when the chosen gateway does not accept, the
connection is closed at once (refused), so the client tries again and lands
on another. A gateway taken down keeps the connections it has: it drains
them itself. Driven like a worker (bench/fanout_worker_pool.py's
`WorkerProcess`): one JSON command per line on stdin, one reply line each:

- {"cmd": "start"}: listens on 127.0.0.1, a free port; answers {"port": P};
- {"cmd": "up", "name": N, "address": "host:port"}: gateway N takes new connections there;
- {"cmd": "down", "name": N}: gateway N takes no new connections;
- {"cmd": "stats"}: connections forwarded to each gateway, and refused;
- {"cmd": "quit"}.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sys
from typing import Any

from bench.fanout_worker import emit

HOST = "127.0.0.1"
CHUNK_BYTES = 256 * 1024
CONNECT_TIMEOUT_SECONDS = 2.0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies `reader` to `writer` until either end closes; then closes `writer`."""
    try:
        with contextlib.suppress(ConnectionError, OSError):  # either side went away
            while data := await reader.read(CHUNK_BYTES):
                writer.write(data)
                await writer.drain()
    finally:
        writer.close()


class RoundRobinBalancer:
    def __init__(self) -> None:
        self.up: dict[str, str] = {}
        self.forwarded: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self._turn = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def choose(self) -> tuple[str, str] | None:
        """The next gateway that is up, round robin: (name, address)."""
        names = sorted(self.up)
        if not names:
            return None
        self._turn += 1
        name = names[self._turn % len(names)]
        return name, self.up[name]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chosen = self.choose()
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if chosen is not None:
            host, port = chosen[1].rsplit(":", 1)
            with contextlib.suppress(OSError, TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_SECONDS)
        if chosen is None or upstream is None:
            self.refused += 1
            writer.close()
            return
        self.forwarded[chosen[0]] += 1
        for task in (asyncio.create_task(pipe(reader, upstream[1])), asyncio.create_task(pipe(upstream[0], writer))):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        kind = command.get("cmd")
        if kind == "up":
            self.up[str(command["name"])] = str(command["address"])
        elif kind == "down":
            self.up.pop(str(command["name"]), None)
        elif kind == "stats":
            return {"forwarded": dict(self.forwarded), "refused": self.refused, "up": self.up}
        else:
            raise ValueError(f"unknown command {kind!r}")
        return {"ok": True}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def serve() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    balancer = RoundRobinBalancer()
    try:
        while line := await reader.readline():
            command: dict[str, Any] = json.loads(line)
            if command.get("cmd") == "quit":
                break
            try:
                reply = {"port": await balancer.start()} if command.get("cmd") == "start" else balancer.answer(command)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            emit({**reply, "id": command.get("id")})
        return 0
    finally:
        await balancer.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
