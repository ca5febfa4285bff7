"""Fan-out to TypeScript (Node) subscribers against the same number of Python SDK subscribers, in one run.

    python -m bench.ts_fanout_bench [--subscribers 100] [--processes 2] [--seconds 10] [--rates 100,0]
                                    [--sides ts,python] [--out FILE]

Needs the built TypeScript client: `npm run build --workspace @parley/client`.

One all-in-one server (`parley serve`, bench/fanout_parley.py's settings: the
registration and event rate limits lifted, tokens that outlast the run) serves
both sides, one after the other, each in a fresh room (bench/ts_fanout_sides.py):

- ts: N subscribers of @parley/client (`new Client(address, {username,
  keyFile})`, `client.join(room)`, `room.on(event, handler)`) in K node
  processes (bench/ts_subscribers.mjs);
- python: N subscribers of the Python SDK (`parley.Client`, the same calls)
  in K Python processes (bench/ts_fanout_python_subscribers.py).

Every subscriber is its own user (registered by its client on first connect)
on its own TCP connection. The same publisher for both: the SDK's
`Room.trigger`, its own user, one event per call, at most 64 outstanding. Each
side runs one phase per rate of --rates, --seconds of publishing each: by
default 100 msg/s (latency while the subscribers keep up), then full speed
(capacity: where the subscribers fall behind, latency is mostly the backlog).
A delivery's latency is the wall clock when the subscriber's handler runs
minus the publication time in the payload (one machine, one clock).

Reported per side and phase: deliveries expected, received and lost,
deliveries/s, latency p50/p99/max, server CPU per delivery (/proc/<pid>/stat),
the subscriber processes' CPU per delivery, the machine's load; then the
TS/Python ratios per phase, and the warning and error lines the server logged
in each section. One JSON document on stdout; exits 1 when a delivery was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.fanout_bench import exit_on_sigterm
from bench.fanout_parley import FANOUT_PARLEY_ENV, ParleySystem
from bench.fanout_publishers import WINDOW
from bench.fanout_subscribers import raise_file_limit
from bench.fanout_wire import EVENT, PAYLOAD_BYTES
from bench.identity_bench import machine_facts
from bench.report import load_average, print_document, ratio
from bench.server_process import CLOCK_TICKS, ProcessGroups
from bench.ts_fanout_sides import NODE_ENTRY, SIDES, Settings, measure_side, phase_name

# What the TS/Python ratios compare: a name in the document and where each side keeps it.
COMPARED = {
    "deliveries_per_s": ("deliveries_per_s",),
    "latency_p50_ms": ("latency_ms", "p50"),
    "latency_p99_ms": ("latency_ms", "p99"),
    "server_cpu_us_per_delivery": ("server_cpu_us_per_delivery",),
    "client_cpu_us_per_delivery": ("client_cpu_us_per_delivery",),
}
NODE_PACKAGES = ("@connectrpc/connect", "@connectrpc/connect-node", "@bufbuild/protobuf", "@noble/ed25519")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ts_fanout_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100, help="subscribers N on each side (default 100)")
    parser.add_argument(
        "--processes", type=int, default=2, help="subscriber processes K on each side, N/K subscribers each (default 2)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="how long the publisher publishes in each phase (default 10)"
    )
    parser.add_argument(
        "--rates",
        default="100,0",
        help="one phase per rate, in this order: events per second the publisher sends, 0 for full speed "
        "(default 100,0)",
    )
    parser.add_argument(
        "--sides", default="ts,python", help="the sides, in the order they run: ts and python (default ts,python)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


def node_versions() -> dict[str, str]:
    """Node's version and those of the TypeScript client's runtime dependencies, as installed."""
    found = {"node": subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()}
    package_dir = NODE_ENTRY.parents[1]
    for name in ("@parley/client", *NODE_PACKAGES):
        installed = (package_dir / "node_modules" / name, package_dir.parents[1] / "node_modules" / name)
        for folder in (package_dir, *installed):
            manifest = folder / "package.json"
            if manifest.exists() and json.loads(manifest.read_text()).get("name") == name:
                found[name] = json.loads(manifest.read_text())["version"]
                break
    return found


def side_figure(side: dict[str, Any], path: Sequence[str]) -> float | None:
    value: Any = side
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def ts_over_python(sides: dict[str, dict[str, Any]], phases: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per phase, each compared figure of the TypeScript side over the Python side's (None where one is missing)."""
    ts, python = sides.get("ts", {}).get("phases", {}), sides.get("python", {}).get("phases", {})
    return {
        phase: {
            name: ratio(side_figure(ts.get(phase, {}), path), side_figure(python.get(phase, {}), path))
            for name, path in COMPARED.items()
        }
        for phase in phases
    }


