"""The file service's share stores (services/file/shares.py): k-of-n erasure-coded,
content-addressed shares that round-trip any size, survive the loss of n−k stores,
detect and repair corruption, and leave nothing behind when a write fails."""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.file import share_partial, share_verification
from services.file.shares import FileLayout, ShareReader, SharesLostError, ShareStores

BLOCK = 1024
STRIPE = 3 * BLOCK


def make_stores(root: Path, total: int = 5, data: int = 3, block_bytes: int = BLOCK) -> ShareStores:
    return ShareStores([root / f"store{i}" for i in range(total)], data, block_bytes=block_bytes)


def store_files(stores: ShareStores) -> list[Path]:
    return sorted(path for directory in stores.directories for path in directory.rglob("*") if path.is_file())


def store_and_layout(stores: ShareStores, data: bytes, file_id: str = "f1", chunk: int = 1000) -> FileLayout:
    writer = stores.writer(file_id, len(data))
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
    return writer.finish()


def read_all(stores: ShareStores, layout: FileLayout, offset: int = 0) -> bytes:
    return b"".join(stores.reader(layout, offset))


def damage_found_by(stores: ShareStores, layout: FileLayout, reader: ShareReader) -> list[int]:
    """What a read finds: the shares its reader found damaged, and those of the shares it left unchecked."""
    return sorted([*reader.damaged, *stores.damaged(layout, reader.unchecked)])


def share_at(stores: ShareStores, layout: FileLayout, number: int) -> Path:
    name = layout.share_hashes[number].hex()
    return stores.directories[number] / name[:2] / f"{name}.share"


@pytest.mark.parametrize("size", [0, 1, STRIPE - 1, STRIPE, STRIPE + 1, 5 * STRIPE + 7])
def test_round_trip(tmp_path: Path, size: int) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(size)
    layout = store_and_layout(stores, data)
    assert (layout.size, layout.data_shares, layout.total_shares, layout.stripe_bytes) == (size, 3, 5, STRIPE)
    assert read_all(stores, layout) == data
    assert len(store_files(stores)) == 5


