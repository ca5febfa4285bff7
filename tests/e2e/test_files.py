"""The file service through real servers: streamed uploads and downloads of erasure-coded shares, limits that
keep nothing, lost and corrupt shares, delete rights, quotas, and the same through a split-mode gateway."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from parley import Client
from parley.file.v1 import file_pb2, file_pb2_grpc
from services import allinone
from services.file.library import scrub_files
from services.file.shares import ShareStores
from services.runtime.config import Config
from tests.scale_out import scale_out
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running, wait_until

CHUNK = 256 * 1024
STRIPE = 3 * CHUNK
SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")
Metadata = tuple[tuple[str, str], ...]


@dataclass
class FileServer:
    config: Config
    stub: file_pb2_grpc.FileServiceAsyncStub
    alice: Metadata
    bob: Metadata

    @property
    def stores(self) -> list[Path]:
        return self.config.files.share_directories(self.config.server.data_dir)

    def stored_files(self) -> list[Path]:
        """Every file in the share stores, finished shares and partial ones."""
        return sorted(path for store in self.stores if store.exists() for path in store.rglob("*") if path.is_file())

    def share_of(self, file_id: str, number: int) -> Path:
        """Share `number` of the file (found by the file id in its header)."""
        return next(path for path in self.stores[number].rglob("*.share") if file_id.encode() in path.read_bytes())

    def metadata_rows(self) -> int:
        with contextlib.closing(sqlite3.connect(self.config.server.data_dir / "files.sqlite3")) as db:
            return int(db.execute("SELECT count(*) FROM files").fetchone()[0])

    async def used_bytes(self, who: Metadata) -> int:
        return (await self.stub.GetUploadPolicy(file_pb2.GetUploadPolicyRequest(), metadata=who)).policy.used_bytes


@contextlib.asynccontextmanager
async def file_server(tmp: Path, **settings: Any) -> AsyncIterator[FileServer]:
    config = make_config(tmp / "data", **settings)
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="alice", key_file=tmp / "alice.json") as alice,
            Client(address, username="bob", key_file=tmp / "bob.json") as bob,
            grpc.aio.insecure_channel(address) as channel,
        ):
            stub: file_pb2_grpc.FileServiceAsyncStub = file_pb2_grpc.FileServiceStub(channel)
            yield FileServer(config, stub, bearer(await alice.access_token()), bearer(await bob.access_token()))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FileServer]:
    async with file_server(tmp_path) as started:
        yield started


def frames(
    data: bytes, media_type: str = "application/pdf", declared: int | None = None, chunk: int = CHUNK
) -> list[file_pb2.UploadRequest]:
    start = file_pb2.UploadStart(media_type=media_type, size=len(data) if declared is None else declared)
    chunks = [file_pb2.UploadRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)]
    return [file_pb2.UploadRequest(start=start), *chunks]


async def upload(
    stub: file_pb2_grpc.FileServiceAsyncStub, who: Metadata, data: bytes, media_type: str = "application/pdf"
) -> file_pb2.FileInfo:
    return (await stub.Upload(iter(frames(data, media_type)), metadata=who)).file


async def download(
    stub: file_pb2_grpc.FileServiceAsyncStub, who: Metadata, file_id: str, offset: int = 0
) -> tuple[file_pb2.FileInfo, bytes]:
    responses = [r async for r in stub.Download(file_pb2.DownloadRequest(file_id=file_id, offset=offset), metadata=who)]
    assert responses[0].WhichOneof("frame") == "file"
    assert all(r.WhichOneof("frame") == "chunk" and 0 < len(r.chunk) <= CHUNK for r in responses[1:])
    return responses[0].file, b"".join(r.chunk for r in responses[1:])


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


async def test_round_trips_of_edge_sizes(server: FileServer) -> None:
    for size in (0, 1, CHUNK, CHUNK + 1, STRIPE + 1):
        data = os.urandom(size)
        stored = await upload(server.stub, server.alice, data)
        assert stored.file_id.startswith("f-")
        assert (stored.size, stored.media_type, stored.blake2b_256) == (size, "application/pdf", blake2b(data))
        # Any signed-in user who knows the id may read it: the bytes are ciphertext.
        info, received = await download(server.stub, server.bob, stored.file_id)
        assert received == data
        assert info == stored
        stat = await server.stub.Stat(file_pb2.StatRequest(file_id=stored.file_id), metadata=server.bob)
        assert stat.file == stored
    assert server.metadata_rows() == 5
    assert len(server.stored_files()) == 5 * 5


async def test_fifty_megabytes_round_trip(server: FileServer) -> None:
    data = os.urandom(50 * 1000 * 1000)
    started = time.perf_counter()
    stored = await upload(server.stub, server.alice, data, "video/mp4")
    uploaded = time.perf_counter()
    _, received = await download(server.stub, server.alice, stored.file_id)
    downloaded = time.perf_counter()
    assert received == data
    assert stored.blake2b_256 == blake2b(data)
    print(f"50 MB: upload {uploaded - started:.2f} s, download {downloaded - uploaded:.2f} s")


async def test_a_resumed_download_is_the_rest_of_the_file(server: FileServer) -> None:
    data = os.urandom(2 * STRIPE + 12345)
    stored = await upload(server.stub, server.alice, data)
    for offset in (1, CHUNK - 1, STRIPE, STRIPE + 7, len(data) - 1, len(data)):
        _, rest = await download(server.stub, server.alice, stored.file_id, offset)
        assert rest == data[offset:]
    error = await refused(download(server.stub, server.alice, stored.file_id, len(data) + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "offset" in (error.details() or "")


async def test_a_file_survives_losing_n_minus_k_stores_and_says_clearly_when_it_is_lost(server: FileServer) -> None:
    data = os.urandom(STRIPE + 999)
    stored = await upload(server.stub, server.alice, data)
    for store in server.stores[:2]:
        shutil.rmtree(store)
    _, received = await download(server.stub, server.alice, stored.file_id)
    assert received == data
    shutil.rmtree(server.stores[2])
    error = await refused(download(server.stub, server.alice, stored.file_id))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert error_reason(error) == "FILE_LOST"
    assert f"file {stored.file_id!r}: only 2 of 5 shares intact, 3 needed" in (error.details() or "")


# A download reads data share 1 (hashed before the first byte goes out) but not parity share 4 (hashed after).
@pytest.mark.parametrize("number", [1, 4])
async def test_a_flipped_byte_is_detected_the_download_is_right_and_the_share_repaired(
    server: FileServer, number: int
) -> None:
    data = os.urandom(STRIPE * 2)
    stored = await upload(server.stub, server.alice, data)
    share = server.share_of(stored.file_id, number)
    original = share.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    share.write_bytes(damaged)
    _, received = await download(server.stub, server.alice, stored.file_id)
    assert received == data
    await wait_until(lambda: share.read_bytes() == original, within=5)


async def test_a_download_that_finds_too_many_damaged_shares_as_it_reads_ends_with_file_lost(
    server: FileServer,
) -> None:
    data = os.urandom(STRIPE * 2)
    stored = await upload(server.stub, server.alice, data)
    # Damaged in their last blocks: they look intact until the download gets there.
    for number in (0, 1, 3):
        share = server.share_of(stored.file_id, number)
        content = bytearray(share.read_bytes())
        content[-1] ^= 0x01
        share.write_bytes(content)
    error = await refused(download(server.stub, server.alice, stored.file_id))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.DATA_LOSS, "FILE_LOST")
    assert f"file {stored.file_id!r}: only 2 of 5 shares intact, 3 needed" in (error.details() or "")


async def test_scrub_rebuilds_damaged_shares_and_reports_them(server: FileServer) -> None:
    intact = await upload(server.stub, server.alice, os.urandom(1000))
    damaged = await upload(server.stub, server.alice, os.urandom(CHUNK))
    server.share_of(damaged.file_id, 0).unlink()
    server.share_of(damaged.file_id, 4).write_bytes(b"rot")
    report = await scrub_files(server.config)
    assert (report.checked, report.repaired, report.lost) == (2, {damaged.file_id: [0, 4]}, [])
    assert (await scrub_files(server.config)).repaired == {}
    assert intact.file_id not in report.repaired


def age(paths: Sequence[Path], seconds: float) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


async def test_scrub_sweeps_leftovers_only_when_asked_and_only_real_ones(server: FileServer) -> None:
    live = await upload(server.stub, server.alice, os.urandom(STRIPE + 1))
    live_shares = server.stored_files()
    # Leftovers: the shares of an upload whose row was never written, and an abandoned partial file.
    stores = ShareStores(server.stores, 3, block_bytes=CHUNK)
    writer = stores.writer("f-" + "0" * 32, 1000)
    writer.write(os.urandom(1000))
    writer.finish()
    partial = server.stores[3] / ".partial-abandoned.share"
    partial.write_bytes(b"half")
    leftovers = sorted(set(server.stored_files()) - set(live_shares))
    age(server.stored_files(), 2 * 3600)

    assert (await scrub_files(server.config)).swept == 0  # not asked
    assert len(server.stored_files()) == 11
    report = await scrub_files(server.config, sweep=True)
    assert (report.checked, report.lost, report.swept, report.sweep_skipped) == (1, [], 6, "")
    assert server.stored_files() == live_shares
    assert len(leftovers) == 6
    _, data = await download(server.stub, server.alice, live.file_id)
    assert len(data) == STRIPE + 1


async def test_scrub_does_not_sweep_when_a_store_looks_misplaced_or_the_metadata_is_empty(
    server: FileServer, tmp_path: Path
) -> None:
    await upload(server.stub, server.alice, os.urandom(STRIPE))
    shares = server.stored_files()
    age(shares, 2 * 3600)
    # Three disks mounted in each other's places: the file looks lost, and its shares are no leftovers.
    stores = server.stores
    for n in (0, 1, 2):
        stores[n].rename(stores[n].with_name(f"{stores[n].name}-moved"))
    for n, m in ((0, 1), (1, 2), (2, 0)):
        stores[m].with_name(f"{stores[m].name}-moved").rename(stores[n])
    report = await scrub_files(server.config, sweep=True)
    assert (len(report.lost), report.swept) == (1, 0)
    assert "a file is lost" in report.sweep_skipped
    assert len(server.stored_files()) == len(shares)

    # A scrub pointed at another data directory (no metadata there) while the stores are set explicitly.
    elsewhere = dataclasses.replace(
        server.config,
        server=dataclasses.replace(server.config.server, data_dir=tmp_path / "elsewhere"),
        files=dataclasses.replace(server.config.files, share_stores=list(stores)),
    )
    report = await scrub_files(elsewhere, sweep=True)
    assert (report.checked, report.swept) == (0, 0)
    assert "knows no file" in report.sweep_skipped
    assert len(server.stored_files()) == len(shares)


async def test_uploads_over_a_limit_or_of_a_refused_type_keep_nothing(server: FileServer) -> None:
    data = os.urandom(2 * CHUNK)
    # Each ends with the frame the service refuses: a client that writes on after a refusal may get grpc's own
    # "Internal error from Core" instead of the service's status (the SDK waits for `start` to be accepted).
    attempts: Sequence[tuple[list[file_pb2.UploadRequest], grpc.StatusCode, str]] = [
        (frames(data, "text/html")[:1], grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"),
        (frames(data, "not a type")[:1], grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"),
        (
            frames(data, "image/png", declared=10 * 1000 * 1000 + 1)[:1],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "PAYLOAD_TOO_LARGE",
        ),
        # More bytes than declared: stopped at the declared size.
        (frames(data, declared=CHUNK + 10), grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE"),
        # Fewer bytes than declared.
        (frames(data, declared=3 * CHUNK), grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"),
        # Chunks over 256 KiB, or under 64 KiB before the last.
        (frames(data, chunk=CHUNK + 1)[:2], grpc.StatusCode.INVALID_ARGUMENT, "PROTOCOL_VIOLATION"),
        (frames(data, chunk=1000)[:2], grpc.StatusCode.INVALID_ARGUMENT, "PROTOCOL_VIOLATION"),
        (frames(data)[1:2], grpc.StatusCode.INVALID_ARGUMENT, "PROTOCOL_VIOLATION"),
        ([*frames(data), frames(data)[0]], grpc.StatusCode.INVALID_ARGUMENT, "PROTOCOL_VIOLATION"),
    ]
    for requests, code, reason in attempts:
        error = await refused(server.stub.Upload(iter(requests), metadata=server.alice))
        assert (error.code(), error_reason(error)) == (code, reason), error.details()
    assert server.stored_files() == []
    assert server.metadata_rows() == 0
    assert await server.used_bytes(server.alice) == 0


async def test_only_the_uploader_or_a_service_deletes(server: FileServer) -> None:
    data = os.urandom(CHUNK)
    stored = await upload(server.stub, server.alice, data)
    assert await server.used_bytes(server.alice) == CHUNK
    error = await refused(server.stub.Delete(file_pb2.DeleteRequest(file_id=stored.file_id), metadata=server.bob))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    assert len(server.stored_files()) == 5
    await server.stub.Delete(file_pb2.DeleteRequest(file_id=stored.file_id), metadata=server.alice)
    assert server.stored_files() == []
    assert await server.used_bytes(server.alice) == 0
    error = await refused(server.stub.Stat(file_pb2.StatRequest(file_id=stored.file_id), metadata=server.alice))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND")
    other = await upload(server.stub, server.bob, data)
    await server.stub.Delete(file_pb2.DeleteRequest(file_id=other.file_id), metadata=SERVICE)
    assert server.stored_files() == []
    assert server.metadata_rows() == 0


async def test_a_cancelled_upload_leaves_no_shares_and_no_metadata(server: FileServer) -> None:
    data = os.urandom(4 * CHUNK)
    hold = asyncio.Event()

    async def half_then_wait() -> AsyncIterator[file_pb2.UploadRequest]:
        for request in frames(data, declared=8 * CHUNK):
            yield request
        await hold.wait()

    call = server.stub.Upload(half_then_wait(), metadata=server.alice)
    # The shares being written are there (as partial files) until the call ends.
    await wait_until(lambda: sum(path.stat().st_size for path in server.stored_files()) >= 5 * CHUNK)
    call.cancel()
    await wait_until(lambda: server.stored_files() == [], within=5)
    assert server.metadata_rows() == 0
    assert await server.used_bytes(server.alice) == 0


async def test_the_quota_counts_what_an_uploader_keeps(tmp_path: Path) -> None:
    async with file_server(tmp_path, **{"files.quota_bytes_per_user": 3 * CHUNK}) as server:
        first = await upload(server.stub, server.alice, os.urandom(2 * CHUNK))
        error = await refused(upload(server.stub, server.alice, os.urandom(2 * CHUNK)))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        assert len(server.stored_files()) == 5
        # Each user has a quota of their own.
        await upload(server.stub, server.bob, os.urandom(2 * CHUNK))
        await server.stub.Delete(file_pb2.DeleteRequest(file_id=first.file_id), metadata=server.alice)
        await upload(server.stub, server.alice, os.urandom(3 * CHUNK))
        assert await server.used_bytes(server.alice) == 3 * CHUNK


async def test_upload_and_download_through_a_split_mode_gateway(tmp_path: Path) -> None:
    data = os.urandom(STRIPE + CHUNK + 3)
    with scale_out(tmp_path, "", gateways=1) as cluster:
        address = cluster.gateway(1)
        async with (
            Client(address, username="gale", key_file=tmp_path / "gale.json") as gale,
            grpc.aio.insecure_channel(address) as channel,
        ):
            stub: file_pb2_grpc.FileServiceAsyncStub = file_pb2_grpc.FileServiceStub(channel)
            who = bearer(await gale.access_token())
            stored = await upload(stub, who, data)
            assert stored.blake2b_256 == blake2b(data)
            _, received = await download(stub, who, stored.file_id)
            assert received == data
            _, rest = await download(stub, who, stored.file_id, STRIPE)
            assert rest == data[STRIPE:]
            error = await refused(upload(stub, who, data, "text/html"))
            assert (error.code(), error_reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
            # A client that goes away mid-upload: the gateway's call to the file service ends too.
            stores = tmp_path / "data" / "file" / "shares"

            def files_in_stores() -> list[Path]:
                return sorted(path for path in stores.rglob("*") if path.is_file())

            kept = files_in_stores()
            hold = asyncio.Event()

            async def half_then_wait() -> AsyncIterator[file_pb2.UploadRequest]:
                for request in frames(data[: 4 * CHUNK], declared=4 * STRIPE):
                    yield request
                await hold.wait()

            call = stub.Upload(half_then_wait(), metadata=who)
            await wait_until(lambda: len(list(stores.rglob(".partial-*"))) == 5)
            call.cancel()
            await wait_until(lambda: files_in_stores() == kept, within=5)


async def parley_files_scrub(data_dir: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli.main",
        "files",
        "scrub",
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_parley_files_scrub_repairs_and_reports_lost_files(server: FileServer) -> None:
    damaged = await upload(server.stub, server.alice, os.urandom(CHUNK))
    server.share_of(damaged.file_id, 1).unlink()
    code, out, err = await parley_files_scrub(server.config.server.data_dir)
    assert (code, err) == (0, "")
    assert out == f"repaired {damaged.file_id}: share 1\nchecked 1 files: 1 repaired, 0 lost\n"
    for number in range(3):  # n - k + 1 of 5 shares gone: fewer than k = 3 left
        server.share_of(damaged.file_id, number).unlink()
    code, out, err = await parley_files_scrub(server.config.server.data_dir)
    assert code == 1
    assert out.endswith("checked 1 files: 0 repaired, 1 lost\n")
    assert err.startswith(f"LOST {damaged.file_id}: fewer intact shares than it needs")
