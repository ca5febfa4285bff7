"""Connection-life benchmark: SDK clients through a server restart and a rolling drain of two gateways.

    python -m bench.connection_life_bench [--quick] [--scenarios restart,drain] [--clients N] [--workers K]
                                          [--subscribers M] [--rate R] [--phase-seconds S]
                                          [--drain-within-ms MS] [--out FILE]

Two scenarios, each with SDK clients (`parley.Client`, each a user of its
own with its own channel, so its own connection) in K >= 2 worker processes
(bench/connection_life_worker.py):

- restart (bench/connection_life_restart.py): `parley serve` all-in-one with
  N clients joined to a room is stopped (SIGTERM: the gateway drains) and
  started again on the same port and data directory. Reported: p50/p99/max of
  each client's time until it was `connected` again with its room resumed,
  from the restart's start and from the new server's "listening" line (seen
  within 50 ms), and the time until all were.
- drain (bench/connection_life_drain.py): the identity, history, room and file
  services and two gateways on NATS (127.0.0.1:4222, a subject prefix of the
  run's own), SQLite; clients reach the gateways through a round-robin TCP
  load balancer of the bench's own (bench/connection_life_balancer.py). M
  subscribers and a publisher sending R events a second with `room.send`
  (the outbox) into a room that keeps every event; gateway 1 is drained
  (out of the balancer, SIGTERM) and restarted, then gateway 2. Reported:
  events published, the sends' outcomes, events stored (history, and any
  stored twice), deliveries per subscriber against history (lost,
  duplicated, out of order), and per drain the time until every client was
  connected again.

Every server runs with `gateway.drain_reconnect_within_ms` = --drain-within-ms
(the hint a draining gateway's GoAway carries) and `server.grace_seconds` =
1; the clients with the SDK's default Backoff and Heartbeat. One JSON
document on stdout, progress on stderr. Not part of the test suite
(tests/e2e/test_bench_smoke.py runs --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bench.connection_life_drain import measure_rolling_drain
from bench.connection_life_restart import measure_restart
from bench.fanout_subscribers import raise_file_limit
from bench.identity_bench import machine_facts
from bench.report import load_average, print_document
from bench.scale_out_bench import NATS_URL, SERVER_ENV
from bench.server_process import ProcessGroups
from parley.backoff import Backoff
from parley.connection import Heartbeat

SCENARIOS = ("restart", "drain")


@dataclasses.dataclass(frozen=True)
class Sizes:
    clients: int
    subscribers: int
    rate: float
    phase_seconds: float
    drain_within_ms: int


FULL = Sizes(clients=1000, subscribers=100, rate=100.0, phase_seconds=5.0, drain_within_ms=2000)
QUICK = Sizes(clients=20, subscribers=6, rate=20.0, phase_seconds=0.5, drain_within_ms=500)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.connection_life_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke run (about 15 s on an idle machine)"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated (default {','.join(SCENARIOS)})"
    )
    parser.add_argument("--workers", type=int, default=2, help="client worker processes, at least 2 (default 2)")
    parser.add_argument(
        "--clients", type=int, help=f"restart: clients (default {FULL.clients}, --quick {QUICK.clients})"
    )
    parser.add_argument(
        "--subscribers", type=int, help=f"drain: subscribers (default {FULL.subscribers}, --quick {QUICK.subscribers})"
    )
    parser.add_argument(
        "--rate", type=float, help=f"drain: events a second (default {FULL.rate:g}, --quick {QUICK.rate:g})"
    )
    parser.add_argument(
        "--phase-seconds",
        type=float,
        help=f"drain: publishing before, between and after the drains (default {FULL.phase_seconds:g}, "
        f"--quick {QUICK.phase_seconds:g})",
    )
    parser.add_argument(
        "--drain-within-ms",
        type=int,
        help=f"gateway.drain_reconnect_within_ms on every server (default {FULL.drain_within_ms}, the server's "
        f"default; --quick {QUICK.drain_within_ms})",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


def sizes(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        clients=args.clients or base.clients,
        subscribers=args.subscribers or base.subscribers,
        rate=args.rate or base.rate,
        phase_seconds=args.phase_seconds or base.phase_seconds,
        drain_within_ms=base.drain_within_ms if args.drain_within_ms is None else args.drain_within_ms,
    )


log = logging.getLogger("bench.connection_life")


def log_to_stderr() -> None:
    """Progress, this module's and the scenarios', on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[connection-life %(asctime)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def server_env(drain_within_ms: int) -> dict[str, str]:
    return {**SERVER_ENV, "PARLEY_GATEWAY_DRAIN_RECONNECT_WITHIN_MS": str(drain_within_ms)}


async def run_scenario(name: str, chosen: Sizes, workers: int, tmp: Path, groups: ProcessGroups) -> dict[str, Any]:
    env = server_env(chosen.drain_within_ms)
    if name == "restart":
        log.info(f"restart: {chosen.clients} clients on parley serve, restarted once")
        result = await measure_restart(chosen.clients, workers, env, tmp / name, groups)
        log.info(
            f"restart: {result['clients_resumed']}/{result['clients']} resumed, all within "
            f"{result['all_resumed_seconds_from_restart']} s of the restart "
            f"({result['all_resumed_seconds_from_listening']} s of listening); "
            f"p50/p99 {result['resume_ms_from_restart']['p50']}/{result['resume_ms_from_restart']['p99']} ms"
        )
        return result
    log.info(f"drain: {chosen.subscribers} subscribers, {chosen.rate:g} events/s, two gateways drained in turn")
    result = await measure_rolling_drain(
        chosen.subscribers, chosen.rate, chosen.phase_seconds, workers, env, tmp / name, groups
    )
    deliveries = result["deliveries"]
    log.info(
        f"drain: {result['publisher']['published']} published, {result['history']['stored']} stored, "
        f"{deliveries['received_unique']}/{deliveries['expected']} delivered, {deliveries['lost']} lost, "
        f"{deliveries['duplicated']} duplicated, {result['publisher']['failed']} sends failed; every client back "
        f"after {[d['all_connected_seconds_from_sigterm'] for d in result['drains']]} s"
    )
    return result


async def coordinate(names: Sequence[str], chosen: Sizes, workers: int, tmp: Path) -> dict[str, Any]:
    groups = ProcessGroups()
    results: dict[str, Any] = {}
    try:
        for name in names:
            try:
                results[name] = await run_scenario(name, chosen, workers, tmp, groups)
            except Exception as exc:
                log.info(f"{name} failed: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        groups.kill_all()
    return results


def parameters(chosen: Sizes, workers: int) -> dict[str, Any]:
    return {
        "client_processes": workers,
        "restart_clients": chosen.clients,
        "drain_subscribers": chosen.subscribers,
        "drain_publish_rate_per_s": chosen.rate,
        "drain_phase_seconds": chosen.phase_seconds,
        "gateway_drain_reconnect_within_ms": chosen.drain_within_ms,
        "server_env": server_env(chosen.drain_within_ms),
        "client": "parley.Client, each its own registered user and channel (own TCP connection), joined to room "
        "'bench' (every event kept)",
        "client_backoff": dataclasses.asdict(Backoff()),
        "client_heartbeat": dataclasses.asdict(Heartbeat()),
        "restart": "SIGTERM to parley serve, wait for exit, parley serve again on the same port and data directory",
        "drain_deployment": f"parley serve identity|history|room|file and two parley serve gateway, bus {NATS_URL} "
        "(own subject prefix), SQLite files; clients through a round-robin TCP load balancer that refuses new "
        "connections to a gateway taken out",
        "drain_publisher": "the SDK's room.send(event, {'n': i}, echo=False) at a fixed rate, through the outbox",
        "resume_time": "when the client's on_state handler saw `connected` (room joined and resumed), "
        "time.time_ns() across processes",
    }


def exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through every cleanup


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    chosen = sizes(args)
    if (
        args.workers < 2
        or not names
        or any(n not in SCENARIOS for n in names)
        or min(chosen.clients, chosen.subscribers) < 1
        or chosen.rate <= 0
    ):
        print(
            "error: --workers must be >= 2, --scenarios a list of restart, drain, and the sizes positive",
            file=sys.stderr,
        )
        return 2
    raise_file_limit()
    log_to_stderr()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.perf_counter()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="parley-connection-life-") as tmp:
        results = asyncio.run(coordinate(names, chosen, args.workers, Path(tmp)))
    document = {
        "benchmark": "connection_life",
        "parameters": parameters(chosen, args.workers),
        "machine": {**machine_facts(), "load_before": load_before, "load_after": load_average()},
        "scenarios": results,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print_document(document, args.out)
    return 0 if all(r.get("complete") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
