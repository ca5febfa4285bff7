"""End-to-end encrypted files through real servers: `client.files`, `Space.put_file/get_file/send_file` and
`client.message.send_file`, sealed on the client, stored erasure-coded, opened and checked on the reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parley import Client
from parley.crypto import file_sealing

pytestmark = pytest.mark.timeout(120)
CHUNK = file_sealing.CHUNK_BYTES


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345])
async def test_round_trips_of_every_edge_size(alice: Client, size: int) -> None:
    data = os.urandom(size)
    seen: list[tuple[int, int]] = []
    ref = await alice.files.put(data, name="notes.txt", progress=lambda done, total: seen.append((done, total)))
    assert (ref.size, ref.name, ref.media_type) == (size, "notes.txt", "text/plain")
    assert seen[-1] == (size, size)
    stored = await alice.files.stat(ref)
    header = stored.size - size - file_sealing.CHUNK_OVERHEAD * max(1, -(-size // CHUNK))
    assert file_sealing.HEADER_PREFIX_BYTES < header < 1024  # the sealed manifest, then the sealed chunks
    got: list[int] = []
    assert await alice.files.get(ref, progress=lambda done, total: got.append(done)) == data
    assert (got[-1] if got else 0) == size


async def test_a_file_from_a_path_streams_to_a_path(alice: Client, tmp_path: Path) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(os.urandom(3 * CHUNK + 7))
    ref = await alice.files.put(source)
    assert (ref.name, ref.media_type) == ("report.pdf", "application/pdf")
    target = tmp_path / "out" / "copy.pdf"
    assert await alice.files.get(ref, path=target) == target
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["copy.pdf"]
