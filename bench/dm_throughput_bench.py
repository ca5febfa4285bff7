"""Direct-message throughput: end-to-end encrypted against the same payloads sent unencrypted, in one run.

    python -m bench.dm_throughput_bench [--seconds S] [--payload-bytes N] [--in-flight K] [--out FILE]

Starts `parley serve --port 0` in a child process (its CPU time read from
/proc/<pid>/stat) and, in this process, one sender and two recipients, each a
`Client` with one device and a key file (so a key store on disk) in a temporary
directory; each recipient is online for its mode only. K concurrent workers on
the sender send one message per call, each JSON payload N bytes, back to back for
S seconds; the receiver acknowledges what it gets. How each mode sends and
receives, through the same SDK and gateway paths, is in
`bench/dm_throughput_modes.py`. Each mode is warmed up for min(2 s, S) (its first phase also
starts the ratchet session with X3DH) before the timed phases, which run one
after the other on the same server.

Per mode: messages/s delivered (from the sender's start to the last message
received), end-to-end latency p50/p99 (receiver's `perf_counter` minus the send's
start, one process so one clock), server CPU ms per delivered message, and
client CPU ms per message (`time.process_time` of this process, which hosts the
sender and the receiver alike); CPU is read once every message has arrived and
the last acknowledgements and key-store saves have settled. Then the ratios
encrypted over plaintext. Prints one JSON document. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.dm_throughput_modes import (
    MIN_PAYLOAD_BYTES,
    Deliver,
    Deliveries,
    SealedFrames,
    SendOne,
    payload,
    receive_encrypted,
    receive_plaintext,
    send_encrypted,
    send_plaintext,
)
from bench.report import cpu_model, load_average, percentile_ms, print_document, ratio
from bench.server_process import ServerProcess, parley_serve
from parley.client import Client

# Warm-up of each mode: this long, or --seconds when shorter.
MAX_WARMUP_SECONDS = 2.0
# After the last delivery, for the last acknowledgement and key-store save before CPU is read.
SETTLE_SECONDS = 0.5
DELIVERY_TIMEOUT_SECONDS = 60.0
SERVER_ENV = {
    "PARLEY_LOGGING_LEVEL": "WARNING",
    # The default (200 per 10 s per user) would measure the rate limiter, not the path.
    "PARLEY_GATEWAY_EVENTS_PER_WINDOW": "100000000",
}
MODES = ("plaintext", "encrypted")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dm_throughput_bench",
        description="Benchmark direct messages through a real Parley server in a child process: end-to-end "
        "encrypted (client.message.send) against the same JSON payloads sent unencrypted through the same "
        "client outbox and gateway path. Prints one JSON document.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="timed sending per mode, after a warm-up of min(2 s, S) (default 10)",
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=256,
        help=f"size of each message's JSON payload, at least {MIN_PAYLOAD_BYTES} (default 256)",
    )
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent sends, one message each (default 16)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


@dataclass
class Mode:
    """One way of sending, its receiver's tap, and the deliveries of its current phase."""

    send: SendOne
    frames: SealedFrames
    deliveries: Deliveries

    def deliver(self) -> Deliver:
        return self.deliveries.record


async def drive(send: SendOne, phase: int, seconds: float, in_flight: int, size: int) -> int:
    """`in_flight` workers send one message after another until `seconds` pass; returns how many were sent."""
    deadline = time.perf_counter() + seconds
    indices = itertools.count()
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            await send(payload(phase, next(indices), time.perf_counter(), size))
            sent += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return sent


