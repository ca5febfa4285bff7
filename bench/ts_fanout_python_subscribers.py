"""A worker of bench/ts_fanout_bench.py: Python SDK subscribers (`parley.Client`), driven over stdin/stdout.

    python -m bench.ts_fanout_python_subscribers

Started by the benchmark, never by hand: the Python counterpart of
bench/ts_subscribers.mjs, answering the same commands (bench/fanout_worker.py's
protocol, served by its `serve_commands`):

- {"cmd": "connect", "subscribers": [{"address", "username", "key_file"}, ...]}:
  one `Client` each (its own channel and TCP connection), registered on first
  connect and logged in, OPEN_CONCURRENCY at a time;
- {"cmd": "join", "rooms": [one room per subscriber], "concurrency": C}:
  `client.join(room)` and `room.on(EVENT, handler)` for each;
- {"cmd": "reset", "tag": T}, {"cmd": "count"}, {"cmd": "report"},
  {"cmd": "close"}, {"cmd": "quit"}.

A delivery's latency is `time.time_ns()` when the handler runs minus the
publication time in the payload (bench/fanout_wire.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bench.fanout_subscribers import raise_file_limit
from bench.fanout_wire import EVENT, Stats
from bench.fanout_worker import serve_commands
from parley import Client, ParleyError
from parley.rooms import RoomEvent

OPEN_CONCURRENCY = 16


async def each_limited(
    items: Sequence[Any], concurrency: int, work: Callable[[Any, int], Awaitable[None]]
) -> collections.Counter[str]:
    """Runs `work(item, index)` on each item, `concurrency` at a time; the failures counted by message."""
    gate = asyncio.Semaphore(concurrency)
    failures: collections.Counter[str] = collections.Counter()

    async def one(item: Any, index: int) -> None:
        async with gate:
            try:
                await work(item, index)
            except Exception as exc:
                failures[f"{type(exc).__name__}: {exc}"[:200]] += 1

    await asyncio.gather(*(one(item, index) for index, item in enumerate(items)))
    return failures


class SdkSubscribers:
    """Some of the benchmark's Python subscribers, each a `parley.Client` of its own user."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.clients: list[Client] = []
        self._closing = False

    def _on_disconnect(self, error: ParleyError | None) -> None:
        if not self._closing:
            self.stats.errors[f"disconnect {error.reason if error else 'without error'}"] += 1

    def _record(self, event: RoomEvent) -> None:
        self.stats.record(event.data, time.time_ns())

    async def connect(self, specs: list[dict[str, str]]) -> dict[str, Any]:
        await self.close()
        started = time.perf_counter()
        self.clients = [Client(spec["address"], username=spec["username"], key_file=spec["key_file"]) for spec in specs]
        for client in self.clients:
            client.on_disconnect(self._on_disconnect)

        async def connect_one(client: Client, index: int) -> None:
            await client.connect()

        failures = await each_limited(self.clients, OPEN_CONCURRENCY, connect_one)
        if failures:
            raise RuntimeError(f"connect failed: {dict(failures)}")
        self._closing = False
        return {"connected": len(self.clients), "seconds": round(time.perf_counter() - started, 3), "servers": {}}

    async def join(self, rooms: list[str], concurrency: int) -> dict[str, Any]:
        if len(rooms) != len(self.clients):
            raise ValueError(f"{len(rooms)} rooms for {len(self.clients)} subscribers")
        join_us: list[int] = []

        async def join_one(client: Client, index: int) -> None:
            sent = time.perf_counter_ns()
            room = await client.join(rooms[index])
            room.on(EVENT, self._record)
            join_us.append((time.perf_counter_ns() - sent) // 1000)

        first_sent_ns = time.time_ns()
        failures = await each_limited(self.clients, concurrency or len(rooms) or 1, join_one)
        return {
            "joined": len(join_us),
            "first_sent_ns": first_sent_ns,
            "last_ready_ns": time.time_ns(),
            "join_us": join_us,
            "failures": dict(failures),
        }

    async def close(self) -> None:
        self._closing = True
        clients, self.clients = self.clients, []
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)

    async def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        kind = command.get("cmd")
        if kind == "connect":
            return await self.connect(command["subscribers"])
        if kind == "join":
            return await self.join(command["rooms"], int(command.get("concurrency", 0)))
        if kind == "reset":
            self.stats.reset(str(command["tag"]))
            return {"ok": True}
        if kind == "count":
            return {"received": self.stats.received, "errors": sum(self.stats.errors.values())}
        if kind == "report":
            return self.stats.report()
        if kind == "close":
            await self.close()
            return {"ok": True}
        raise ValueError(f"unknown command {kind!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ts_fanout_python_subscribers", description=__doc__.split("\n\n")[0]
    )
    parser.parse_args(argv)
    raise_file_limit()
    return asyncio.run(serve_commands(SdkSubscribers(), say_bye=True))


if __name__ == "__main__":
    sys.exit(main())
