"""Bus micro-benchmark: publish → deliver through NATS between two connections.

    python -m bench.bus_bench [--url nats://127.0.0.1:4222] [--messages N] [--big-messages M] [--out FILE]

The subscriber runs in this process, the publisher in a child process (two
connections, as two gateways hold), against a running NATS server; each run
uses its own subject prefix. For 200-byte and 64 KiB bodies it measures:

- `bus`: `NatsBus.publish` → `NatsBus.subscribe` handler, with the headers a
  room event carries (kind, seq, epoch, event): what Parley does;
- the choice behind it, on bare nats-py: the same headers as NATS headers
  (`raw_headers`), in the block NatsBus puts in front of the body
  (`raw_in_payload`, services/runtime/nats_wire.py), and no headers at all
  (`raw_no_headers`, the floor).

Per case: messages published and delivered, delivered/s (delivered over the
time from the first publish to the last delivery), the publisher's own rate,
and the subscriber's CPU microseconds per delivered message. Prints one JSON
document. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.report import cpu_model, print_document
from services.runtime.bus import BusMessage
from services.runtime.nats_bus import NatsBus
from services.runtime.nats_wire import pack, unpack

SUBJECT = "room.bench.room-1"
HEADERS = {"kind": "event", "seq": "123456", "epoch": "e-3f9a1c", "event": "message"}
SIZES = {"200B": 200, "64KiB": 64 * 1024}
MODES = ("bus", "raw_headers", "raw_in_payload", "raw_no_headers")
# No new delivery for this long ends a case (what is missing is counted as lost).
STALL_SECONDS = 10.0
POLL_SECONDS = 0.01
# Bare nats-py subscriptions hold as much as NatsBus's do, so neither drops.
PENDING_MESSAGES = 1_000_000
PENDING_BYTES = 1024 * 1024 * 1024


def nats_subject(prefix: str) -> str:
    return f"{prefix}.room.bench.room-1"


# The publisher (a child process)


def publish_main(url: str, prefix: str, mode: str, size: int, count: int, report: Any) -> None:
    report.put(asyncio.run(publish(url, prefix, mode, size, count)))


async def publish(url: str, prefix: str, mode: str, size: int, count: int) -> dict[str, float]:
    body = os.urandom(size)
    if mode == "bus":
        bus = await NatsBus.connect(url, prefix)
        message = BusMessage(SUBJECT, body, HEADERS)
        started = time.monotonic()
        for _ in range(count):
            await bus.publish(message)
        await bus.flush()
        finished = time.monotonic()
        await bus.close()
        return {"started": started, "finished": finished}
    nc = await nats.connect(url)
    subject = nats_subject(prefix)
    payload = pack(HEADERS, body) if mode == "raw_in_payload" else body
    headers = HEADERS if mode == "raw_headers" else None
    started = time.monotonic()
    for _ in range(count):
        await nc.publish(subject, payload, headers=headers)
    await nc.flush()
    finished = time.monotonic()
    await nc.close()
    return {"started": started, "finished": finished}


# The subscriber (this process)


class Counter:
    def __init__(self) -> None:
        self.received = 0
        self.last = 0.0

    def count(self) -> None:
        self.received += 1
        self.last = time.monotonic()


async def subscribe(url: str, prefix: str, mode: str, counter: Counter) -> Callable[[], Any]:
    """Subscribes (confirmed by the server) and returns how to close."""
    if mode == "bus":
        bus = await NatsBus.connect(url, prefix)

        def on_message(message: BusMessage) -> None:
            assert message.headers["seq"] == HEADERS["seq"]
            counter.count()

        await bus.subscribe(SUBJECT, on_message)
        return bus.close
    nc = await nats.connect(url)

    async def on_msg(msg: Msg) -> None:
        if mode == "raw_headers":
            assert msg.headers is not None
            assert msg.headers["seq"] == HEADERS["seq"]
        elif mode == "raw_in_payload":
            headers, _ = unpack(msg.data)
            assert headers["seq"] == HEADERS["seq"]
        counter.count()

    await nc.subscribe(
        nats_subject(prefix), cb=on_msg, pending_msgs_limit=PENDING_MESSAGES, pending_bytes_limit=PENDING_BYTES
    )
    await nc.flush()
    return nc.close


async def run_case(url: str, mode: str, size: int, count: int) -> dict[str, Any]:
    prefix = f"bench{secrets.token_hex(4)}"
    counter = Counter()
    close = await subscribe(url, prefix, mode, counter)
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    publisher = context.Process(target=publish_main, args=(url, prefix, mode, size, count, report))
    cpu_before = time.process_time()
    publisher.start()
    try:
        last_seen, last_change = 0, time.monotonic()
        while counter.received < count and time.monotonic() - last_change < STALL_SECONDS:
            await asyncio.sleep(POLL_SECONDS)
            if counter.received != last_seen:
                last_seen, last_change = counter.received, time.monotonic()
        cpu = time.process_time() - cpu_before
        published = await asyncio.to_thread(report.get, True, 60.0)
    finally:
        await asyncio.to_thread(publisher.join, 60.0)
        await close()
    elapsed = counter.last - published["started"]
    publishing = published["finished"] - published["started"]
    return {
        "published": count,
        "delivered": counter.received,
        "lost": count - counter.received,
        "delivered_per_second": round(counter.received / elapsed) if elapsed > 0 else None,
        "published_per_second": round(count / publishing) if publishing > 0 else None,
        "delivered_MiB_per_second": round(counter.received * size / elapsed / 2**20, 1) if elapsed > 0 else None,
        "subscriber_cpu_us_per_message": round(cpu / max(counter.received, 1) * 1e6, 2),
    }


async def run(url: str, counts: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, size in SIZES.items():
        results[label] = {}
        for mode in MODES:
            print(f"bus_bench: {label} {mode}", file=sys.stderr, flush=True)
            results[label][mode] = await run_case(url, mode, size, counts[label])
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="nats://127.0.0.1:4222", help="a running NATS server")
    parser.add_argument("--messages", type=int, default=100_000, help="200-byte messages per case (default 100000)")
    parser.add_argument("--big-messages", type=int, default=5_000, help="64 KiB messages per case (default 5000)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.messages < 1 or args.big_messages < 1:
        print("bus_bench: --messages and --big-messages must be at least 1", file=sys.stderr)
        return 2
    results = asyncio.run(run(args.url, {"200B": args.messages, "64KiB": args.big_messages}))
    document = {
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "python_version": sys.version.split()[0]},
        "nats_py_version": metadata.version("nats-py"),
        "headers": HEADERS,
        "results": results,
    }
    print_document(document, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
