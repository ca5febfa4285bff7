"""Identity benchmark: logins, an unauthenticated baseline RPC, WhoAmI, token verification.

    python -m bench.identity_bench [--seconds N] [--concurrency C] [--out FILE]

Starts a real all-in-one server in a child process (`parley serve --port 0`) so
its CPU time, read from /proc/<pid>/stat, is kept apart from this client's, and
prints one JSON document with the results. Not part of the test suite.

Phases, each warmed up for 0.5 s and then timed for N seconds with C closed-loop
workers (one channel and one pre-registered user per worker):

- baseline: `GatewayService/GetServerInfo`, unauthenticated, no storage;
- login: CreateLoginChallenge + sign + Login (`Client.login`);
- whoami: `IdentityService/WhoAmI` with a bearer token, verified on the server;
- token verification in this process, no network: `TokenVerifier.verify` against
  bare `jwt.decode`, single-threaded.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench.report import cpu_model, percentile_ms, print_document
from bench.server_process import ServerProcess, parley_serve
from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.errors import ParleyError
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services.runtime.config import load_config
from services.runtime.keys import RemoteKeySource
from services.runtime.tokens import PublishedKey, TokenVerifier

WARMUP_SECONDS = 0.5
# The default (30 per username per minute) would throttle a worker that logs in
# as fast as it can; the benchmark measures logins, not the rate limiter.
CHALLENGES_PER_MINUTE = 100_000_000
SERVER_ENV = {"PARLEY_LOGGING_LEVEL": "WARNING", "PARLEY_AUTH_CHALLENGES_PER_MINUTE": str(CHALLENGES_PER_MINUTE)}

Operation = Callable[[int], Awaitable[object]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.identity_bench",
        description="Benchmark logins, an unauthenticated baseline RPC, an authenticated RPC (WhoAmI) and "
        "in-process token verification against a real all-in-one Parley server started in a child process. "
        "Prints one JSON document; server CPU time is read from /proc/<pid>/stat.",
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed duration of each phase, after a 0.5 s warm-up (default 3)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="concurrent workers in the RPC phases, each with its own channel and user (default 8)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


# Closed-loop load


class Run:
    """Latencies of the successful operations and error counts of one run."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()


async def drive(operation: Operation, concurrency: int, seconds: float) -> Run:
    """`concurrency` workers call `operation(worker)` back to back until `seconds` pass."""
    run = Run()
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await operation(index)
            except ParleyError as exc:
                run.errors[f"{exc.code.name} {exc.reason}".strip()] += 1
            except grpc.aio.AioRpcError as exc:
                run.errors[exc.code().name] += 1
            else:
                run.latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return run


async def measure_rpc(server: ServerProcess, operation: Operation, concurrency: int, seconds: float) -> dict[str, Any]:
    await drive(operation, concurrency, WARMUP_SECONDS)
    server_cpu = server.cpu_seconds()
    client_cpu = time.process_time()
    started = time.perf_counter()
    run = await drive(operation, concurrency, seconds)
    elapsed = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - server_cpu
    client_cpu = time.process_time() - client_cpu
    count = len(run.latencies)
    ordered = sorted(run.latencies)
    return {
        "count": count,
        "elapsed_seconds": round(elapsed, 4),
        "per_second": round(count / elapsed, 1),
        "latency_ms": {
            "p50": percentile_ms(ordered, 0.50),
            "p99": percentile_ms(ordered, 0.99),
        },
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_us_per_op": round(server_cpu * 1e6 / count, 1) if count else None,
        # Cores' worth of CPU the server used; near 1.0 means its event loop is saturated.
        "server_cpu_utilization": round(server_cpu / elapsed, 3),
        "client_cpu_seconds": round(client_cpu, 3),
        "errors": dict(run.errors),
    }


# In-process token verification


class CountingKeySource:
    """The server's verification keys over `GetVerificationKeys`, counting fetches."""

    def __init__(self, address: str) -> None:
        self._remote = RemoteKeySource(load_config().server, address)
        self.fetches = 0

    async def fetch(self) -> Mapping[str, PublishedKey]:
        self.fetches += 1
        return await self._remote.fetch()

    async def close(self) -> None:
        await self._remote.close()