async def run_phase(
    server: ServerProcess, mode: Mode, phase: int, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    mode.deliveries = Deliveries(phase)
    tap = mode.frames
    frames_before, envelopes_before, bytes_before = tap.frames, tap.envelopes, tap.ciphertext_bytes
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    sent = await drive(mode.send, phase, seconds, args.in_flight, args.payload_bytes)
    sending_seconds = time.perf_counter() - started
    complete = await mode.deliveries.all_of(sent, DELIVERY_TIMEOUT_SECONDS)
    await asyncio.sleep(SETTLE_SECONDS)
    server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
    measured = time.perf_counter() - started
    received = len(mode.deliveries.latencies)
    elapsed = mode.deliveries.last_at - started
    ordered = sorted(mode.deliveries.latencies)
    frames = tap.frames - frames_before
    return {
        "sent": sent,
        "received": received,
        "complete": complete,
        "stray_messages": mode.deliveries.strays,
        "sending_seconds": round(sending_seconds, 3),
        "seconds_to_last_received": round(elapsed, 3),
        "messages_per_s": round(received / elapsed, 1) if received else None,
        "latency_ms": {"p50": percentile_ms(ordered, 0.50), "p99": percentile_ms(ordered, 0.99)},
        "server_cpu_seconds": round(server_cpu, 3),
        # Cores' worth of CPU over the phase (settling included); near 1.0 its event loop is saturated.
        "server_cpu_utilization": round(server_cpu / measured, 3),
        "server_cpu_ms_per_message": round(server_cpu * 1e3 / received, 4) if received else None,
        "client_cpu_seconds": round(client_cpu, 3),
        "client_cpu_utilization": round(client_cpu / measured, 3),
        "client_cpu_ms_per_message": round(client_cpu * 1e3 / received, 4) if received else None,
        "sealed_frames": frames,
        "envelopes_per_frame": round((tap.envelopes - envelopes_before) / frames, 2) if frames else None,
        "envelope_bytes_per_message": round((tap.ciphertext_bytes - bytes_before) / received, 1) if received else None,
    }


async def benchmark(server: ServerProcess, directory: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    async with contextlib.AsyncExitStack() as clients:
        sender, encrypted_rx, plaintext_rx = [
            await clients.enter_async_context(
                Client(server.address, username=name, key_file=directory / f"{name}.json")
            )
            for name in ("dm-sender", "dm-rx-encrypted", "dm-rx-plaintext")
        ]
        await sender.stream()
        modes: dict[str, Mode] = {}
        encrypted_frames = await receive_encrypted(encrypted_rx, lambda: modes["encrypted"].deliver())
        plaintext_frames = await receive_plaintext(plaintext_rx, lambda: modes["plaintext"].deliver())
        modes["plaintext"] = Mode(send_plaintext(sender, plaintext_rx), plaintext_frames, Deliveries(0))
        modes["encrypted"] = Mode(send_encrypted(sender, encrypted_rx), encrypted_frames, Deliveries(0))
        warmup = min(MAX_WARMUP_SECONDS, args.seconds)
        warmups = {name: await run_phase(server, modes[name], 1, warmup, args) for name in MODES}
        timed = {name: await run_phase(server, modes[name], 2, args.seconds, args) for name in MODES}
    for name in MODES:
        timed[name]["warmup"] = {key: warmups[name][key] for key in ("sent", "received", "complete", "messages_per_s")}
    return timed


def ratios(encrypted: dict[str, Any], plaintext: dict[str, Any]) -> dict[str, float | None]:
    """Encrypted over plaintext, for each headline figure."""
    return {
        "messages_per_s": ratio(encrypted["messages_per_s"], plaintext["messages_per_s"]),
        "latency_p50": ratio(encrypted["latency_ms"]["p50"], plaintext["latency_ms"]["p50"]),
        "latency_p99": ratio(encrypted["latency_ms"]["p99"], plaintext["latency_ms"]["p99"]),
        "server_cpu_per_message": ratio(encrypted["server_cpu_ms_per_message"], plaintext["server_cpu_ms_per_message"]),
        "client_cpu_per_message": ratio(encrypted["client_cpu_ms_per_message"], plaintext["client_cpu_ms_per_message"]),
    }


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "grpcio_version": grpc.__version__,
        "key_store_directory": tempfile.gettempdir(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.in_flight < 1 or args.payload_bytes < MIN_PAYLOAD_BYTES:
        parser.error(f"--seconds must be > 0, --in-flight >= 1, --payload-bytes >= {MIN_PAYLOAD_BYTES}")
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="parley-dm-bench-") as tmp:
        server = ServerProcess(parley_serve(Path(tmp) / "data"), Path(tmp), env=SERVER_ENV)
        try:
            server.wait_for_address()
            modes = asyncio.run(benchmark(server, Path(tmp), args))
        finally:
            exit_code = server.terminate()
    document = {
        "benchmark": "dm_throughput",
        "parameters": {
            "seconds": args.seconds,
            "warmup_seconds": min(MAX_WARMUP_SECONDS, args.seconds),
            "payload_bytes": args.payload_bytes,
            "in_flight": args.in_flight,
            "recipient_devices": 1,
            "sender_devices": 1,
            "server_command": "python -m parley.cli.main serve --port 0 --data-dir TMP",
            "server_env": SERVER_ENV,
            "server_cpu_source": "/proc/<pid>/stat utime+stime",
            "client_cpu_source": "time.process_time() of this process: sender and receiver together",
        },
        "machine": machine,
        "modes": modes,
        "encrypted_over_plaintext": ratios(modes["encrypted"], modes["plaintext"]),
        "server_exit_code": exit_code,
    }
    print_document(document, args.out)
    return 0 if all(mode["complete"] for mode in modes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
