"""History benchmark: group-committed appends and page reads from a big log.

    python -m bench.history_bench [--seconds N] [--concurrency C] [--rows R] [--out FILE]

Starts `parley serve` in a child process (SQLite WAL, synchronous=NORMAL) and
measures, printing one JSON document:

- appends/s through `HistoryService.AppendEvents` from C concurrent callers,
  one event per call (group commit shares transactions between callers), ten
  per call, and a hundred per call from 16 callers (as a gateway batches);
- the baseline in the same run: one SQLite transaction per event on a scratch
  database in this process (what an append costs without group commit);
- page latency p50/p99 for 100 events, newest first, from a room of R events
  (1,000,000 by default, written into the data directory before the server
  starts): through the RPC for pages among the newest 1,000 (served by the hot
  buffer) and for older pages (the store), and in this process straight from
  the store and from a hot buffer holding the newest 1,000, and the RPC's own
  floor (GetLogState on the same channel): the baselines each path is
  compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import sqlite_utils

from bench.report import print_document
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.values import to_value
from services.history import sqlite_storage as store
from services.history.hot import HotBuffer
from services.history.storage import AppendRequest, NewEventRow
from services.runtime.sqlite import apply_migrations

SECRET = "bench-secret"
CREDENTIALS = (("authorization", f"Bearer svc:bench:{SECRET}"),)
LISTENING = re.compile(r"listening on (\S+):(\d+)")
PAYLOAD = to_value({"text": "x" * 80}).SerializeToString()
BODY = history_pb2.LoggedEvent(
    event="message", payload=to_value({"text": "x" * 80}), sender="u", time_ms=1, handle="h"
).SerializeToString()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


def open_db(path: Path) -> sqlite_utils.Database:
    connection = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(connection)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    apply_migrations(db, store.MIGRATIONS)
    return db


def preload(path: Path, room: str, rows: int) -> float:
    """Writes `rows` events into `room` in batches; returns seconds taken."""
    started = time.perf_counter()
    db = open_db(path)
    store.append(db, AppendRequest(room, [NewEventRow("message", "u", "h0", BODY)]), 0.0, 0)
    batch = 10_000
    for first in range(2, rows + 1, batch):
        last = min(rows, first + batch - 1)
        db.execute("BEGIN")
        db.conn.executemany(
            "INSERT INTO events (room_id, seq, event, sender, handle, body) VALUES (?,?,?,?,?,?)",
            [(room, seq, "message", "u", f"h{seq}", BODY) for seq in range(first, last + 1)],
        )
        db.execute("UPDATE room_logs SET last_seq = ? WHERE room_id = ?", [last, room])
        db.execute("COMMIT")
    db.conn.close()
    return time.perf_counter() - started


def baseline_single_row_commits(seconds: float) -> dict[str, Any]:
    """One transaction per event, straight on SQLite: the cost group commit avoids."""
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "baseline.sqlite3")
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            db.execute("BEGIN IMMEDIATE")
            store.append(db, AppendRequest("r", [NewEventRow("message", "u", f"h{count}", BODY)]), 0.0, 0)
            db.execute("COMMIT")
            count += 1
        elapsed = time.perf_counter() - started
        db.conn.close()
    return {"appends": count, "per_second": round(count / elapsed, 1)}


# Pages whose cursor lies this far below the newest event are all held by the hot buffer.
HOT_WINDOW = 800


def hot_cursor(rows: int) -> int:
    return random.randint(rows - HOT_WINDOW, rows + 1)


def deep_cursor(rows: int) -> int:
    return random.randint(102, rows - 2 * HOT_WINDOW)  # 101 older events below it


def in_process_page_latency(path: Path, room: str, rows: int, samples: int) -> dict[str, Any]:
    """The store's page and the hot buffer's page, without RPC or threads (101 rows: a page and one more)."""
    db = open_db(path)
    hot = HotBuffer(events_per_name=1000, max_bytes=64 << 20)
    assert hot.begin_load(room)
    hot.install(room, store.read_snapshot(db, room, hot.events_per_name))
    paths: dict[str, Any] = {
        "store_newest": lambda: store.page_before(db, room, hot_cursor(rows), 101),
        "store_deep": lambda: store.page_before(db, room, deep_cursor(rows), 101),
        "hot_buffer": lambda: hot.page_before(room, hot_cursor(rows), 101).rows,  # type: ignore[union-attr]
    }
    result = {}
    for name, read in paths.items():
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            page = read()
            times.append(time.perf_counter() - started)
            assert len(page) == 101
        result[name] = percentiles(times)
    db.conn.close()
    return result


class Server:
    def __init__(self, data_dir: Path) -> None:
        env = {
            **os.environ,
            "PARLEY_LOGGING_LEVEL": "WARNING",
            "PARLEY_AUTH_SERVICE_CREDENTIALS": f"bench={SECRET}",
        }
        self.log = open(data_dir.parent / "server.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "parley.cli.main", "serve", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            match = LISTENING.search(line)
            if match:
                self.address = f"127.0.0.1:{match.group(2)}"
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.close()


async def appends_per_second(address: str, seconds: float, concurrency: int, per_call: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        count = 0
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def caller(worker: int) -> None:
            nonlocal count
            n = 0
            # Built once and only relabelled per call: the clients share the server's two cores.
            request = history_pb2.AppendEventsRequest(room_id=f"append-{per_call}")
            for _ in range(per_call):
                request.events.add(event="message", sender="u").payload.ParseFromString(PAYLOAD)
            while time.perf_counter() < stop_at:
                for i, event in enumerate(request.events):
                    event.handle = f"w{worker}.{n}.{i}"
                started = time.perf_counter()
                await stub.AppendEvents(request, metadata=CREDENTIALS)
                latencies.append(time.perf_counter() - started)
                count += per_call
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "events_per_call": per_call,
        "concurrency": concurrency,
        "appends": count,
        "per_second": round(count / elapsed, 1),
        "call_latency_ms": percentiles(latencies),
    }


async def rpc_page_latency(address: str, room: str, samples: int, cursor: Callable[[], int]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        times = []
        for _ in range(samples):
            before = cursor()
            started = time.perf_counter()
            page = await stub.ListEvents(
                history_pb2.ListEventsRequest(room_id=room, before_seq=before, page_size=100), metadata=CREDENTIALS
            )
            times.append(time.perf_counter() - started)
            assert len(page.events) == 100
    return percentiles(times)


async def rpc_floor_latency(address: str, room: str, samples: int) -> dict[str, Any]:
    """The same channel's smallest call (GetLogState: one key lookup): what any page pays for the RPC itself."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            await stub.GetLogState(history_pb2.GetLogStateRequest(room_id=room), metadata=CREDENTIALS)
            times.append(time.perf_counter() - started)
    return percentiles(times)


