"""SDK clients spread over worker processes (bench/connection_life_worker.py), seen from the coordinator.

Every command goes to all workers at once (bench/fanout_worker_pool.py's
`WorkerProcess` carries it); their answers are merged here.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.connection_life_tracking import Absence
from bench.fanout_worker_pool import WorkerProcess
from bench.server_process import ProcessGroups

# Registering, logging in and joining: about 10 s per 1,000 clients on two cores.
OPEN_TIMEOUT_SECONDS = 600.0
REPLY_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.02


async def start_process(module: str, name: str, log_dir: Path, groups: ProcessGroups) -> WorkerProcess:
    """`python -m module` in a session of its own, driven as a `WorkerProcess`; its stderr in log_dir/name.stderr."""
    return await WorkerProcess.run_module((module,), name, log_dir, groups)


@dataclasses.dataclass(frozen=True)
class Status:
    clients: int
    ready: int
    left: int
    states: dict[str, int]
    # Clients whose latest stream is (or was) on each gateway, by gateway id.
    on_gateway: dict[str, int]
    unrecovered: int

    @property
    def all_ready(self) -> bool:
        return self.ready == self.clients


class ClientWorkers:
    """K worker processes holding SDK clients between them."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    @classmethod
    async def start(cls, count: int, log_dir: Path, groups: ProcessGroups, tag: str) -> ClientWorkers:
        module = "bench.connection_life_worker"
        return cls([await start_process(module, f"{tag}-worker-{n}", log_dir, groups) for n in range(count)])

    async def _all(self, commands: Sequence[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
        """Each worker's reply to its command; the first failure once every worker has answered."""
        pairs = zip(self.workers, commands, strict=True)
        replies = await asyncio.gather(*(w.request(c, seconds) for w, c in pairs), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return [reply for reply in replies if not isinstance(reply, BaseException)]

    async def _each(self, command: dict[str, Any], seconds: float = REPLY_TIMEOUT_SECONDS) -> list[dict[str, Any]]:
        return await self._all([command] * len(self.workers), seconds)

    async def open(self, address: str, count: int, room: str, event: str) -> float:
        """`count` clients on `address`, shared evenly over the workers, joined to `room`; the seconds it took."""
        started = time.perf_counter()
        workers = len(self.workers)
        shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
        commands = [
            {"cmd": "open", "address": address, "count": share, "room": room, "event": event} for share in shares
        ]
        await self._all(commands, OPEN_TIMEOUT_SECONDS)
        return time.perf_counter() - started

    async def mark(self) -> None:
        """Each client's state changes are recorded afresh from now."""
        await self._each({"cmd": "mark"})

    async def status(self) -> Status:
        replies = await self._each({"cmd": "status"})
        states: collections.Counter[str] = collections.Counter()
        on_gateway: collections.Counter[str] = collections.Counter()
        for reply in replies:
            states.update(reply["states"])
            on_gateway.update(reply["on_gateway"])
        return Status(
            clients=sum(int(r["clients"]) for r in replies),
            ready=sum(int(r["ready"]) for r in replies),
            left=sum(int(r["left"]) for r in replies),
            states=dict(states),
            on_gateway=dict(on_gateway),
            unrecovered=sum(int(r["unrecovered"]) for r in replies),
        )

    async def wait_until_ready(self, within: float) -> Status:
        """Polls until every client is connected with its room joined, or `within` seconds passed."""
        deadline = time.monotonic() + within
        while True:
            status = await self.status()
            if status.all_ready or time.monotonic() > deadline:
                return status
            await asyncio.sleep(POLL_SECONDS)

    async def absences(self) -> tuple[list[Absence], dict[str, int]]:
        """Every client's time away since the mark (those that never left are not listed), and errors by kind."""
        found: list[Absence] = []
        errors: collections.Counter[str] = collections.Counter()
        for reply in await self._each({"cmd": "absences"}):
            found += [Absence(int(a["left_ns"]), a["back_ns"]) for a in reply["absences"]]
            errors.update(reply["errors"])
        return found, dict(errors)

    async def received(self) -> int:
        return sum(int(r["received"]) for r in await self._each({"cmd": "count"}))

    async def tallies(self, expected: Sequence[int]) -> list[dict[str, int]]:
        replies = await self._each({"cmd": "tally", "expected": list(expected)})
        return [t for reply in replies for t in reply["tallies"]]

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