async def loop_for(seconds: float, operation: Callable[[], Awaitable[object]]) -> tuple[int, float]:
    """Calls `operation` back to back; returns how many calls and the seconds taken."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await operation()
        count += 1
    return count, time.perf_counter() - started


async def measure_verification(address: str, token: str, seconds: float) -> dict[str, Any]:
    source = CountingKeySource(address)
    keys = await source.fetch()
    source.fetches = 0  # count only the verifier's own fetches from here on
    kid = str(jwt.get_unverified_header(token)["kid"])
    public_key = Ed25519PublicKey.from_public_bytes(keys[kid].public_key)
    verifier = TokenVerifier(load_config().auth, source)

    async def verify() -> None:
        await verifier.verify(token)

    async def bare_decode() -> None:
        jwt.decode(token, public_key, algorithms=["EdDSA"])

    results: dict[str, Any] = {}
    for name, operation in (("token_verifier", verify), ("pyjwt_decode", bare_decode)):
        await loop_for(WARMUP_SECONDS, operation)
        count, elapsed = await loop_for(seconds, operation)
        results[name] = {
            "count": count,
            "elapsed_seconds": round(elapsed, 4),
            "per_second": round(count / elapsed, 1),
            "us_per_op": round(elapsed * 1e6 / count, 2),
        }
    results["verifier_over_pyjwt_rate_ratio"] = round(
        results["token_verifier"]["per_second"] / results["pyjwt_decode"]["per_second"], 4
    )
    results["verifier_key_fetches"] = source.fetches
    await source.close()
    return results


# The benchmark


async def benchmark(server: ServerProcess, seconds: float, concurrency: int) -> dict[str, Any]:
    address = server.address
    clients = [
        Client(address, username=f"bench-{i}", identity=DeviceIdentity.generate(f"bench-{i}"))
        for i in range(concurrency)
    ]
    channels = [grpc.aio.insecure_channel(address) for _ in range(concurrency)]
    try:
        for client in clients:
            await client.register()
        gateways = [gateway_pb2_grpc.GatewayServiceStub(channel) for channel in channels]
        identities = [identity_pb2_grpc.IdentityServiceStub(channel) for channel in channels]
        info = await gateways[0].GetServerInfo(gateway_pb2.GetServerInfoRequest(), timeout=10)

        async def server_info(worker: int) -> object:
            return await gateways[worker].GetServerInfo(gateway_pb2.GetServerInfoRequest(), timeout=10)

        async def login(worker: int) -> object:
            return await clients[worker].login()

        baseline = await measure_rpc(server, server_info, concurrency, seconds)
        logins = await measure_rpc(server, login, concurrency, seconds)

        tokens = [await client.access_token() for client in clients]
        headers = [(("authorization", f"Bearer {token}"),) for token in tokens]

        async def whoami(worker: int) -> object:
            return await identities[worker].WhoAmI(identity_pb2.WhoAmIRequest(), metadata=headers[worker], timeout=10)

        authenticated = await measure_rpc(server, whoami, concurrency, seconds)
        verification = await measure_verification(address, tokens[0], seconds)
    finally:
        for client in clients:
            await client.close()
        for channel in channels:
            await channel.close(None)
    return {
        "server_version": info.version,
        "server_mode": gateway_pb2.DeploymentMode.Name(info.mode),
        "rpc": {
            "baseline_get_server_info": baseline,
            "login": logins,
            "whoami_authenticated": authenticated,
        },
        "ratios": {
            "logins_per_s_over_baseline_calls_per_s": round(logins["per_second"] / baseline["per_second"], 4),
            "whoami_per_s_over_baseline_calls_per_s": round(authenticated["per_second"] / baseline["per_second"], 4),
        },
        "token_verification_in_process": verification,
    }


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpcio_version": grpc.__version__,
        "pyjwt_version": jwt.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1:
        print("error: --seconds must be > 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        server = ServerProcess(parley_serve(Path(tmp) / "data"), Path(tmp), env=SERVER_ENV)
        try:
            server.wait_for_address()
            results = asyncio.run(benchmark(server, args.seconds, args.concurrency))
        finally:
            exit_code = server.terminate()
    document = {
        "benchmark": "identity",
        "parameters": {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "warmup_seconds": WARMUP_SECONDS,
            "server_command": "python -m parley.cli.main serve --port 0 --data-dir TMP",
            "server_env": {
                "PARLEY_LOGGING_LEVEL": "WARNING",
                "PARLEY_AUTH_CHALLENGES_PER_MINUTE": CHALLENGES_PER_MINUTE,
            },
            "server_cpu_source": "/proc/<pid>/stat utime+stime",
        },
        "machine": machine_facts(),
        **results,
        "server_exit_code": exit_code,
    }
    print_document(document, args.out)
    rpc_errors = sum(sum(phase["errors"].values()) for phase in results["rpc"].values())
    return 1 if rpc_errors else 0


if __name__ == "__main__":
    sys.exit(main())
