"""Scale-out benchmark: the same fan-out on one all-in-one process and on a two-gateway deployment.

    python -m bench.scale_out_bench [--subscribers N] [--in-flight K] [--seconds S]
                                    [--storage postgresql|sqlite] [--out FILE]

Two runs in one invocation, with the same client behaviour:

- `single_process`: `parley serve` (every service in one process, the
  in-process bus, SQLite under a temporary data directory);
- `scale_out`: `parley serve identity|history|room|file` and two `parley serve
  gateway`, each its own process, on NATS (nats://127.0.0.1:4222, a subject
  prefix of its own) and PostgreSQL (a fresh database on 127.0.0.1:5432,
  dropped afterwards). `--storage sqlite` keeps the services on SQLite files;
  when the servers refuse the PostgreSQL setting the run falls back to SQLite
  and says so under `storage`.

In each run N subscribers, each its own user with its own connection (a raw
Connect stream on its own gRPC channel, joined to room "bench"), are spread
evenly over the gateways; one publisher (the SDK, on gateway 1) publishes one
event per publish command, K commands in flight, for S seconds into a room
whose events keep history. Every payload starts with the send time
(`time.time_ns()`); the clients share this machine's clock, so a delivery's
latency is its receive time minus that. After a warm-up, the measured window
runs from the first publish until every delivery has arrived (or they stall).

Reported per run: deliveries/s (received over first publish to last receive),
latency p50/p99/max (also per gateway), the CPU seconds of every Parley server
process (/proc/<pid>/stat utime+stime, before and after) and their sum per
delivery, the CPU of nats-server and of all postgres processes (machine-wide:
whatever else uses them is included), and this process's CPU (subscribers and
publisher in one asyncio process; `client_saturated` says when it used most of
a core, so the client, not the servers, may set the pace). Prints one JSON
document; progress goes to stderr. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bench.fanout_bench import (
    BENCH_TOML,
    EVENT,
    HISTORY_EVENTS_TOML,
    PARLEY_ENV,
    ROOM,
    ParleySubscriber,
    Stats,
    open_all,
    payload,
    raise_file_limit,
)
from bench.identity_bench import machine_facts
from bench.report import MS_PER_MICROSECOND, percentile_ms, print_document
from bench.server_process import ServerProcess, cpu_seconds, kill_group, parley_serve
from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.rooms import Room

NATS_URL = "nats://127.0.0.1:4222"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STORAGES = ("postgresql", "sqlite")
GATEWAYS = 2
# The order the scale-out starts in: each wave needs the addresses of the waves before it.
SCALE_OUT_WAVES = (("identity",), ("history",), ("room", "file"), tuple(f"gateway-{n}" for n in range(1, GATEWAYS + 1)))
SERVER_ENV = {
    **PARLEY_ENV,
    "PARLEY_AUTH_REGISTRATIONS_PER_MINUTE": "1000000",
    "PARLEY_SERVER_GRACE_SECONDS": "1",
}
WARMUP_EVENTS = 100
WARMUP_TAG = "01"
MEASURED_TAG = "02"
# No new delivery for this long ends the wait for the rest (the run counts as incomplete).
STALL_SECONDS = 10.0
POLL_SECONDS = 0.02
REGISTER_CONCURRENCY = 10
# Cores' worth of CPU above which the client process is taken to be the bottleneck.
CLIENT_SATURATED_AT = 0.9
INFRASTRUCTURE = ("nats-server", "postgres")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100, help="subscribers, each its own user (default 100)")
    parser.add_argument("--in-flight", type=int, default=16, help="publish commands in flight (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of publishing per run (default 10)")
    parser.add_argument(
        "--storage",
        choices=STORAGES,
        default="postgresql",
        help="the scale-out's storage (default postgresql; the single process always uses SQLite)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


def log(message: str) -> None:
    print(f"[scale-out {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Deployments


class StorageRefused(RuntimeError):
    """A server exited at start-up (code 2) over its storage setting."""


@dataclasses.dataclass
class Deployment:
    description: str
    # In start order; gateways are named "gateway-<n>" (the all-in-one server is gateway-1 too).
    processes: dict[str, ServerProcess]
    storage: dict[str, Any]
    bus: str

    @property
    def gateways(self) -> list[str]:
        return [p.address for name, p in self.processes.items() if name.startswith("gateway-")]

    @property
    def database(self) -> str:
        """The PostgreSQL database the services use ("" on SQLite)."""
        return str(self.storage["database"]) if self.storage["used"] == "postgresql" else ""

    def cpu_by_process(self) -> dict[str, float]:
        return {name: process.cpu_seconds() for name, process in self.processes.items()}


# Every server started, killed on the way out if a cleanup was itself cut short.
_launched: list[ServerProcess] = []


def launch(name: str, service: str, env: Mapping[str, str], config: Path, tmp: Path) -> ServerProcess:
    command = parley_serve(tmp / "data" / name, "--config", str(config), service)
    process = ServerProcess(command, tmp, name=name, env=env, cwd=Path(__file__).resolve().parents[1])
    _launched.append(process)
    return process


def wait_for(process: ServerProcess) -> str:
    """The process's address; StorageRefused when it exits 2 naming its storage setting."""
    try:
        return process.wait_for_address()
    except RuntimeError as exc:
        tail = process.stderr_tail()
        if process.process.returncode == 2 and "STORAGE" in tail.upper():
            lines = [line for line in tail.splitlines() if line.strip()]
            raise StorageRefused(f"{process.name}: {lines[-1] if lines else tail}") from exc
        raise


