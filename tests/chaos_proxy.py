"""A loopback TCP proxy the tests own: it cuts, stalls and delays the connections through it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

CHUNK = 65536


class ChaosProxy:
    """Forwards 127.0.0.1:<port> to `target`; `cut()`, `stall()`, `heal()`, `delay` change what passes."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._to_server = asyncio.Event()
        self._to_client = asyncio.Event()
        self._to_server.set()
        self._to_client.set()
        self.delay = 0.0
        self.refusing = False
        self.connections = 0

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            await self._server.wait_closed()

    def retarget(self, target: str) -> None:
        """New connections go to `target` (e.g. a restarted server on another port)."""
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))

    async def cut(self) -> None:
        """Closes every connection through the proxy at once (the peers see a reset link)."""
        links = list(self._links)
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    def stall(self, *, to_server: bool = True, to_client: bool = True) -> None:
        """Stops forwarding bytes (both ways by default); connections stay open (a dead link that says nothing)."""
        if to_server:
            self._to_server.clear()
        if to_client:
            self._to_client.clear()

    def heal(self) -> None:
        self.refusing = False
        self._to_server.set()
        self._to_client.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError, OSError):  # cut, or one side closed
                await asyncio.gather(
                    self._pump(reader, upstream_writer, self._to_server),
                    self._pump(upstream_reader, writer, self._to_client),
                )
        finally:
            self._links.discard(task)
            for end in (writer, upstream_writer):
                end.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        while data := await reader.read(CHUNK):
            await flowing.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()
        raise ConnectionResetError("one side closed")


@contextlib.asynccontextmanager
async def chaos_proxy(target: str) -> AsyncIterator[ChaosProxy]:
    proxy = ChaosProxy(target)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
