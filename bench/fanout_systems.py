"""What the fan-out benchmark asks of a system under test, and the server processes every system runs on.

A system is a set of server processes (`ServerGroup`: their CPU time and
memory from /proc, counting every process each one started, and their logs)
plus the way its clients reach them: subscriber specs for the worker
processes and publishers opened in the coordinator.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bench.fanout_publishers import Publisher
from bench.server_logs import LogSection, LogWatch
from bench.server_process import ProcessGroups, ServerProcess, descendants, total_cpu_seconds, total_rss_kib

# A system counts as settled (done with what came before) below this much CPU, in cores.
SETTLED_BELOW_CORES = 0.1


class ServerGroup:
    """A system's server processes, by name, each in its own process group."""

    def __init__(self, groups: ProcessGroups) -> None:
        self.processes: dict[str, ServerProcess] = {}
        self.logs = LogWatch()
        self._groups = groups

    def start(self, name: str, command: Sequence[str], log_dir: Path, **options: Any) -> ServerProcess:
        process = ServerProcess(command, log_dir, name=name, **options)
        self.add(process)
        return process

    def add(self, process: ServerProcess) -> None:
        """A process started elsewhere, watched and stopped with the others."""
        self.processes[process.name] = process
        self._groups.add(process.pid)
        # Logs go to stderr; stdout is what a server prints on purpose (where it listens).
        self.logs.watch(process.name, process.stderr_path)

    def pids(self) -> dict[str, list[int]]:
        """Each server's process and every process it started (a gateway pool's gateways)."""
        trees = descendants(process.pid for process in self.processes.values())
        return {name: trees[process.pid] for name, process in self.processes.items()}

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds of each server, and apart of each process it started ("<name> child <pid>")."""
        found: dict[str, float] = {}
        for name, (root, *children) in self.pids().items():
            found[name] = total_cpu_seconds([root])
            for child in children:
                found[f"{name} child {child}"] = total_cpu_seconds([child])
        return found

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def rss_kib(self) -> int:
        return sum(total_rss_kib(pids) for pids in self.pids().values())

    def log_section(self) -> LogSection:
        return self.logs.section()

    async def settle(self, window: float, limit: float) -> tuple[float, bool]:
        """Waits until the servers use less than SETTLED_BELOW_CORES over `window` seconds (at most `limit`
        seconds); how long that took, and whether they settled."""
        started = time.perf_counter()
        while True:
            before = self.cpu_seconds()
            await asyncio.sleep(window)
            if (self.cpu_seconds() - before) / window < SETTLED_BELOW_CORES:
                return time.perf_counter() - started, True
            if time.perf_counter() - started > limit:
                return time.perf_counter() - started, False

    def stop(self, *waves: Sequence[str]) -> dict[str, int | None]:
        """SIGTERM to the servers named in each wave in turn (a wave at once), then to the rest; exit codes.

        A name of no server here is passed over."""
        named = {name for wave in waves for name in wave}
        rest = [name for name in self.processes if name not in named]
        codes: dict[str, int | None] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self.processes))) as pool:
            for wave in (*waves, rest):
                processes = [self.processes[name] for name in wave if name in self.processes]
                for process, code in zip(processes, pool.map(ServerProcess.terminate, processes), strict=True):
                    codes[process.name] = code
                    self._groups.discard(process.pid)
        return codes


class SystemUnderTest(Protocol):
    # "parley", "parley_2gw", "socketio", "nats", "grpc_floor": the key of its results.
    name: str
    label: str
    # The worker processes' subscriber kind (bench/fanout_worker.py).
    subscriber_kind: str
    servers: ServerGroup

    async def start(self) -> None: ...

    async def subscriber_specs(self, count: int) -> list[dict[str, str]]:
        """`count` subscribers, each its own user: where each connects and as whom."""

    def publisher(self, room: str, index: int) -> Callable[[], Awaitable[Publisher]]:
        """How to open publisher `index` of `room` (its own user, its own connection)."""

    async def stop(self) -> dict[str, int | None]: ...
    def describe(self) -> dict[str, Any]: ...
