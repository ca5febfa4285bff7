"""Subscribers spread over worker processes (`bench.fanout_worker`), seen from the coordinator.

Subscriber i goes to worker i mod K, so the members of a room (consecutive
indices) are split over the workers. Every command goes to all workers at
once; their answers are merged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import merged_counts
from bench.server_process import ProcessGroups, cpu_seconds, kill_group

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECT_TIMEOUT_SECONDS = 300.0
REPLY_TIMEOUT_SECONDS = 60.0
JOIN_REPLY_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.05
# Worker replies carry every latency sample of a measurement.
REPLY_LINE_LIMIT = 256 * 1024 * 1024


class WorkerProcess:
    """One worker: JSON commands on its stdin, one JSON reply line each on its stdout."""

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path, groups: ProcessGroups) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self._groups = groups
        self._lock = asyncio.Lock()
        self._requests = 0

    @classmethod
    async def start(cls, kind: str, name: str, log_dir: Path, groups: ProcessGroups) -> WorkerProcess:
        return await cls.run_module(("bench.fanout_worker", "--system", kind), name, log_dir, groups)

    @classmethod
    async def run_module(
        cls, module_and_args: Sequence[str], name: str, log_dir: Path, groups: ProcessGroups
    ) -> WorkerProcess:
        """`python -m module args...` in a session of its own; its stderr in log_dir/name.stderr."""
        stderr_path = log_dir / f"{name}.stderr"
        with stderr_path.open("w") as stderr:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", *module_and_args),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=REPO_ROOT,
                start_new_session=True,
                limit=REPLY_LINE_LIMIT,
            )
        groups.add(process.pid)
        return cls(process, stderr_path, groups)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def request(self, command: dict[str, Any], seconds: float = REPLY_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Sends `command` and returns its reply; a reply to an earlier command that timed out is skipped."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        async with self._lock:
            self._requests += 1
            number = self._requests
            self.process.stdin.write((json.dumps({**command, "id": number}) + "\n").encode())
            await self.process.stdin.drain()
            async with asyncio.timeout(seconds):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        raise RuntimeError(f"worker {self.pid} ended: {self.stderr_path.read_text()[-2000:]}")
                    reply: dict[str, Any] = json.loads(line)
                    if reply.get("id") == number:
                        break
        if "error" in reply:
            raise RuntimeError(f"worker {self.pid}: {reply['error']}")
        return reply

    def cpu_seconds(self) -> float:
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return 0.0

    async def stop(self) -> None:
        if self.process.returncode is None and self.process.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.process.stdin.write(b'{"cmd": "quit"}\n')
                await self.process.stdin.drain()
                self.process.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
        kill_group(self.pid)
        self._groups.discard(self.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)


@dataclasses.dataclass(frozen=True)
class JoinOutcome:
    joined: int
    first_sent_ns: int
    last_ready_ns: int
    join_us: list[int]
    failures: dict[str, int]

    @property
    def seconds(self) -> float:
        return (self.last_ready_ns - self.first_sent_ns) / 1e9


class WorkerPool:
    """K worker processes, started once per system, holding whatever subscribers the scenario at hand needs."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers
        self.count = 0
        # Subscribers connected to each server process, where the system says which (Parley's gateways).
        self.per_server: dict[str, int] = {}

    @classmethod
    async def start(cls, kind: str, workers: int, log_dir: Path, groups: ProcessGroups) -> WorkerPool:
        return cls([await WorkerProcess.start(kind, f"worker-{kind}-{n}", log_dir, groups) for n in range(workers)])

    @property
    def holding(self) -> int:
        """Worker processes holding subscribers now."""
        return min(len(self.workers), self.count)

    def _split(self, items: Sequence[Any]) -> list[list[Any]]:
        return [list(items[i :: len(self.workers)]) for i in range(len(self.workers))]

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

    async def connect(self, specs: Sequence[dict[str, str]]) -> float:
        """Opens one connection per spec (closing those held before); the seconds it took."""
        started = time.perf_counter()
        self.count = 0
        commands = [{"cmd": "connect", "subscribers": share} for share in self._split(specs)]
        replies = await self._all(commands, CONNECT_TIMEOUT_SECONDS)
        self.count = len(specs)
        self.per_server = {}
        for reply in replies:
            for server, count in reply["servers"].items():
                self.per_server[server] = self.per_server.get(server, 0) + count
        return time.perf_counter() - started

    async def disconnect(self) -> None:
        await self._each({"cmd": "close"}, CONNECT_TIMEOUT_SECONDS)
        self.count = 0

    async def join(self, rooms: Sequence[str], concurrency: int = 0) -> JoinOutcome:
        """Subscriber i joins rooms[i]; `concurrency` joins at once per worker (0: all at once)."""
        commands = [{"cmd": "join", "rooms": share, "concurrency": concurrency} for share in self._split(rooms)]
        replies = [r for r in await self._all(commands, JOIN_REPLY_TIMEOUT_SECONDS) if r["joined"] or r["failures"]]
        return JoinOutcome(
            joined=sum(int(r["joined"]) for r in replies),
            first_sent_ns=min(int(r["first_sent_ns"]) for r in replies),
            last_ready_ns=max(int(r["last_ready_ns"]) for r in replies),
            join_us=sorted(us for r in replies for us in r["join_us"]),
            failures=merged_counts(r["failures"] for r in replies),
        )

    async def reset(self, tag: str) -> None:
        await self._each({"cmd": "reset", "tag": tag})

    async def received(self) -> int:
        return sum(int(r["received"]) for r in await self._each({"cmd": "count"}))

    async def reports(self) -> list[dict[str, Any]]:
        return await self._each({"cmd": "report"})

    async def frames(self) -> dict[str, list[int]]:
        """Frames each subscriber received since its join (or the last reset), by kind."""
        replies = [reply["frames"] for reply in await self._each({"cmd": "frames"})]
        held = [len(share) for share in self._split(range(self.count))]
        kinds = sorted({kind for reply in replies for kind in reply})
        return {
            kind: [n for reply, size in zip(replies, held, strict=True) for n in reply.get(kind, [0] * size)]
            for kind in kinds
        }

    async def wait_for(self, expected: int, within: float, stall: float) -> tuple[int, bool]:
        """Polls until `expected` events arrived, `within` seconds passed or none arrived for `stall` seconds."""
        deadline = time.monotonic() + within
        last_total, last_change = -1, time.monotonic()
        while True:
            total = await self.received()
            now = time.monotonic()
            if total >= expected:
                return total, True
            if total != last_total:
                last_total, last_change = total, now
            if now > deadline or now - last_change > stall:
                return total, False
            await asyncio.sleep(POLL_SECONDS)

    def cpu_seconds(self) -> float:
        return sum(w.cpu_seconds() for w in self.workers)

    @property
    def stderr_paths(self) -> list[Path]:
        return [w.stderr_path for w in self.workers]

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
