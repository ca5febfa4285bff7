"""A connection-life benchmark worker: a process holding SDK clients (`parley.Client`), driven over stdin/stdout.

    python -m bench.connection_life_worker

Started by the benchmark (bench/connection_life_clients.py), never by hand.
It reads one JSON command per line on stdin and answers each with one JSON
line on stdout, carrying the command's "id" ({"error": ...} when it failed):

- {"cmd": "open", "address": A, "count": N, "room": R, "event": E}: N
  clients, each a newly registered user with its own channel (so its own
  connection), joined to R; from then each counts the events named E it
  receives (payload {"n": number});
- {"cmd": "mark"}: each client's state changes are recorded afresh from now;
- {"cmd": "status"}: how many clients are connected with their room joined,
  how many have left `connected` since the mark, how many are on each
  gateway (by id), and how many reconnections did not recover their room;
- {"cmd": "absences"}: for each client that left `connected` since the mark,
  when it left and when it was back (time.time_ns(); null while it is not);
- {"cmd": "count"}: events received so far, all clients together;
- {"cmd": "tally", "expected": [n, ...]}: each client's events against the
  expected payload numbers, and its reconnections that did not recover;
- {"cmd": "quit"}.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.connection_life_tracking import TrackedClient, open_tracked, tally
from bench.fanout_subscribers import raise_file_limit
from bench.fanout_worker import serve_commands
from parley.device_identity import DeviceIdentity

# Clients registering and joining at once, per worker.
OPEN_CONCURRENCY = 16
CLOSE_TIMEOUT_SECONDS = 10.0


class Worker:
    def __init__(self) -> None:
        self.clients: list[TrackedClient] = []

    async def open(self, address: str, count: int, room_id: str, event: str) -> dict[str, Any]:
        started = time.perf_counter()
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> TrackedClient:
            async with gate:
                identity = DeviceIdentity.generate(f"life{secrets.token_hex(5)}")
                return await open_tracked(address, identity, room_id, event)

        opened = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        self.clients += [c for c in opened if isinstance(c, TrackedClient)]
        failures = collections.Counter(
            f"{type(c).__name__}: {c}"[:200] for c in opened if not isinstance(c, TrackedClient)
        )
        if failures:
            raise RuntimeError(f"{sum(failures.values())} of {count} clients did not open: {dict(failures)}")
        return {"opened": count, "seconds": round(time.perf_counter() - started, 3)}

    def status(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "ready": sum(1 for c in self.clients if c.ready),
            "left": sum(1 for c in self.clients if c.absence() is not None),
            "on_gateway": collections.Counter(c.gateway for c in self.clients),
            "unrecovered": sum(c.unrecovered for c in self.clients),
            "states": collections.Counter(c.client.state.value for c in self.clients),
        }

    def absences(self) -> dict[str, Any]:
        found = [a for c in self.clients if (a := c.absence()) is not None]
        errors: collections.Counter[str] = collections.Counter()
        for client in self.clients:
            errors.update(client.errors)
        return {"absences": [dataclasses.asdict(a) for a in found], "errors": errors}

    def tally(self, expected: Sequence[int]) -> dict[str, Any]:
        return {"tallies": [{**tally(c.numbers, c.seqs, expected), "unrecovered": c.unrecovered} for c in self.clients]}

    async def close(self) -> None:
        clients, self.clients = self.clients, []
        closing = asyncio.gather(*(c.client.close() for c in clients), return_exceptions=True)
        await asyncio.wait_for(closing, CLOSE_TIMEOUT_SECONDS)

    async def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        kind = command.get("cmd")
        if kind == "open":
            return await self.open(command["address"], int(command["count"]), command["room"], command["event"])
        if kind == "mark":
            for client in self.clients:
                client.mark()
            return {"ok": True}
        if kind == "status":
            return self.status()
        if kind == "absences":
            return self.absences()
        if kind == "count":
            return {"received": sum(len(c.numbers) for c in self.clients)}
        if kind == "tally":
            return self.tally(command["expected"])
        raise ValueError(f"unknown command {kind!r}")


async def serve() -> int:
    return await serve_commands(Worker())


def main() -> int:
    raise_file_limit()
    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
