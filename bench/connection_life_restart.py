"""Scenario "restart": `parley serve` restarted under N connected SDK clients; how long until all have resumed.

The server (all-in-one, SQLite, in-process bus) runs as a child process
with room "bench". N clients, each a user of its own on its own connection,
spread over K worker processes, join it. Then the restart: SIGTERM (the
gateway drains: GoAway with the reconnect hint, grace period), wait for the
process to exit, start `parley serve` again on the same port and data
directory. Each client's resume time is when its state became `connected`
again (its room joined and resumed), from the restart's start and from the
moment the new server's "listening" line was seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.connection_life_clients import ClientWorkers
from bench.connection_life_tracking import Absence
from bench.fanout_wire import EVENT, ROOM
from bench.report import percentile_ms
from bench.scale_out_bench import write_config
from bench.server_logs import LogWatch
from bench.server_process import ProcessGroups, ServerProcess, parley_serve

log = logging.getLogger("bench.connection_life")
REPO_ROOT = Path(__file__).resolve().parents[1]
# How long every client may take to be back after the new server listens (the backoff's cap is 10 s).
RESUME_TIMEOUT_SECONDS = 120.0
NS_PER_SECOND = 1e9


def resume_ms(absences: Sequence[Absence], since_ns: int) -> dict[str, float | None]:
    """p50, p99 and max of the clients' returns, in ms after `since_ns`, over those that came back."""
    ordered = sorted((a.back_ns - since_ns) / NS_PER_SECOND for a in absences if a.back_ns is not None)
    return {
        "p50": percentile_ms(ordered, 0.50),
        "p99": percentile_ms(ordered, 0.99),
        "max": percentile_ms(ordered, 1.0),
    }


def seconds_between(start_ns: int, end_ns: int) -> float:
    return round((end_ns - start_ns) / NS_PER_SECOND, 3)


class RestartableServer:
    """`parley serve` in a child process, stopped and started again on the same port and data directory."""

    def __init__(self, tmp: Path, env: Mapping[str, str], groups: ProcessGroups) -> None:
        self._tmp = tmp
        self._env = env
        self._groups = groups
        self._config = write_config(tmp)
        self.logs = LogWatch()
        self.generation = 0
        self.port = "0"
        self.process: ServerProcess | None = None
        self.pids: dict[str, int] = {}

    def start(self) -> str:
        """Starts the server (on its earlier port, once it had one); its address once it listens."""
        self.generation += 1
        command = parley_serve(self._tmp / "data", "--config", str(self._config), "--port", self.port)
        name = f"parley-{self.generation}"
        self.process = ServerProcess(command, self._tmp, name=name, env=self._env, cwd=REPO_ROOT)
        self._groups.add(self.process.pid)
        self.pids[name] = self.process.pid
        self.logs.watch(name, self.process.stderr_path)
        address = self.process.wait_for_address()
        self.port = address.rsplit(":", 1)[1]
        return address

    def stop(self) -> int | None:
        """SIGTERM, and wait until it has exited; its exit code (None when none runs)."""
        if self.process is None:
            return None
        code = self.process.terminate()
        self._groups.discard(self.process.pid)
        self.process = None
        return code


async def measure_restart(
    clients: int, workers: int, env: Mapping[str, str], tmp: Path, groups: ProcessGroups
) -> dict[str, Any]:
    await asyncio.to_thread(tmp.mkdir)
    server = RestartableServer(tmp, env, groups)
    pool = await ClientWorkers.start(workers, tmp, groups, "restart")
    try:
        address = await asyncio.to_thread(server.start)
        open_seconds = await pool.open(address, clients, ROOM, EVENT)
        log.info("restart: %d clients joined in %.1f s; restarting", clients, open_seconds)
        await pool.mark()
        restart_ns = time.time_ns()
        exit_code = await asyncio.to_thread(server.stop)
        stopped_ns = time.time_ns()
        await asyncio.to_thread(server.start)
        listening_ns = time.time_ns()
        status = await pool.wait_until_ready(RESUME_TIMEOUT_SECONDS)
        absences, errors = await pool.absences()
    finally:
        await pool.stop()
        await asyncio.to_thread(server.stop)
    back = [a.back_ns for a in absences if a.back_ns is not None]
    # Every client left and came back: only then is there a time for all of them.
    last = max(back) if status.all_ready and len(back) == clients else None
    return {
        "complete": last is not None,
        "clients": clients,
        "client_processes": workers,
        "open_seconds": round(open_seconds, 1),
        "old_server_exit_code": exit_code,
        "stop_seconds": seconds_between(restart_ns, stopped_ns),
        "start_seconds": seconds_between(stopped_ns, listening_ns),
        "clients_that_left_connected": len(absences),
        "clients_resumed": len(back),
        "clients_not_connected_at_end": status.clients - status.ready,
        "states_at_end": status.states,
        "resume_ms_from_restart": resume_ms(absences, restart_ns),
        "resume_ms_from_listening": resume_ms(absences, listening_ns),
        "all_resumed_seconds_from_restart": seconds_between(restart_ns, last) if last else None,
        "all_resumed_seconds_from_listening": seconds_between(listening_ns, last) if last else None,
        "client_errors": errors,
        "server_log": server.logs.section().report(),
        "server_pids": server.pids,
        "worker_pids": pool.pids,
    }