def stop(processes: Mapping[str, ServerProcess]) -> None:
    """SIGTERM, gateways first (the services they call stay up while they drain), each wave at once."""
    gateways = [p for name, p in processes.items() if name.startswith("gateway-")]
    others = [p for name, p in processes.items() if not name.startswith("gateway-")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        for wave in (gateways, others):
            list(pool.map(ServerProcess.terminate, wave))


@contextlib.contextmanager
def running(processes: dict[str, ServerProcess]) -> Iterator[dict[str, ServerProcess]]:
    """Stops every process in `processes` (as it is when this ends), whatever happened."""
    try:
        yield processes
    finally:
        stop(processes)


def write_config(tmp: Path) -> Path:
    config = tmp / "bench.toml"
    config.write_text(BENCH_TOML + HISTORY_EVENTS_TOML)
    return config


@contextlib.contextmanager
def single_process(tmp: Path) -> Iterator[Deployment]:
    tmp.mkdir()
    processes: dict[str, ServerProcess] = {}
    with running(processes):
        processes["gateway-1"] = launch("gateway-1", "all", SERVER_ENV, write_config(tmp), tmp)
        wait_for(processes["gateway-1"])
        yield Deployment(
            "parley serve (all services in one process), in-process bus", processes, {"used": "sqlite"}, ""
        )


@dataclasses.dataclass(frozen=True)
class Database:
    name: str
    url: str


@contextlib.contextmanager
def fresh_database() -> Iterator[Database]:
    """A new PostgreSQL database, dropped afterwards whatever happened."""
    import psycopg

    name = f"parley_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(name, POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_cluster(tmp: Path, storage_env: Mapping[str, str], processes: dict[str, ServerProcess]) -> None:
    """Starts the services and the gateways into `processes`, wave by wave, on NATS."""
    tmp.mkdir()
    config = write_config(tmp)
    env = {
        **SERVER_ENV,
        **storage_env,
        "PARLEY_BUS_URL": NATS_URL,
        "PARLEY_BUS_SUBJECT_PREFIX": f"bench{secrets.token_hex(6)}",
        "PARLEY_AUTH_SERVICE_CREDENTIALS": f"parley={secrets.token_hex(16)}",
    }
    for wave in SCALE_OUT_WAVES:
        for name in wave:
            service = "gateway" if name.startswith("gateway-") else name
            # Services believe the client address a gateway forwards; clients reach only gateways.
            trusted = "false" if service == "gateway" else "true"
            processes[name] = launch(
                name, service, {**env, "PARLEY_SERVER_TRUST_FORWARDED_CLIENT": trusted}, config, tmp
            )
        for name in wave:
            address = wait_for(processes[name])
            if not name.startswith("gateway-"):
                env[f"PARLEY_PEERS_{name.upper()}"] = address


@contextlib.contextmanager
def scale_out(tmp: Path, storage: str) -> Iterator[Deployment]:
    """The services and two gateways on NATS and `storage`; on a refused PostgreSQL setting, on SQLite."""
    tmp.mkdir()
    facts: dict[str, Any] = {"requested": storage, "used": storage, "fallback_reason": None}
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(fresh_database()) if storage == "postgresql" else None
        # Entered after the database: the processes stop before it is dropped.
        processes = cleanup.enter_context(running({}))
        if database is not None:
            facts["database"] = database.name
            try:
                start_cluster(tmp / "postgresql", {"PARLEY_STORAGE_URL": database.url}, processes)
            except StorageRefused as refusal:
                stop(processes)
                processes.clear()
                facts.update(used="sqlite", fallback_reason=str(refusal))
                log(f"the servers refused PostgreSQL storage ({refusal}); running the scale-out on SQLite instead")
        if not processes:
            start_cluster(tmp / "sqlite", {}, processes)
        yield Deployment(
            f"{len(SCALE_OUT_WAVES[-1])} gateways and the identity, history, room and file services, "
            f"each its own process, on NATS and {facts['used']}",
            processes,
            facts,
            NATS_URL,
        )


# CPU of the shared infrastructure (not children of this process)

# CPU seconds by process name ("nats-server", "postgres"), then pid.
ProcessCpu = dict[str, dict[int, float]]


def infrastructure_cpu() -> ProcessCpu:
    """CPU seconds of every nats-server and postgres process on the machine."""
    found: ProcessCpu = {name: {} for name in INFRASTRUCTURE}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry.name}/comm") as handle:
                name = handle.read().strip()
            if name in found:
                found[name][int(entry.name)] = cpu_seconds(int(entry.name))
    return found


