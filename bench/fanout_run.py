"""Running the fan-out scenarios on every system, interleaved.

Every system's servers start first and stay up. Then each scenario runs on
every system in turn before the next scenario starts (the one-room scenarios
with the same N run together, on the same connections), so the figures a
ratio compares were measured within a minute or two of each other, under
much the same load from whatever else the machine runs. A system that is not
measuring has no connections and idles.

Each scenario's outcome carries the lines its servers (and its subscriber
workers) logged from the end of the scenario before until its own
connections were closed and the servers had settled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.fanout_measure import Run, idle_memory, join_all, join_storm, many_rooms
from bench.fanout_measure import throughput as measure_throughput
from bench.fanout_scenarios import IdleMemory, JoinStorm, ManyRooms, Scenario, Throughput, runs_on
from bench.fanout_systems import SystemUnderTest
from bench.fanout_wire import ROOM
from bench.fanout_worker_pool import WorkerPool
from bench.server_logs import LogSection, LogWatch
from bench.server_process import ProcessGroups


def log(message: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(outcome: dict[str, Any]) -> str:
    if "error" in outcome:
        return f"failed: {outcome['error']}"
    if "kib_per_connection" in outcome:
        return f"{outcome['kib_per_connection']} KiB per idle connection"
    if "joined" in outcome:
        presence = outcome["frames_per_subscriber_until_settled"].get("presence", {}).get("mean", 0)
        return f"{outcome['joined']} joined in {outcome['seconds']} s, {presence} presence frames per subscriber"
    latency = outcome["latency_ms"]
    return (
        f"{outcome['received']}/{outcome['expected']} {outcome['deliveries_per_s']}/s p50 {latency['p50']} ms "
        f"p99 {latency['p99']} ms, {outcome['server_cpu_us_per_delivery']} us server CPU/delivery"
    )


def failure(scenario: Scenario, error: BaseException) -> dict[str, Any]:
    return {"label": scenario.label, "error": f"{type(error).__name__}: {error}"}


def units(scenarios: Sequence[Scenario]) -> list[Sequence[Scenario]]:
    """The scenarios in order, except that the one-room scenarios of the same N form one unit where the first
    of them is."""
    found: list[Sequence[Scenario]] = []
    grouped: set[str] = set()
    for scenario in scenarios:
        if scenario.name in grouped:
            continue
        if isinstance(scenario, Throughput):
            group = [s for s in scenarios if isinstance(s, Throughput) and s.subscribers == scenario.subscribers]
            grouped.update(s.name for s in group)
            found.append(group)
        else:
            found.append([scenario])
    return found


class SystemRun:
    """One system: its servers, its subscriber workers, and its scenarios' outcomes."""

    def __init__(self, system: SystemUnderTest, log_dir: Path, groups: ProcessGroups) -> None:
        self.system = system
        self._log_dir = log_dir
        self._groups = groups
        self.result: dict[str, Any] = {"label": system.label}
        self.outcomes: dict[str, Any] = {}
        self.server_totals = LogSection()
        self._sections: dict[str, Any] = {}
        self._client_logs = LogWatch()
        self.run: Run | None = None

    async def start(self, workers: int, quick: bool) -> None:
        system = self.system
        try:
            await system.start()
            self.result["server_pids"] = system.servers.pids()
            log(f"{system.name}: servers {self.result['server_pids']}")
            pool = await WorkerPool.start(system.subscriber_kind, workers, self._log_dir, self._groups)
            self.result["worker_pids"] = [worker.pid for worker in pool.workers]
            for path in pool.stderr_paths:
                self._client_logs.watch(path.stem, path)
            self.run = Run(system, pool, quick)
        except Exception as exc:
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{system.name} failed to start: {self.result['error']}")
        started = system.servers.log_section()
        self._sections["start"] = started.report()
        self.server_totals.merge(started)

    async def record(self, scenario: Scenario, outcome: dict[str, Any], *, closed: bool) -> None:
        """`closed`: its connections are closed; what the servers log on that is waited for and counted."""
        assert self.run is not None
        if closed:
            outcome["settle_after_teardown"] = await self.run.settle()
        server = self.system.servers.log_section()
        self.server_totals.merge(server)
        outcome["server_log"] = server.report()
        outcome["client_log"] = self._client_logs.section().report()
        self.outcomes[scenario.name] = outcome
        log(f"{self.system.name} {scenario.name}: {summary(outcome)}")

    async def unit(self, unit: Sequence[Scenario]) -> None:
        if self.run is None:
            return
        if isinstance(unit[0], Throughput):
            await self._room_of([s for s in unit if isinstance(s, Throughput)])
            return
        (scenario,) = unit
        try:
            if isinstance(scenario, IdleMemory):
                outcome = await idle_memory(self.run, scenario)
            elif isinstance(scenario, ManyRooms):
                outcome = await many_rooms(self.run, scenario)
            else:
                assert isinstance(scenario, JoinStorm)
                outcome = await join_storm(self.run, scenario)
        except Exception as exc:
            outcome = failure(scenario, exc)
        await self.record(scenario, outcome, closed=True)

    async def _room_of(self, group: Sequence[Throughput]) -> None:
        """The scenarios with one room of N subscribers, on the same N connections."""
        assert self.run is not None
        try:
            setup = await join_all(self.run, [ROOM] * group[0].subscribers)
        except Exception as exc:
            await self.run.disconnect()
            for scenario in group:
                await self.record(scenario, failure(scenario, exc), closed=scenario is group[-1])
            return
        for scenario in group:
            try:
                outcome = await measure_throughput(self.run, scenario)
            except Exception as exc:
                outcome = failure(scenario, exc)
            outcome["setup"] = setup
            if scenario is group[-1]:
                await self.run.disconnect()
            await self.record(scenario, outcome, closed=scenario is group[-1])

    async def finish(self) -> dict[str, Any]:
        """Stops the workers and the servers; the system's results."""
        system, result = self.system, self.result
        if self.run is not None:
            await self.run.close()
            await self.run.pool.stop()
        result["server_rss_end_kib"] = system.servers.rss_kib()
        try:
            result["server_exit_codes"] = await system.stop()
        except Exception as exc:
            result["stop_error"] = f"{type(exc).__name__}: {exc}"  # the coordinator's last `finally` kills the rest
        stopped = system.servers.log_section()
        self._sections["stop"] = stopped.report()
        self.server_totals.merge(stopped)
        result.update(
            description=system.describe(),
            scenarios=self.outcomes,
            server_log_outside_scenarios=self._sections,
            server_log_totals=self.server_totals.report(),
        )
        return result


async def run_interleaved(
    systems: Sequence[SystemUnderTest],
    scenarios: Sequence[Scenario],
    tmp: Path,
    groups: ProcessGroups,
    *,
    workers: int,
    quick: bool,
) -> dict[str, Any]:
    """Every system's results, by name."""
    runs = [SystemRun(system, tmp / system.name, groups) for system in systems]
    try:
        for run in runs:
            await run.start(workers, quick)
        for unit in units(scenarios):
            for run in runs:
                chosen = [s for s in unit if runs_on(s, run.system.name)]
                if chosen:
                    await run.unit(chosen)
    finally:
        results = {run.system.name: await run.finish() for run in runs}
    return results