def test_writes_of_odd_sizes_across_several_stripes(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(7 * STRIPE + 123)
    writer = stores.writer("odd", len(data))
    sizes = [1, 0, 7, STRIPE - 8, 1, 2 * STRIPE + 5, 999, 4097, STRIPE * 3]
    position = 0
    for size in sizes:
        writer.write(memoryview(data)[position : position + size])
        position += size
    writer.write(bytearray(data[position:]))
    layout = writer.finish()
    assert read_all(stores, layout) == data
    assert all(len(chunk) <= STRIPE for chunk in stores.reader(layout))


def test_fifty_megabytes_with_default_stripes(tmp_path: Path) -> None:
    stores = ShareStores([tmp_path / f"store{i}" for i in range(5)])
    assert stores.stripe_bytes == 3 * 256 * 1024
    data = os.urandom(50 * 1000 * 1000)
    started = time.perf_counter()
    layout = store_and_layout(stores, data, chunk=256 * 1024)
    assert read_all(stores, layout) == data
    assert time.perf_counter() - started < 10


def test_share_files_are_named_by_the_blake2b_of_their_header_and_block_hashes(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(2 * STRIPE + 10)
    layout = store_and_layout(stores, data, file_id="héllo")
    for number in range(5):
        [path] = [p for p in stores.directories[number].rglob("*") if p.is_file()]
        content = path.read_bytes()
        fixed = struct.unpack_from(">4sBHHHIQH", content)
        assert fixed == (b"PSHR", 2, number, 3, 5, STRIPE, len(data), len("héllo".encode()))
        header = 25 + fixed[-1]
        assert content[25:header].decode() == "héllo"
        # Three block hashes, then two full stripes' 1024-byte blocks and ceil(10 / 3) bytes.
        hashes, body = content[header : header + 3 * 32], content[header + 3 * 32 :]
        blocks = [body[:BLOCK], body[BLOCK : 2 * BLOCK], body[2 * BLOCK :]]
        assert [len(block) for block in blocks] == [BLOCK, BLOCK, 4]
        assert hashes == b"".join(hashlib.blake2b(block, digest_size=32).digest() for block in blocks)
        digest = hashlib.blake2b(content[: header + 3 * 32], digest_size=32).hexdigest()
        assert path == stores.directories[number] / digest[:2] / f"{digest}.share"
        assert bytes.fromhex(digest) == layout.share_hashes[number]
    # Data share 0 holds the file's own bytes: its last block starts the last stripe.
    assert share_at(stores, layout, 0).read_bytes()[-4:] == data[2 * STRIPE : 2 * STRIPE + 4]


def test_same_bytes_under_two_ids_are_separate_shares(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(STRIPE)
    first = store_and_layout(stores, data, file_id="a")
    second = store_and_layout(stores, data, file_id="b")
    assert set(first.share_hashes).isdisjoint(second.share_hashes)
    stores.delete(first)
    assert read_all(stores, second) == data
    assert len(store_files(stores)) == 5


def test_losing_n_minus_k_stores_still_reads(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(4 * STRIPE + 100)
    layout = store_and_layout(stores, data)
    for number in (0, 3):
        share_at(stores, layout, number).unlink()
    reader = stores.reader(layout)
    assert reader.damaged == [0, 3]
    assert b"".join(reader) == data


def test_losing_more_than_n_minus_k_stores_is_a_clear_error(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    layout = store_and_layout(stores, os.urandom(STRIPE))
    for number in (1, 2, 4):
        share_at(stores, layout, number).unlink()
    with pytest.raises(SharesLostError, match=r"'f1': only 2 of 5 shares intact, 3 needed") as raised:
        stores.reader(layout)
    assert (raised.value.intact, raised.value.total, raised.value.needed) == (2, 5, 3)
    with pytest.raises(SharesLostError):
        stores.repair(layout)


@pytest.mark.parametrize("number", [0, 4])
def test_a_flipped_byte_is_detected_and_repaired(tmp_path: Path, number: int) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(3 * STRIPE + 1)
    layout = store_and_layout(stores, data)
    path = share_at(stores, layout, number)
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(damaged)

    reader = stores.reader(layout)
    assert b"".join(reader) == data
    assert damage_found_by(stores, layout, reader) == [number]
    assert stores.repair(layout) == [number]
    assert path.read_bytes() == original
    reader = stores.reader(layout)
    assert b"".join(reader) == data
    assert damage_found_by(stores, layout, reader) == []
    assert stores.repair(layout) == []
    assert not [p for p in store_files(stores) if p.name.startswith(share_partial.PARTIAL_PREFIX)]


def test_a_reader_checks_the_blocks_it_reads_and_leaves_the_other_shares_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(3 * STRIPE + 1)  # four stripes
    layout = store_and_layout(stores, data)
    hashed: list[int] = []
    real_hash = share_verification.block_hash

    def counting_hash(block: bytes | memoryview) -> bytes:
        hashed.append(len(block))
        return real_hash(block)

    monkeypatch.setattr(share_verification, "block_hash", counting_hash)
    reader = stores.reader(layout)
    assert (reader.damaged, reader.unchecked, hashed) == ([], [0, 1, 2, 3, 4], [])
    assert b"".join(reader) == data
    # The three data shares' four blocks each, as they were read.
    assert (reader.damaged, reader.unchecked, len(hashed)) == ([], [3, 4], 3 * 4)
    assert stores.damaged(layout, reader.unchecked) == []

    # A data share whose last block is damaged is swapped for the next share there; the last stays unchecked.
    for number in (1, 4):
        content = bytearray(share_at(stores, layout, number).read_bytes())
        content[-1] ^= 0x01
        share_at(stores, layout, number).write_bytes(content)
    reader = stores.reader(layout)
    assert reader.damaged == []
    assert b"".join(reader) == data
    assert (reader.damaged, reader.unchecked) == ([1], [3, 4])
    assert stores.damaged(layout, reader.unchecked) == [4]


def test_a_read_that_runs_out_of_intact_shares_midway_says_the_file_is_lost(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(3 * STRIPE)
    layout = store_and_layout(stores, data)
    for number in (0, 1, 3):
        content = bytearray(share_at(stores, layout, number).read_bytes())
        content[-1] ^= 0x01
        share_at(stores, layout, number).write_bytes(content)
    reader = stores.reader(layout)
    assert [len(piece) for piece in itertools.islice(reader, 6)] == [BLOCK] * 6
    with pytest.raises(SharesLostError, match=r"only 2 of 5 shares intact, 3 needed"):
        next(reader)
    assert reader.damaged == [0, 1, 3]


def test_the_writer_holds_to_the_size_it_was_given(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    longer = stores.writer("longer", STRIPE)
    longer.write(os.urandom(STRIPE - 1))
    with pytest.raises(ValueError, match=f"more bytes than the file's size of {STRIPE}"):
        longer.write(b"ab")
    shorter = stores.writer("shorter", STRIPE)
    shorter.write(os.urandom(STRIPE - 1))
    with pytest.raises(ValueError, match=f"{STRIPE - 1} bytes were written of the file's size of {STRIPE}"):
        shorter.finish()
    assert store_files(stores) == []
    with pytest.raises(ValueError, match="must not be negative"):
        stores.writer("negative", -1)


def test_shares_of_a_megabyte_or_more_are_checked_at_once_and_repaired(tmp_path: Path) -> None:
    stores = ShareStores([tmp_path / f"store{i}" for i in range(5)])
    data = os.urandom(8 * 1024 * 1024 + 5)
    layout = store_and_layout(stores, data, chunk=256 * 1024)
    assert layout.share_body_bytes() >= share_verification.PARALLEL_CHECK_BYTES
    original = share_at(stores, layout, 2).read_bytes()
    damaged = bytearray(original)
    damaged[-1000] ^= 0x01
    share_at(stores, layout, 2).write_bytes(damaged)
    share_at(stores, layout, 4).unlink()
    assert stores.repair(layout) == [2, 4]
    assert share_at(stores, layout, 2).read_bytes() == original
    assert read_all(stores, layout) == data


def test_repair_recreates_a_removed_share_directory(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(2 * STRIPE)
    layout = store_and_layout(stores, data)
    original = share_at(stores, layout, 2).read_bytes()
    share_at(stores, layout, 2).unlink()
    share_at(stores, layout, 2).parent.rmdir()
    assert stores.repair(layout) == [2]
    assert share_at(stores, layout, 2).read_bytes() == original


def test_aborted_writer_leaves_nothing(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    writer = stores.writer("gone", 3 * STRIPE)
    writer.write(os.urandom(2 * STRIPE + 5))
    assert len(store_files(stores)) == 5
    writer.abort()
    assert store_files(stores) == []
    with pytest.raises(ValueError, match="finished or aborted"):
        writer.write(b"x")


def test_failing_or_forgotten_writers_leave_nothing(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)

    def interrupted_upload() -> None:
        with stores.writer("failing", 2 * STRIPE) as writer:
            writer.write(os.urandom(STRIPE + 1))
            raise RuntimeError("upload interrupted")

    with pytest.raises(RuntimeError, match="upload interrupted"):
        interrupted_upload()
    with stores.writer("never finished", 3) as writer:
        writer.write(b"abc")
    forgotten = stores.writer("forgotten", STRIPE)
    forgotten.write(os.urandom(STRIPE))
    del forgotten
    gc.collect()
    assert store_files(stores) == []


def test_a_finish_that_fails_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stores = make_stores(tmp_path)
    real_replace = os.replace
    calls = []

    def replace_then_fail(source: Path, target: Path) -> None:
        calls.append(target)
        if len(calls) == 3:
            raise OSError("disk gone")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    writer = stores.writer("half", STRIPE + 2)
    writer.write(os.urandom(STRIPE + 2))
    with pytest.raises(OSError, match="disk gone"):
        writer.finish()
    assert len(calls) == 3
    assert store_files(stores) == []


@pytest.mark.parametrize("offset", [0, 1, STRIPE - 1, STRIPE, STRIPE + 5, 4 * STRIPE, 4 * STRIPE + 16, 4 * STRIPE + 17])
@pytest.mark.parametrize("lost", [(1,), ()], ids=["decoded", "data shares"])
def test_reading_from_an_offset_is_the_slice(tmp_path: Path, offset: int, lost: tuple[int, ...]) -> None:
    stores = make_stores(tmp_path)
    data = os.urandom(4 * STRIPE + 17)
    layout = store_and_layout(stores, data)
    for number in lost:
        share_at(stores, layout, number).unlink()
    assert read_all(stores, layout, offset) == data[offset:]


def test_an_offset_outside_the_file_is_refused(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    layout = store_and_layout(stores, b"abc")
    for offset in (-1, 4):
        with pytest.raises(ValueError, match="outside the file"):
            stores.reader(layout, offset)


def test_scrub_reports_repaired_and_lost_files(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    healthy = store_and_layout(stores, os.urandom(STRIPE), file_id="healthy")
    hurt = store_and_layout(stores, os.urandom(2 * STRIPE + 3), file_id="hurt")
    dead = store_and_layout(stores, os.urandom(10), file_id="dead")
    share_at(stores, hurt, 4).unlink()
    share_at(stores, hurt, 1).write_bytes(b"rot")
    for number in (0, 1, 2):
        share_at(stores, dead, number).unlink()

    report = stores.scrub([healthy, hurt, dead])
    assert (report.checked, report.repaired, report.lost) == (3, {"hurt": [1, 4]}, ["dead"])
    assert stores.scrub([healthy, hurt]).repaired == {}


def test_leftovers_are_old_files_no_hash_refers_to_in_any_store(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    kept = store_and_layout(stores, os.urandom(STRIPE), file_id="kept")
    orphan = store_and_layout(stores, os.urandom(STRIPE + 5), file_id="orphan")  # its row never written
    fresh_orphan = store_and_layout(stores, os.urandom(7), file_id="fresh")  # an upload about to record its row
    partial = stores.directories[2] / f"{share_partial.PARTIAL_PREFIX}crashed.share"
    partial.write_bytes(b"half an upload")
    hour_ago = time.time() - 3600
    for path in [*(share_at(stores, layout, n) for layout in (kept, orphan) for n in range(5)), partial]:
        os.utime(path, (hour_ago, hour_ago))
    # A share of the kept file in another store than its number says (disks mounted in swapped places).
    moved = stores.directories[1] / share_at(stores, kept, 0).relative_to(stores.directories[0])
    moved.parent.mkdir(parents=True, exist_ok=True)
    share_at(stores, kept, 0).rename(moved)

    found = stores.leftovers(set(kept.share_hashes), written_before=time.time() - 600)
    assert sorted(found) == sorted([*((share_at(stores, orphan, n), "orphan") for n in range(5)), (partial, None)])
    assert fresh_orphan.file_id == "fresh"  # written just now: not a leftover yet


def test_delete_removes_every_share(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    layout = store_and_layout(stores, os.urandom(STRIPE * 2))
    share_at(stores, layout, 3).unlink()
    stores.delete(layout)
    assert store_files(stores) == []


def test_layout_round_trips_through_json(tmp_path: Path) -> None:
    stores = make_stores(tmp_path)
    layout = store_and_layout(stores, os.urandom(100))
    assert FileLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    broken = layout.to_dict() | {"share_hashes": layout.to_dict()["share_hashes"][:4]}
    with pytest.raises(ValueError, match="expected 5 share hashes"):
        FileLayout.from_dict(broken)
    with pytest.raises(ValueError, match="size must be an integer"):
        FileLayout.from_dict(layout.to_dict() | {"size": "100"})
    with pytest.raises(ValueError, match="not a file layout"):
        FileLayout.from_dict({"file_id": "x"})


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        ShareStores([])
    with pytest.raises(ValueError, match="data shares must be between 1 and total shares"):
        make_stores(tmp_path, total=2, data=3)
    with pytest.raises(ValueError, match="data shares must be between 1"):
        make_stores(tmp_path, data=0)
    with pytest.raises(ValueError, match="at most 256"):
        ShareStores([tmp_path / str(i) for i in range(257)])
    with pytest.raises(ValueError, match="distinct"):
        ShareStores([tmp_path / "a", tmp_path / "b", tmp_path / "a"], 2)
    with pytest.raises(ValueError, match="block bytes"):
        make_stores(tmp_path, block_bytes=0)
    with pytest.raises(ValueError, match="file id"):
        make_stores(tmp_path).writer("", 0)
    layout = store_and_layout(make_stores(tmp_path / "six", total=6), b"x")
    with pytest.raises(ValueError, match="6 shares but only 5 stores"):
        make_stores(tmp_path).reader(layout)


@st.composite
def codings(draw: st.DrawFn) -> tuple[int, int, int, int, list[int]]:
    total = draw(st.integers(1, 6))
    data = draw(st.integers(1, total))
    block = draw(st.integers(1, 8))
    size = draw(st.integers(0, 3 * data * block + 2 * data))
    kept = draw(st.sets(st.integers(0, total - 1), min_size=data))
    return total, data, block, size, sorted(set(range(total)) - kept)


@settings(max_examples=150, deadline=None)
@given(coding=codings(), seed=st.binary(min_size=1, max_size=8), chunk=st.integers(1, 40), corrupt=st.booleans())
def test_any_k_intact_shares_read_back_the_input(
    coding: tuple[int, int, int, int, list[int]], seed: bytes, chunk: int, corrupt: bool
) -> None:
    total, data_shares, block, size, broken = coding
    data = (seed * (size // len(seed) + 1))[:size]
    with tempfile.TemporaryDirectory() as root:
        stores = make_stores(Path(root), total, data_shares, block)
        layout = store_and_layout(stores, data, chunk=chunk)
        for number in broken:
            path = share_at(stores, layout, number)
            if corrupt:
                content = bytearray(path.read_bytes())
                content[-1] ^= 0x80
                path.write_bytes(content)
            else:
                path.unlink()
        reader = stores.reader(layout)
        assert damage_found_by(stores, layout, reader) == broken
        assert b"".join(reader) == data
        assert stores.repair(layout) == broken
        assert damage_found_by(stores, layout, stores.reader(layout)) == []