def cpu_used(before: dict[int, float], after: dict[int, float], pids: Iterable[int]) -> float:
    """CPU the `pids` used in between; one started in between counts from zero, one that ended is not counted."""
    return sum(after[pid] - before.get(pid, 0.0) for pid in pids if pid in after)


def database_backends(database: str) -> set[int]:
    """The pids of the PostgreSQL backends connected to `database` now."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)).fetchall()
    return {int(pid) for (pid,) in rows}


@dataclasses.dataclass(frozen=True)
class InfrastructureCpu:
    # Machine-wide: whatever else nats-server and PostgreSQL served meanwhile counts too.
    nats_server: float
    postgres_all_processes: float
    # None when the deployment has no database.
    postgres_backends_of_this_database: float | None

    def ours(self) -> float:
        """What the deployment can be charged with: nats-server and this database's backends."""
        return self.nats_server + (self.postgres_backends_of_this_database or 0.0)


def infrastructure_used(before: ProcessCpu, after: ProcessCpu, database: str) -> InfrastructureCpu:
    nats, postgres = after["nats-server"], after["postgres"]
    return InfrastructureCpu(
        nats_server=round(cpu_used(before["nats-server"], nats, nats), 3),
        postgres_all_processes=round(cpu_used(before["postgres"], postgres, postgres), 3),
        postgres_backends_of_this_database=(
            round(cpu_used(before["postgres"], postgres, database_backends(database)), 3) if database else None
        ),
    )


