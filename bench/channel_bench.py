"""Sealed group channels (issue 13): the crypto alone at 2, 50 and 256 members, then a channel through a real
server against an open room.

    python -m bench.channel_bench [--seconds S] [--members K] [--in-flight N] [--out FILE]

Phases, one after the other (`bench/channel_crypto.py` with `bench/channel_members.py`, then
`bench/channel_gateway.py`):

- seal_open (no server): one 256-byte message sealed by one device and opened by another, in channels of
  2, 50 and 256 members of one device each: µs mean/p50/p99 and ops/s per size, the sealed size, and the
  ratio 256 over 2 (a message is sealed once for the channel, so neither should grow);
- remove_commit (no server): an admin's commit removing one member (a fresh secret wrapped for every
  remaining device) and one remaining member entering the new epoch, at the same sizes: ms per commit
  and per enter, and the bytes of the commit and its wraps;
- through_gateway: `parley serve --port 0` in a child process (CPU from /proc/<pid>/stat); K clients in
  this process (the sender and K - 1 receivers); N sends in flight, one 256-byte JSON payload each, for
  S seconds after a warm-up of min(2 s, S), first as plain events of an open room, then sealed in a
  channel with the same members: messages/s per receiver, latency p50/p99 (send start to handler, one
  clock), server CPU ms per delivered message, client CPU, and the ratios channel over open room.

Each pure measurement runs min(1 s, S) per size after a warm-up of min(0.5 s, that). Prints one JSON
document. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cryptography
import grpc
import nacl

from bench.channel_crypto import MEMBER_COUNTS, MESSAGE_BYTES, measure_remove_commit, measure_seal_open
from bench.channel_gateway import measure_through_gateway
from bench.report import cpu_model, load_average, print_document
from bench.server_process import ServerProcess, parley_serve

# Warm-up of each gateway mode: this long, or --seconds when shorter.
MAX_WARMUP_SECONDS = 2.0
# Timed run of each pure measurement (per member count): this long, or --seconds when shorter.
MAX_CRYPTO_SECONDS = 1.0
SERVER_ENV = {
    "PARLEY_LOGGING_LEVEL": "WARNING",
    # The default (200 per 10 s per user) would measure the rate limiter, not the path.
    "PARLEY_GATEWAY_EVENTS_PER_WINDOW": "100000000",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.channel_bench",
        description="Benchmark Parley's sealed group channels: seal and open of one message and an admin's "
        f"remove-member commit at {', '.join(map(str, MEMBER_COUNTS))} members (in this process, no server), "
        "then a channel through a real server in a child process against the same payloads as plain events "
        "of an open room with the same clients. Prints one JSON document.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help=f"timed sending per gateway mode, after a warm-up of min({MAX_WARMUP_SECONDS:g} s, S); each pure "
        f"crypto measurement runs min({MAX_CRYPTO_SECONDS:g} s, S) per member count (default 10)",
    )
    parser.add_argument(
        "--members",
        type=int,
        default=3,
        help="clients in the channel and the open room: the sender and K - 1 receivers, at least 2 (default 3)",
    )
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent sends, one message each (default 16)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "pynacl_version": nacl.__version__,
        "cryptography_version": cryptography.__version__,
        "grpcio_version": grpc.__version__,
        "key_store_directory": tempfile.gettempdir(),
    }


def through_gateway(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The gateway phase's figures and the server's exit code."""
    with tempfile.TemporaryDirectory(prefix="parley-channel-bench-") as tmp:
        server = ServerProcess(parley_serve(Path(tmp) / "data"), Path(tmp), env=SERVER_ENV)
        try:
            server.wait_for_address()
            figures = asyncio.run(
                measure_through_gateway(
                    server,
                    Path(tmp),
                    seconds=args.seconds,
                    warmup=min(MAX_WARMUP_SECONDS, args.seconds),
                    members=args.members,
                    in_flight=args.in_flight,
                    size=MESSAGE_BYTES,
                )
            )
        finally:
            exit_code = server.terminate()
    return figures, exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.members < 2 or args.in_flight < 1:
        parser.error("--seconds must be > 0, --members >= 2, --in-flight >= 1")
    machine = machine_facts()
    crypto_seconds = min(MAX_CRYPTO_SECONDS, args.seconds)
    seal_open = measure_seal_open(crypto_seconds)
    remove_commit = measure_remove_commit(crypto_seconds)
    gateway, exit_code = through_gateway(args)
    document = {
        "benchmark": "channel",
        "parameters": {
            "seconds": args.seconds,
            "warmup_seconds": min(MAX_WARMUP_SECONDS, args.seconds),
            "crypto_seconds_per_member_count": crypto_seconds,
            "member_counts": list(MEMBER_COUNTS),
            "members": args.members,
            "in_flight": args.in_flight,
            "payload_bytes": MESSAGE_BYTES,
            "devices_per_member": 1,
            "server_command": "python -m parley.cli.main serve --port 0 --data-dir TMP",
            "server_env": SERVER_ENV,
            "clock": "time.perf_counter per operation and for latency (sender and receivers in one process)",
            "server_cpu_source": "/proc/<pid>/stat utime+stime of the server and its descendants",
            "client_cpu_source": "time.process_time() of this process: the sender and every receiver together",
        },
        "machine": machine,
        "seal_open": seal_open,
        "remove_commit": remove_commit,
        "through_gateway": gateway,
        "load_average_at_end": load_average(),
        "server_exit_code": exit_code,
    }
    print_document(document, args.out)
    return 0 if all(mode["complete"] for mode in gateway["modes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