async def run_sides(settings: Settings, order: Sequence[str], tmp: Path, groups: ProcessGroups) -> dict[str, Any]:
    system = ParleySystem(tmp, groups, [SIDES[name].room for name in order])
    logs: dict[str, Any] = {}
    sides: dict[str, dict[str, Any]] = {}
    server_pids: dict[str, list[int]] = {}
    try:
        await system.start()
        server_pids = system.servers.pids()
        logs["start"] = system.servers.log_section().report()
        for name in order:
            print(f"ts_fanout: {name}, N={settings.subscribers}", file=sys.stderr)
            (tmp / name).mkdir()
            try:
                sides[name] = await measure_side(system, SIDES[name], settings, tmp / name, groups)
            except Exception as exc:
                sides[name] = {"label": SIDES[name].label, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            logs[name] = system.servers.log_section().report()
    finally:
        codes = await system.stop()
        logs["stop"] = system.servers.log_section().report()
    described = system.describe()
    return {
        "server": {
            "deployment": described["deployment"],
            "address": system.gateways[0] if system.gateways else None,
            "env": FANOUT_PARLEY_ENV,
            "exit_codes": codes,
            "pids": server_pids,
        },
        "sides": sides,
        "ts_over_python": ts_over_python(sides, [phase_name(rate) for rate in settings.rates]),
        "server_log_lines": logs,
        "versions": {**described["versions"], **node_versions()},
    }


def document(settings: Settings, order: Sequence[str], results: dict[str, Any]) -> Any:
    return {
        "benchmark": "ts_fanout",
        "parameters": {
            "subscribers_per_side": settings.subscribers,
            "subscriber_processes_per_side": settings.processes,
            "seconds_per_phase": settings.seconds,
            "phases": [phase_name(rate) for rate in settings.rates],
            "sides_in_order": list(order),
            "payload_bytes": PAYLOAD_BYTES,
            "event": EVENT,
            "publisher": f"the Python SDK's Room.trigger(event, payload, echo=False), its own user: one event per "
            f"call, at most {WINDOW} calls outstanding, every reply read; an error is a lost event",
            "subscriber": "each its own user (registered by its own client on its first connect) on its own TCP "
            "connection, in its side's room; subscriber i in process i mod K",
            "deliveries_per_s": "received / (last receive - first publish)",
            "latency": "wall clock when the subscriber's handler runs - the publication time in the payload "
            "(Node: performance.timeOrigin + performance.now(); Python: time.time_ns())",
            "server_cpu_source": "/proc/<pid>/stat utime+stime of the server process over the measured window",
            "client_cpu_source": "/proc/<pid>/stat utime+stime of the side's subscriber processes over the window",
            "cpu_resolution_seconds": 1 / CLOCK_TICKS,
        },
        "machine": {**machine_facts(), "load_at_start": load_average()},
        **results,
    }


def failed(result: dict[str, Any]) -> bool:
    return any(
        "error" in side
        or any(not phase["complete"] or phase["lost"] or phase["publish"]["lost"] for phase in side["phases"].values())
        for side in result["sides"].values()
    )


def parse_rates(text: str) -> tuple[float, ...]:
    """The --rates list; ValueError unless it is one or more different numbers >= 0."""
    rates = tuple(float(item) for item in text.split(",") if item.strip())
    if not rates or any(rate < 0 for rate in rates) or len(set(rates)) != len(rates):
        raise ValueError(text)
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    order = [name.strip() for name in args.sides.split(",") if name.strip()]
    if sorted(order) != sorted(SIDES) or args.subscribers < 1 or args.processes < 1 or args.seconds <= 0:
        print("error: --sides must name ts and python once each; N, K and --seconds positive", file=sys.stderr)
        return 2
    try:
        rates = parse_rates(args.rates)
    except ValueError:
        print("error: --rates must be a comma-separated list of different numbers >= 0", file=sys.stderr)
        return 2
    if args.processes > args.subscribers:
        print("error: --processes must be at most --subscribers", file=sys.stderr)
        return 2
    if not NODE_ENTRY.exists():
        print(f"error: {NODE_ENTRY} is missing: npm run build --workspace @parley/client", file=sys.stderr)
        return 2
    settings = Settings(args.subscribers, args.processes, args.seconds, rates)
    raise_file_limit()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.perf_counter()
    groups = ProcessGroups()
    try:
        with tempfile.TemporaryDirectory(prefix="parley-ts-fanout-") as tmp:
            results = asyncio.run(run_sides(settings, order, Path(tmp), groups))
    finally:
        groups.kill_all()  # whatever server or worker a failed cleanup left behind
    result = document(settings, order, results)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print_document(result, args.out)
    return 1 if failed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
