"""A fan-out benchmark worker: a process holding some of the subscribers, driven over stdin/stdout.

    python -m bench.fanout_worker --system parley|socketio|nats|grpc_floor

Started by the benchmark (`bench/fanout_worker_pool.py`), never by hand. It
reads one JSON command per line on stdin and answers each with one JSON line
on stdout, carrying the command's "id" ({"error": ...} when it failed):

- {"cmd": "connect", "subscribers": [{"address", "user", "token"}, ...]}:
  opens one connection per subscriber (OPEN_CONCURRENCY at a time), after
  closing those it held, and says how many reached each server process
  (Parley's gateway, named in the Welcome);
- {"cmd": "close"}: closes every subscriber's connection;
- {"cmd": "join", "rooms": [one room per subscriber], "concurrency": C}: joins
  them (C at a time, 0: all at once) and answers with when the first join was
  sent, when the last was answered, each join's time and any failures; the
  frame counts start again from zero at the join;
- {"cmd": "reset", "tag": T}: counts events of tag T from now, and frames from zero;
- {"cmd": "count"}: events received so far;
- {"cmd": "report"}: events received, their latencies, errors;
- {"cmd": "frames"}: frames received by each subscriber, by kind;
- {"cmd": "quit"}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

from bench.fanout_subscribers import (
    GrpcFloorSubscriber,
    NatsSubscriber,
    ParleySubscriber,
    SocketIOSubscriber,
    Subscriber,
    connect_all,
    raise_file_limit,
)
from bench.fanout_wire import Stats

SUBSCRIBER_KINDS = ("parley", "socketio", "nats", "grpc_floor")


# Commands may carry whole latency sample sets.
COMMAND_LINE_LIMIT = 256 * 1024 * 1024


class Answering(Protocol):
    async def answer(self, command: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stats = Stats()
        self.subscribers: list[Subscriber] = []
        self._session: Any = None

    def _subscriber(self, spec: dict[str, str]) -> Subscriber:
        if self.kind == "parley":
            return ParleySubscriber(spec["address"], spec["token"], self.stats)
        if self.kind == "nats":
            return NatsSubscriber(spec["address"], spec["user"], self.stats)
        if self.kind == "grpc_floor":
            return GrpcFloorSubscriber(spec["address"], self.stats)
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return SocketIOSubscriber(self._session, spec["address"], spec["user"], self.stats)

    async def connect(self, specs: list[dict[str, str]]) -> dict[str, Any]:
        await self.close_subscribers()
        started = time.perf_counter()
        subscribers = [self._subscriber(spec) for spec in specs]
        await connect_all(subscribers)
        self.subscribers = subscribers
        servers = collections.Counter(s.server_id for s in subscribers if s.server_id)
        return {"connected": len(subscribers), "seconds": round(time.perf_counter() - started, 3), "servers": servers}

    async def join(self, rooms: list[str], concurrency: int) -> dict[str, Any]:
        if len(rooms) != len(self.subscribers):
            raise ValueError(f"{len(rooms)} rooms for {len(self.subscribers)} subscribers")
        gate = asyncio.Semaphore(concurrency or len(rooms) or 1)
        join_us: list[int] = []
        failures: collections.Counter[str] = collections.Counter()
        for subscriber in self.subscribers:
            subscriber.frames.clear()

        async def one(subscriber: Subscriber, room: str) -> None:
            async with gate:
                sent = time.perf_counter_ns()
                try:
                    await subscriber.join(room)
                except Exception as exc:
                    failures[f"{type(exc).__name__}: {exc}"[:200]] += 1
                    return
                join_us.append((time.perf_counter_ns() - sent) // 1000)

        first_sent_ns = time.time_ns()
        await asyncio.gather(*(one(s, r) for s, r in zip(self.subscribers, rooms, strict=True)))
        return {
            "joined": len(join_us),
            "first_sent_ns": first_sent_ns,
            "last_ready_ns": time.time_ns(),
            "join_us": join_us,
            "failures": dict(failures),
        }

    def reset(self, tag: str) -> None:
        self.stats.reset(tag)
        for subscriber in self.subscribers:
            subscriber.frames.clear()

    def frames(self) -> dict[str, list[int]]:
        kinds = sorted({kind for s in self.subscribers for kind in s.frames})
        return {kind: [s.frames[kind] for s in self.subscribers] for kind in kinds}

    async def close_subscribers(self) -> None:
        subscribers, self.subscribers = self.subscribers, []
        await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)

    async def close(self) -> None:
        await self.close_subscribers()
        if self._session is not None:
            await self._session.close()

    async def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        kind = command.get("cmd")
        if kind == "connect":
            return await self.connect(command["subscribers"])
        if kind == "close":
            await self.close_subscribers()
            return {"ok": True}
        if kind == "join":
            return await self.join(command["rooms"], int(command.get("concurrency", 0)))
        if kind == "reset":
            self.reset(str(command["tag"]))
            return {"ok": True}
        if kind == "count":
            return {"received": self.stats.received, "errors": sum(self.stats.errors.values())}
        if kind == "report":
            return self.stats.report()
        if kind == "frames":
            return {"frames": self.frames()}
        raise ValueError(f"unknown command {kind!r}")


async def serve(kind: str) -> int:
    return await serve_commands(Worker(kind), say_bye=True)


async def serve_commands(worker: Answering, *, say_bye: bool = False) -> int:
    """Answers the JSON command lines on stdin, one reply line each on stdout, until "quit" or the end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=COMMAND_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command: dict[str, Any] = json.loads(line)
            if command.get("cmd") == "quit":
                break
            try:
                reply = await worker.answer(command)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            emit({**reply, "id": command.get("id")})
        return 0
    finally:
        await worker.close()
        if say_bye:
            emit({"bye": True})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=SUBSCRIBER_KINDS, required=True, help="the subscribers' kind")
    args = parser.parse_args(argv)
    raise_file_limit()
    return asyncio.run(serve(args.system))


if __name__ == "__main__":
    sys.exit(main())