def machine_load() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine shows here)."""
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


# Clients


async def register(address: str, prefix: str) -> tuple[str, str]:
    """A new user registered and logged in on `address`: (address, access token)."""
    identity = DeviceIdentity.generate(f"{prefix}{secrets.token_hex(5)}")
    async with Client(address, identity=identity) as client:
        return address, await client.access_token()


async def register_all(addresses: Sequence[str], prefix: str) -> list[tuple[str, str]]:
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(address: str) -> tuple[str, str]:
        async with gate:
            return await register(address, prefix)

    return list(await asyncio.gather(*(one(a) for a in addresses)))


async def publish(room: Room, tag: str, in_flight: int, *, count: int = 0, until: float = 0.0) -> int:
    """One event per publish command, `in_flight` at once, `count` of them or until loop time `until`.

    Returns how many were published.
    """
    loop = asyncio.get_running_loop()
    indices = itertools.count()
    done = 0

    async def lane() -> None:
        nonlocal done
        while True:
            index = next(indices)
            if (count and index >= count) or (until and loop.time() >= until):
                return
            await room.trigger(EVENT, payload(tag, index), echo=False)
            done += 1

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return done


async def drain(stats: Sequence[Stats], expected: int) -> bool:
    """Waits until `expected` deliveries arrived; False when they stop arriving first."""
    last, last_change = -1, time.monotonic()
    while (received := sum(s.received for s in stats)) < expected:
        now = time.monotonic()
        if received != last:
            last, last_change = received, now
        elif now - last_change > STALL_SECONDS:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


def latency_ms(latencies_us: list[int]) -> dict[str, float | None]:
    ordered = sorted(latencies_us)
    return {
        "p50": percentile_ms(ordered, 0.50, MS_PER_MICROSECOND),
        "p99": percentile_ms(ordered, 0.99, MS_PER_MICROSECOND),
        "max": percentile_ms(ordered, 1.0, MS_PER_MICROSECOND),
    }


def per_delivery_us(cpu: float, received: int) -> float | None:
    return round(cpu * 1e6 / received, 2) if received else None


async def measure(deployment: Deployment, subscribers: int, in_flight: int, seconds: float) -> dict[str, Any]:
    gateways = deployment.gateways
    homes = [gateways[i % len(gateways)] for i in range(subscribers)]
    stats = {address: Stats() for address in gateways}
    started = time.perf_counter()
    tickets = iter(await register_all(homes, "sub"))

    def subscriber() -> ParleySubscriber:
        address, token = next(tickets)
        return ParleySubscriber(address, token, stats[address])

    opened = await open_all(subscriber, subscribers)
    log(f"{len(opened)} subscribers registered and joined in {time.perf_counter() - started:.1f}s")
    publisher = Client(gateways[0], identity=DeviceIdentity.generate(f"pub{secrets.token_hex(5)}"))
    try:
        await publisher.connect()
        room = await publisher.join(ROOM)
        for each in stats.values():
            each.reset(WARMUP_TAG)
        warmed = await publish(room, WARMUP_TAG, in_flight, count=WARMUP_EVENTS)
        if not await drain(list(stats.values()), warmed * subscribers):
            raise RuntimeError(f"the warm-up's deliveries stalled at {sum(s.received for s in stats.values())}")
        for each in stats.values():
            each.reset(MEASURED_TAG)
        loop = asyncio.get_running_loop()
        servers_before = deployment.cpu_by_process()
        infrastructure_before = infrastructure_cpu()
        load_before = machine_load()
        client_before = cpu_seconds(os.getpid())
        window_started = time.perf_counter()
        first_ns = time.time_ns()
        published = await publish(room, MEASURED_TAG, in_flight, until=loop.time() + seconds)
        publish_seconds = time.perf_counter() - window_started
        complete = await drain(list(stats.values()), published * subscribers)
        window = time.perf_counter() - window_started
        client_cpu = cpu_seconds(os.getpid()) - client_before
        servers_after = deployment.cpu_by_process()
        infrastructure_after = infrastructure_cpu()
        load_after = machine_load()
        infrastructure = await asyncio.to_thread(
            infrastructure_used,
            infrastructure_before,
            infrastructure_after,
            deployment.database,
        )
    finally:
        await publisher.close()
        await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)
    received = sum(s.received for s in stats.values())
    last_ns = max(s.last_ns for s in stats.values())
    elapsed = (last_ns - first_ns) / 1e9 if last_ns > first_ns else None
    servers = {name: servers_after[name] - servers_before[name] for name in servers_before}
    server_cpu = sum(servers.values())
    names = {address: name for name, process in deployment.processes.items() if (address := process.address)}
    errors: dict[str, int] = {}
    for each in stats.values():
        for error, times in each.errors.items():
            errors[error] = errors.get(error, 0) + times
    return {
        "deployment": deployment.description,
        "bus": deployment.bus or "in-process",
        "storage": deployment.storage,
        "pids": {name: process.pid for name, process in deployment.processes.items()},
        "subscribers_per_gateway": {names[address]: homes.count(address) for address in gateways},
        "published": published,
        "publishes_per_s": round(published / publish_seconds, 1),
        "expected": published * subscribers,
        "received": received,
        "complete": complete,
        "elapsed_seconds": round(elapsed, 4) if elapsed else None,
        "deliveries_per_s": round(received / elapsed, 1) if elapsed else None,
        "latency_ms": latency_ms([lat for s in stats.values() for lat in s.latencies_us]),
        "latency_ms_by_gateway": {names[address]: latency_ms(s.latencies_us) for address, s in stats.items()},
        "window_seconds": round(window, 3),
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_us_per_delivery": per_delivery_us(server_cpu, received),
        "server_cpu_by_process": {
            name: {"cpu_seconds": round(cpu, 3), "us_per_delivery": per_delivery_us(cpu, received)}
            for name, cpu in servers.items()
        },
        "infrastructure_cpu_seconds": dataclasses.asdict(infrastructure),
        # The servers, nats-server and this database's PostgreSQL backends.
        "server_and_infrastructure_cpu_us_per_delivery": per_delivery_us(server_cpu + infrastructure.ours(), received),
        "client_cpu_seconds": round(client_cpu, 3),
        "client_cpu_us_per_delivery": per_delivery_us(client_cpu, received),
        # Cores' worth of CPU this process used over the window.
        "client_cpu_utilization": round(client_cpu / window, 3),
        "client_saturated": client_cpu / window >= CLIENT_SATURATED_AT,
        # Other work on the machine shares the cores: the load averages before and after the window.
        "machine_load_before": load_before,
        "machine_load_after": load_after,
        "stale_events": sum(s.stale for s in stats.values()),
        "errors": errors,
    }


# Entry points


def compare(single: Mapping[str, Any], scaled: Mapping[str, Any]) -> dict[str, float | None]:
    """Scale-out over single process, per figure."""

    def ratio(key: str, inner: str = "") -> float | None:
        ours, theirs = scaled.get(key), single.get(key)
        if inner:
            ours = (ours or {}).get(inner)
            theirs = (theirs or {}).get(inner)
        return round(ours / theirs, 2) if ours and theirs else None

    return {
        "deliveries_per_s": ratio("deliveries_per_s"),
        "latency_p50": ratio("latency_ms", "p50"),
        "latency_p99": ratio("latency_ms", "p99"),
        "server_cpu_us_per_delivery": ratio("server_cpu_us_per_delivery"),
        "server_and_infrastructure_cpu_us_per_delivery": ratio("server_and_infrastructure_cpu_us_per_delivery"),
    }


def run(
    name: str, deployment: contextlib.AbstractContextManager[Deployment], args: argparse.Namespace
) -> dict[str, Any]:
    """One run, its deployment stopped (and its database dropped) before this returns."""
    try:
        with deployment as started:
            log(f"{name}: {started.description}, gateways at {', '.join(started.gateways)}")
            result = asyncio.run(measure(started, args.subscribers, args.in_flight, args.seconds))
    except Exception as exc:
        log(f"{name} failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    log(
        f"{name}: {result['received']}/{result['expected']} deliveries, {result['deliveries_per_s']}/s, "
        f"p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms, "
        f"{result['server_cpu_us_per_delivery']} us server CPU per delivery, client CPU "
        f"{result['client_cpu_utilization']} of a core"
    )
    return result


def exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through every cleanup


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.subscribers < 1 or args.in_flight < 1 or args.seconds <= 0:
        print("error: --subscribers and --in-flight must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    raise_file_limit()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="parley-scale-out-") as tmp:
            runs = {
                "single_process": run("single_process", single_process(Path(tmp) / "single"), args),
                "scale_out": run("scale_out", scale_out(Path(tmp) / "scale-out", args.storage), args),
            }
    finally:
        for process in _launched:
            if process.process.poll() is None:  # not reaped: its pid and group are still ours
                kill_group(process.pid)
    document = {
        "benchmark": "scale_out",
        "parameters": {
            "subscribers": args.subscribers,
            "gateways_in_scale_out": GATEWAYS,
            "publish_commands_in_flight": args.in_flight,
            "publish_seconds": args.seconds,
            "storage_requested": args.storage,
            "warmup_events": WARMUP_EVENTS,
            "room": "bench, every event kept in history",
            "publisher": "SDK Room.trigger on gateway 1, one event per PublishCommand, no echo",
            "subscriber": "raw Connect stream on its own grpc.aio channel, joined; each its own user",
            "client": "one asyncio process: every subscriber and the publisher",
            "payload": "100 characters starting with time.time_ns() at publication",
            "deliveries_per_s": "received / (last receive - first publish)",
            "server_cpu_source": "/proc/<pid>/stat utime+stime of each Parley server process, delta over the window",
            "server_env": SERVER_ENV,
        },
        "machine": machine_facts(),
        "runs": runs,
        "scale_out_over_single_process": compare(runs["single_process"], runs["scale_out"]),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print_document(document, args.out)
    return 0 if all(r.get("complete") for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
