"""A benchmark's server under test, in a child process whose CPU time and memory are read from /proc.

Standard library only: `bench/hardening_bench.py` imports it, run as a script,
while `services` and `parley` come from another tree (see its docstring).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

LISTENING = re.compile(r"listening on (\S+):(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
# After SIGKILL, how long the process may take to be reaped.
KILL_WAIT_SECONDS = 5.0
STDERR_TAIL_CHARS = 2000


def parley_serve(data_dir: Path, *options: str) -> list[str]:
    """`python -m parley.cli.main serve` on a free port, storing in `data_dir`."""
    return [sys.executable, "-m", "parley.cli.main", "serve", "--port", "0", "--data-dir", str(data_dir), *options]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def descendants(roots: Iterable[int]) -> dict[int, list[int]]:
    """Each of `roots` with every live process under it (what a server started, even in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue  # ended meanwhile
        # After the parenthesised command name: state, ppid.
        children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    found: dict[int, list[int]] = {}
    for root in roots:
        tree, pending = [], [root]
        while pending:
            pid = pending.pop()
            tree.append(pid)
            pending.extend(children.get(pid, ()))
        found[root] = tree
    return found


def total_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time of the processes `pids` that are still there, summed."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def total_rss_kib(pids: Iterable[int]) -> int:
    """Resident memory of the processes `pids` that are still there, summed."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kib(pid)
    return total


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads, if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ServerProcess:
    """A server in a child process (its own process group) that prints "listening on HOST:PORT"
    (or what `listening` matches, host and port its two groups) on stdout or stderr.

    Its stdout and stderr go to `<name>.stdout` and `<name>.stderr` in `log_dir`.
    """

    def __init__(
        self,
        command: Sequence[str],
        log_dir: Path,
        *,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        listening: re.Pattern[str] = LISTENING,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self._listening = listening
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._stdout_path = log_dir / f"{name}.stdout"
        self._stderr_path = log_dir / f"{name}.stderr"
        with open(self._stdout_path, "w") as stdout, open(self._stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                list(command),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for_address(self) -> str:
        """Waits until the server prints where it listens; returns and keeps that `host:port`."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            match = self._listening.search(self._stdout_path.read_text()) or self._listening.search(
                self._stderr_path.read_text()
            )
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                return self.address
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.stderr_tail()}")
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name} did not print its address within {STARTUP_TIMEOUT_SECONDS}s: {self.stderr_tail()}"
        )

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    @property
    def stderr_path(self) -> Path:
        """Where its stderr (its log) goes."""
        return self._stderr_path

    def terminate(self) -> int:
        """SIGTERM (or its stop signal), then wait; SIGKILL the process group if it does not stop in time.

        Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(self._stop_signal)
            try:
                self.process.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.pid)
                self.process.wait(KILL_WAIT_SECONDS)
        kill_group(self.pid)  # anything it left behind in its group
        return self.process.returncode

    def stderr_tail(self) -> str:
        return self._stderr_path.read_text()[-STDERR_TAIL_CHARS:]


class ProcessGroups:
    """The process groups a benchmark started, so that whatever is left of them is killed on the way out."""

    def __init__(self) -> None:
        self._leaders: set[int] = set()

    def add(self, pid: int) -> None:
        self._leaders.add(pid)

    def discard(self, pid: int) -> None:
        self._leaders.discard(pid)

    def kill_all(self) -> None:
        for pid in list(self._leaders):
            kill_group(pid)
        self._leaders.clear()
