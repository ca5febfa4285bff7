"""Files (issue 14): upload and download MB/s of one file through Parley's SDK against raw loopback gRPC
streaming of the same bytes, in one run.

    python -m bench.file_bench [--size-mb N] [--repeats R] [--out FILE]

Two servers in child processes, both up for the whole run (CPU of each and its descendants from
/proc/<pid>/stat):

- parley: `parley serve --port 0`; this process's `Client` puts N MiB of random bytes as one "video/mp4"
  file (`client.files.put`: sealed here in 1 MiB chunks, streamed in 256 KiB frames, erasure-coded 3-of-5
  and written to five share stores on disk by the server), gets it back (`client.files.get`: every share
  hashed, stripes read, chunks opened here), checks it is byte-identical, and deletes it;
- raw: `python -m bench.file_raw --port 0`, a grpc.aio server with no proto; the same bytes go up by
  client streaming in 256 KiB frames (kept in memory) and come back by server streaming (see that module).

One warm-up round trip of 1 MiB on each, then R round trips on each, alternating parley and raw. Per
direction and system: MB/s (plaintext bytes over the call's wall time, MB = 2^20 bytes), server and client
CPU seconds per MB (`time.process_time` of this process, which is the client), the median of R of each;
then Parley over raw for MB/s and whether it meets the target (at least 0.5 both ways). An in-process
breakdown (one thread, no network, no disk) times each pass over the same bytes Parley makes: sealing and
opening on the client, the upload's BLAKE2b, zfec coding and the shares' BLAKE2b on the server. Warning and
error lines in both servers' logs are counted. Prints one JSON document. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nacl
import nacl.signing
import zfec  # type: ignore[import-untyped]

from bench import file_raw
from bench.report import cpu_model, load_average, print_document, ratio
from bench.server_logs import LogWatch
from bench.server_process import ServerProcess, descendants, parley_serve, total_cpu_seconds
from parley import Client
from parley.crypto import file_sealing as sealing
from services.file.share_coding import StripeCoder
from services.file.share_format import block_hash
from services.file.shares import DEFAULT_BLOCK_BYTES

T = TypeVar("T")
MB = 1024 * 1024
WARMUP_BYTES = 1 * MB
MEDIA_TYPE = "video/mp4"
FILE_NAME = "bench.mp4"
TARGET_RATIO = 0.5
# The file service's defaults: 3-of-5 shares, a stripe of k blocks.
DATA_SHARES, TOTAL_SHARES = 3, 5
SYSTEMS = ("parley", "raw")
DIRECTIONS = ("upload", "download")
SERVER_ENV = {"PARLEY_LOGGING_LEVEL": "WARNING"}
REPO_ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.file_bench",
        description="Benchmark file upload and download through Parley's SDK against a real server in a child "
        "process (sealed on the client, erasure-coded 3-of-5 to disk by the server) and, in the same run, raw "
        "loopback gRPC streaming of the same bytes (no encryption, coding or disk) in another child process. "
        "Reports MB/s both ways, the ratio to raw, server and client CPU per MB and an in-process breakdown "
        "of Parley's passes over the bytes. Prints one JSON document.",
    )
    parser.add_argument(
        "--size-mb", type=int, default=64, help="the file's size in MiB, at most 95 (the video cap) (default 64)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="round trips on each system; medians are reported (default 3)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


@dataclass(frozen=True)
class Sample:
    """One call: its wall time and the CPU it took in the server and in this process."""

    seconds: float
    server_cpu: float
    client_cpu: float


@dataclass(frozen=True)
class RoundTrip:
    upload: Sample
    download: Sample
    intact: bool


def server_cpu_seconds(server: ServerProcess) -> float:
    """The server and any process it started."""
    return total_cpu_seconds(descendants([server.pid])[server.pid])


async def timed(server: ServerProcess, work: Awaitable[T]) -> tuple[T, Sample]:
    server_cpu, client_cpu = server_cpu_seconds(server), time.process_time()
    started = time.perf_counter()
    result = await work
    seconds = time.perf_counter() - started
    return result, Sample(seconds, server_cpu_seconds(server) - server_cpu, time.process_time() - client_cpu)


async def parley_round_trip(client: Client, server: ServerProcess, data: bytes) -> RoundTrip:
    ref, up = await timed(server, client.files.put(data, name=FILE_NAME, media_type=MEDIA_TYPE))
    got, down = await timed(server, client.files.get(ref))
    await client.files.delete(ref)
    return RoundTrip(up, down, got == data)


async def raw_round_trip(channel: grpc.aio.Channel, server: ServerProcess, data: bytes) -> RoundTrip:
    count, up = await timed(server, file_raw.upload(channel, data))
    got, down = await timed(server, file_raw.download(channel))
    return RoundTrip(up, down, count == len(data) and got == data)


async def measure(
    parley: ServerProcess, raw: ServerProcess, directory: Path, data: bytes, repeats: int
) -> dict[str, list[RoundTrip]]:
    """R round trips on each system, alternating, after a warm-up on each."""
    username = f"files-{secrets.token_hex(3)}"
    trips: dict[str, list[RoundTrip]] = {system: [] for system in SYSTEMS}
    async with (
        Client(parley.address, username=username, key_file=directory / "bench.json") as client,
        grpc.aio.insecure_channel(raw.address) as channel,
    ):
        await parley_round_trip(client, parley, data[:WARMUP_BYTES])
        await raw_round_trip(channel, raw, data[:WARMUP_BYTES])
        for _ in range(repeats):
            trips["parley"].append(await parley_round_trip(client, parley, data))
            trips["raw"].append(await raw_round_trip(channel, raw, data))
    return trips


def run_servers(directory: Path, data: bytes, repeats: int) -> dict[str, Any]:
    """Both servers up, the round trips, both stopped: the trips, exit codes and log lines."""
    logs = LogWatch()
    parley = ServerProcess(parley_serve(directory / "data"), directory, name="parley", env=SERVER_ENV)
    try:
        raw = ServerProcess(file_raw.raw_command(), directory, name="raw", cwd=REPO_ROOT)
        try:
            logs.watch("parley", parley.stderr_path)
            logs.watch("raw", raw.stderr_path)
            parley.wait_for_address()
            raw.wait_for_address()
            trips = asyncio.run(measure(parley, raw, directory, data, repeats))
        finally:
            raw_exit = raw.terminate()
    finally:
        parley_exit = parley.terminate()
    return {"trips": trips, "exit_codes": {"parley": parley_exit, "raw": raw_exit}, "log": logs.section()}


def direction_figures(samples: Sequence[Sample], size: int) -> dict[str, Any]:
    megabytes = size / MB
    rates = [megabytes / sample.seconds for sample in samples]
    return {
        "mb_per_s": round(statistics.median(rates), 1),
        "mb_per_s_each": [round(rate, 1) for rate in rates],
        "seconds_each": [round(sample.seconds, 3) for sample in samples],
        "server_cpu_seconds_per_mb": round(statistics.median(s.server_cpu / megabytes for s in samples), 4),
        "client_cpu_seconds_per_mb": round(statistics.median(s.client_cpu / megabytes for s in samples), 4),
    }


def directions(trips: dict[str, list[RoundTrip]], size: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for direction in DIRECTIONS:
        figures = {
            system: direction_figures([getattr(trip, direction) for trip in trips[system]], size) for system in SYSTEMS
        }
        over_raw = ratio(figures["parley"]["mb_per_s"], figures["raw"]["mb_per_s"])
        found[direction] = {
            **figures,
            "parley_over_raw_mb_per_s": over_raw,
            "target_met": over_raw is not None and over_raw >= TARGET_RATIO,
        }
    return found


def timed_pass(work: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def seal_file(data: bytes, key: bytes, signing_key: nacl.signing.SigningKey) -> tuple[sealing.Manifest, bytes]:
    """As `client.files.put` seals it: the stored header, then each sealed chunk."""
    manifest = sealing.Manifest(
        sealing.new_content_id(),
        FILE_NAME,
        MEDIA_TYPE,
        len(data),
        sealing.CHUNK_BYTES,
        "u-bench",
        signing_key.verify_key.encode(),
        int(time.time() * 1000),
    )
    sealed = bytearray(sealing.seal_header(manifest, key, signing_key))
    sealer = sealing.ChunkSealer(manifest, key)
    for index in range(manifest.chunks):
        start = index * manifest.chunk_bytes
        sealed += sealer.seal(data[start : start + manifest.chunk_length(index)])
    return manifest, bytes(sealed)


def open_chunks(manifest: sealing.Manifest, key: bytes, chunks: bytes) -> int:
    """As `client.files.get` opens them, fed in download frames; the plaintext bytes."""
    opener = sealing.ChunkOpener(manifest, key)
    opened = 0
    for start in range(0, len(chunks), file_raw.FRAME_BYTES):
        opened += sum(map(len, opener.feed(chunks[start : start + file_raw.FRAME_BYTES])))
    opener.finish()
    return opened


def code_and_hash_shares(stored: bytes) -> tuple[float, float]:
    """Seconds of zfec coding and of BLAKE2b over the coded blocks, stripe by stripe as the share writer goes
    (format v2: one hash per block)."""
    coder = StripeCoder(DATA_SHARES, TOTAL_SHARES)
    stripe_bytes = DATA_SHARES * DEFAULT_BLOCK_BYTES
    coding = hashing = 0.0
    for start in range(0, len(stored), stripe_bytes):
        stripe = stored[start : start + stripe_bytes]
        started = time.perf_counter()
        blocks = coder.encode(stripe, -(-len(stripe) // DATA_SHARES))
        coding += time.perf_counter() - started
        started = time.perf_counter()
        for block in blocks:
            block_hash(block)
        hashing += time.perf_counter() - started
    return coding, hashing


def breakdown(data: bytes) -> dict[str, Any]:
    """Each of Parley's passes over the file's bytes, timed alone in this process."""
    key, signing_key = sealing.new_file_key(), nacl.signing.SigningKey.generate()
    (manifest, stored), seal_seconds = timed_pass(lambda: seal_file(data, key, signing_key))
    header_bytes = sealing.header_length(stored[: sealing.HEADER_PREFIX_BYTES])
    opened, open_seconds = timed_pass(lambda: open_chunks(manifest, key, stored[header_bytes:]))
    if opened != len(data):
        raise RuntimeError(f"opened {opened} of {len(data)} bytes")
    _, hash_seconds = timed_pass(lambda: hashlib.blake2b(stored, digest_size=32).digest())
    coding_seconds, share_hash_seconds = code_and_hash_shares(stored)
    megabytes = len(data) / MB

    def figures(seconds: float) -> dict[str, float]:
        return {"seconds": round(seconds, 4), "mb_per_s": round(megabytes / seconds, 1)}

    return {
        "stored_bytes": len(stored),
        "client_seal": figures(seal_seconds),
        "client_open": figures(open_seconds),
        "server_upload_blake2b": figures(hash_seconds),
        "server_zfec_encode": figures(coding_seconds),
        "server_shares_blake2b": figures(share_hash_seconds),
        "note": "one thread, no network or disk, MB/s of plaintext; the server hashes every share once when it "
        "stores a file and again at the start of each download",
    }


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "grpcio_version": grpc.__version__,
        "pynacl_version": nacl.__version__,
        "zfec_version": zfec.__version__,
        "share_store_directory": tempfile.gettempdir(),
    }


def parameters(args: argparse.Namespace, size: int) -> dict[str, Any]:
    return {
        "size_mb": args.size_mb,
        "size_bytes": size,
        "mb": "2**20 bytes; MB/s is plaintext bytes over the call's wall time",
        "repeats": args.repeats,
        "warmup_bytes_each_system": WARMUP_BYTES,
        "media_type": MEDIA_TYPE,
        "frame_bytes": file_raw.FRAME_BYTES,
        "chunk_bytes": sealing.CHUNK_BYTES,
        "erasure_coding": f"{DATA_SHARES}-of-{TOTAL_SHARES} (the server's default)",
        "parley_server_command": "python -m parley.cli.main serve --port 0 --data-dir TMP",
        "parley_server_env": SERVER_ENV,
        "raw_server_command": "python -m bench.file_raw --port 0",
        "server_cpu_source": "/proc/<pid>/stat utime+stime of each server and its descendants",
        "client_cpu_source": "time.process_time() of this process (the client of both systems)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.size_mb <= 95 or args.repeats < 1:
        parser.error("--size-mb must be 1 to 95, --repeats >= 1")
    size = args.size_mb * MB
    machine = machine_facts()
    data = os.urandom(size)
    passes = breakdown(data)
    with tempfile.TemporaryDirectory(prefix="parley-file-bench-") as tmp:
        run = run_servers(Path(tmp), data, args.repeats)
    trips: dict[str, list[RoundTrip]] = run["trips"]
    intact = all(trip.intact for system in SYSTEMS for trip in trips[system])
    document = {
        "benchmark": "files",
        "parameters": parameters(args, size),
        "machine": machine,
        **directions(trips, size),
        "targets": f"Parley at least {TARGET_RATIO:g} of raw MB/s, upload and download",
        "round_trips_byte_identical": intact,
        "in_process_breakdown": passes,
        "server_log": run["log"].report(),
        "server_exit_codes": run["exit_codes"],
        "load_average_at_end": load_average(),
    }
    print_document(document, args.out)
    return 0 if intact and not any(run["exit_codes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