async def run(seconds: float, concurrency: int, rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        loaded_in = preload(data_dir / "history.sqlite3", "big", rows)
        os.sync()  # the preload's write-back would otherwise compete with the measured commits
        result: dict[str, Any] = {
            "benchmark": "history",
            "parameters": {"seconds": seconds, "concurrency": concurrency, "rows": rows},
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": sys.version.split()[0],
                "sqlite": sqlite3.sqlite_version,
            },
            "preload_seconds": round(loaded_in, 1),
            "baseline_single_row_commits": baseline_single_row_commits(seconds),
            "in_process_page_100_of_big_room_ms": in_process_page_latency(
                data_dir / "history.sqlite3", "big", rows, 2000
            ),
        }
        server = Server(data_dir)
        try:
            await appends_per_second(server.address, 0.5, concurrency, 1)  # warm-up
            result["appends_one_per_call"] = await appends_per_second(server.address, seconds, concurrency, 1)
            result["appends_ten_per_call"] = await appends_per_second(server.address, seconds, concurrency, 10)
            # As a gateway appends: many publishers' events batched into one call.
            result["appends_hundred_per_call"] = await appends_per_second(server.address, seconds, 16, 100)
            await rpc_page_latency(server.address, "big", 50, lambda: hot_cursor(rows))  # warm-up: loads the room
            result["rpc_page_100_of_big_room_ms"] = {
                "newest_1000_from_hot_buffer": await rpc_page_latency(
                    server.address, "big", 2000, lambda: hot_cursor(rows)
                ),
                "older_from_store": await rpc_page_latency(server.address, "big", 2000, lambda: deep_cursor(rows)),
                "baseline_get_log_state": await rpc_floor_latency(server.address, "big", 2000),
            }
        finally:
            server.stop()
        baseline = result["baseline_single_row_commits"]["per_second"]
        result["ratios"] = {
            "one_per_call_over_single_row_commits": round(result["appends_one_per_call"]["per_second"] / baseline, 2),
            "ten_per_call_over_single_row_commits": round(result["appends_ten_per_call"]["per_second"] / baseline, 2),
            "hundred_per_call_over_single_row_commits": round(
                result["appends_hundred_per_call"]["per_second"] / baseline, 2
            ),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per append phase (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent appenders (default %(default)s)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="events in the big room (default %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args()
    if args.rows < 5000:
        parser.error("--rows must be at least 5000 (pages are drawn from the newest 800 and from older ones)")
    result = asyncio.run(run(args.seconds, args.concurrency, args.rows))
    print_document(result, args.out)


if __name__ == "__main__":
    main()
