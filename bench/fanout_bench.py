"""Fan-out benchmark: Parley against python-socketio, nats-server and a bare grpc.aio server, same clients for all.

    python -m bench.fanout_bench [--quick] [--systems parley,parley_2gw,socketio,nats,grpc_floor]
                                 [--scenarios NAME,...]
                                 [--workers K] [--history] [--gateway-layout reuseport|ports]
                                 [--out FILE] [--plot FILE.png]

Every system's server runs in child processes of its own, so their CPU time
and memory, read from /proc, are kept apart from the clients'. The systems:
`parley` (`parley serve`, all-in-one), `parley_2gw` (two gateway processes on
a NATS bus, bench/fanout_parley.py), `socketio` (a python-socketio
AsyncServer, bench/socketio_server.py), `nats` (Debian's nats-server, the
ceiling) and `grpc_floor` (bench/grpc_floor_server.py: the least a grpc.aio
server does for these clients, a bidi stream of raw frames, a queue per
connection, one message per event; the floor under any grpc.aio server,
Parley's included). All run in the same invocation, interleaved: each
scenario runs on every system in turn before the next (bench/fanout_run.py).

The same client behaviour for all (bench/fanout_subscribers.py,
bench/fanout_publishers.py): every subscriber is its own user on its own TCP
connection, the subscribers live in K >= 2 worker processes
(bench/fanout_worker.py), and a publisher sends one event per call, at most 64
calls outstanding, reading every reply (nats-server's core publish has none)
and counting any error as a lost event. Parley's batched publisher (20 events
per frame) is kept as an extra scenario, labelled as such.

Every payload starts with `time.time_ns()` at publication; a delivery's
latency is its receive time minus that (one machine, one clock).
Scenarios (bench/fanout_scenarios.py): full speed at N = 1, 100, 1000; N=100
at 50 msg/s and N=1000 at 5 msg/s; 100 rooms × 10 subscribers with a
publisher per room at 5 msg/s; a join storm of 1,000; server memory per idle
connection with 2,000; the batched publisher; the full-speed scenarios on two
gateway processes.

Reported per system and scenario (bench/fanout_measure.py): deliveries
received against expected and lost, deliveries/s, latency p50/p99/max, the
publisher's calls and lost events, server CPU per delivery (every server
process, /proc/<pid>/stat), client CPU, and the warning and error lines each
server logged (bench/server_logs.py). Then the comparison and issue 10's
targets as ratios between systems of this run, met or not
(bench/fanout_targets.py). One JSON document on stdout; progress on stderr.
Not part of the test suite (tests/e2e/test_bench_smoke.py runs --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bench.fanout_baselines import GrpcFloorSystem, NatsSystem, SocketIOSystem
from bench.fanout_measure import STALL_SECONDS, WARMUP_MESSAGES
from bench.fanout_parley import BENCH_TOML, GATEWAY_LAYOUTS, HISTORY_EVENTS_TOML, PARLEY_ENV, ParleySystem
from bench.fanout_plot import plot
from bench.fanout_publishers import BATCH_EVENTS, WINDOW
from bench.fanout_run import run_interleaved
from bench.fanout_scenarios import SCENARIO_NAMES, Scenario, rooms_needed, select
from bench.fanout_subscribers import ParleySubscriber, open_all, raise_file_limit
from bench.fanout_systems import SETTLED_BELOW_CORES, SystemUnderTest
from bench.fanout_targets import SYSTEMS, comparison, targets
from bench.fanout_wire import EVENT, PAYLOAD_BYTES, ROOM, Stats, payload
from bench.identity_bench import machine_facts
from bench.report import print_document
from bench.server_process import CLOCK_TICKS, ProcessGroups

# What bench/scale_out_bench.py and bench/idle_memory_bench.py take from here.
__all__ = [
    "BENCH_TOML",
    "EVENT",
    "HISTORY_EVENTS_TOML",
    "PARLEY_ENV",
    "ROOM",
    "ParleySubscriber",
    "Stats",
    "main",
    "open_all",
    "payload",
    "raise_file_limit",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke run (well under a minute for all systems)"
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated systems to run: parley (all-in-one), parley_2gw (two gateway processes), socketio "
        f"(python-socketio), nats (nats-server), grpc_floor (a bare grpc.aio server) (default {','.join(SYSTEMS)})",
    )
    parser.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIO_NAMES)})",
    )
    parser.add_argument("--workers", type=int, default=2, help="subscriber worker processes, at least 2 (default 2)")
    parser.add_argument(
        "--history",
        action="store_true",
        help="Parley keeps every event in the room's history (stored, not only sequenced) while fanning out",
    )
    parser.add_argument(
        "--gateway-layout",
        choices=GATEWAY_LAYOUTS,
        default=GATEWAY_LAYOUTS[0],
        help="parley_2gw: reuseport (default), `parley serve --gateway-processes 2`, two gateway processes on one "
        "port; or ports, the services and two gateways on two ports (bench/scale_out_bench.py's deployment)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--plot", type=Path, help="write a PNG chart of deliveries/s and CPU per delivery")
    return parser


def make_system(
    name: str, log_dir: Path, groups: ProcessGroups, scenarios: Sequence[Scenario], args: argparse.Namespace
) -> SystemUnderTest:
    if name == "socketio":
        return SocketIOSystem(log_dir, groups)
    if name == "nats":
        return NatsSystem(log_dir, groups)
    if name == "grpc_floor":
        return GrpcFloorSystem(log_dir, groups)
    layout = args.gateway_layout if name == "parley_2gw" else ""
    return ParleySystem(log_dir, groups, rooms_needed(scenarios), keep_history=args.history, gateway_layout=layout)


async def coordinate(
    args: argparse.Namespace, chosen: Sequence[str], tmp: Path, groups: ProcessGroups
) -> dict[str, Any]:
    scenarios = select(args.quick, [s.strip() for s in args.scenarios.split(",") if s.strip()])
    systems = []
    for name in chosen:
        (tmp / name).mkdir()
        systems.append(make_system(name, tmp / name, groups, scenarios, args))
    results = await run_interleaved(systems, scenarios, tmp, groups, workers=args.workers, quick=args.quick)
    return {
        "benchmark": "fanout",
        "parameters": {
            "quick": args.quick,
            "parley_keeps_history": args.history,
            "worker_processes": args.workers,
            "gateway_layout_of_parley_2gw": args.gateway_layout,
            "payload_bytes": PAYLOAD_BYTES,
            "scenarios": [{"kind": type(s).__name__, "label": s.label, **dataclasses.asdict(s)} for s in scenarios],
            "publisher": f"one event per call, at most {WINDOW} calls outstanding, every reply read (nats-server: "
            "core publish, no reply exists), an error is a lost event; the batched extra: "
            f"{BATCH_EVENTS} events per call",
            "subscriber": "each its own user on its own TCP connection, spread over the worker processes",
            "warmup_messages_per_scenario": WARMUP_MESSAGES,
            "settled_below_cores": SETTLED_BELOW_CORES,
            "stall_seconds": STALL_SECONDS,
            "deliveries_per_s": "received / (last receive - first publish)",
            "latency": "receive time - the publication time in the payload (one machine, one clock)",
            "server_cpu_source": "/proc/<pid>/stat utime+stime of every server process (and what each started)",
            # CPU times come in clock ticks: a short scenario's CPU per delivery is that coarse.
            "cpu_resolution_seconds": 1 / CLOCK_TICKS,
            "rss_source": "/proc/<pid>/status VmRSS, summed over every server process",
        },
        "machine": machine_facts(),
        "systems": results,
        "comparison": comparison(results, scenarios),
        "targets": targets(results),
    }


def exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through every cleanup


def failed(document: dict[str, Any]) -> bool:
    return any(
        "error" in system
        or "stop_error" in system
        or any("error" in outcome or not outcome.get("complete", False) for outcome in system["scenarios"].values())
        for system in document["systems"].values()
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.workers < 2 or not chosen or any(s not in SYSTEMS for s in chosen):
        print(f"error: --workers must be >= 2 and --systems a list of {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    try:
        select(args.quick, [s.strip() for s in args.scenarios.split(",") if s.strip()])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raise_file_limit()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.perf_counter()
    groups = ProcessGroups()
    try:
        with tempfile.TemporaryDirectory(prefix="parley-fanout-") as tmp:
            document = asyncio.run(coordinate(args, chosen, Path(tmp), groups))
    finally:
        groups.kill_all()  # whatever server or worker a failed cleanup left behind
    document["total_seconds"] = round(time.perf_counter() - started, 1)
    print_document(document, args.out)
    if args.plot is not None:
        plot(document, args.plot)
    return 1 if failed(document) else 0


if __name__ == "__main__":
    sys.exit(main())
