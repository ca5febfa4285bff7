"""The servers never receive a file's plaintext, name or key (issue 14; CRYPTO.md "Files").

The recorded split deployment of `test_e2e_server_sees_no_secrets`: every process reached only through a
recording proxy, NATS too. ann sends a file to a sealed channel and another to bob as a direct message, both
full of one marker and named with it; bob fetches both. Then no recorded byte (either way through any proxy,
raw and as whole gRPC messages) and no file the services wrote holds the marker, a file key, or any private
key the clients have. The search proves it can see: the stored ciphertext is found on the wire to the file
service and in its share stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

import pytest

from parley import Client
from parley.direct_messages import DirectMessage
from parley.files import FileRef
from parley.spaces import ChannelMessage
from tests.e2e.test_e2e_server_sees_no_secrets import Secrets, found_in, new_user, places, recorded, recorded_cluster
from tests.e2e.test_e2e_server_sees_no_secrets import stored as stored_files
from tests.e2e.test_encrypted_files import raw_download

pytestmark = pytest.mark.timeout(90)


def marked(marker: bytes, size: int) -> bytes:
    """`size` bytes with the marker every few hundred bytes, between random runs."""
    parts, length = [], 0
    while length < size:
        part = marker + os.urandom(300)
        parts.append(part)
        length += len(part)
    return b"".join(parts)[:size]


async def share(address: str, key_files: list[Path], marker: str) -> tuple[list[FileRef], list[bytes]]:
    """ann sends a marked file to a channel with bob and one to bob directly; bob fetches both. Returns the
    references and the stored ciphertexts."""
    async with contextlib.AsyncExitStack() as stack:
        ann, bob = [await stack.enter_async_context(Client(address, key_file=k)) for k in key_files]
        crew = await ann.space.create_channel(f"crew-{secrets.token_hex(4)}")
        await crew.add_member(bob.user_id)
        bob_crew = await bob.space.join_channel(crew.space_id)
        in_channel: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        bob_crew.on_message(in_channel.put_nowait)
        direct: asyncio.Queue[DirectMessage] = asyncio.Queue()
        await bob.message.subscribe(f"user:{bob.user_id}", direct.put_nowait)
        await bob.stream()

        files = [marked(marker.encode(), 2 * 1024 * 1024 + 77), marked(marker.encode(), 300_000)]
        await crew.send_file(files[0], name=f"{marker}.pdf", caption=marker)
        await ann.message.send_file(f"user:{bob.user_id}", files[1], name=f"{marker}.txt", caption=marker)
        got = [(await asyncio.wait_for(in_channel.get(), 15)).media, (await asyncio.wait_for(direct.get(), 15)).media]
        refs = [media.file for media in got if media is not None]
        assert [await bob.files.get(ref) for ref in refs] == files
        return refs, [await raw_download(bob, ref.file_id) for ref in refs]


async def test_no_file_plaintext_name_or_key_reaches_the_server(tmp_path: Path) -> None:
    marker = f"file-plaintext-{secrets.token_hex(8)}"
    clients = tmp_path / "clients"
    clients.mkdir()
    secrets_seen = Secrets()
    async with recorded_cluster(tmp_path) as (address, proxies):
        key_files = [await new_user(address, clients, name) for name in ("ann", "bob")]
        refs, ciphertexts = await share(address, key_files, marker)
    secrets_seen.gather(key_files)
    for ref in refs:
        secrets_seen.add(ref.key, "file_key", ref.name)
    on_the_wire, on_disk = recorded(proxies), stored_files(tmp_path)

    # The search can see: the ciphertext went to the file service and is kept in its share stores.
    for ciphertext in ciphertexts:
        sample = ciphertext[100:164]
        assert any(
            p.startswith("file proxy, connection") and p.endswith("to server") for p in places(on_the_wire, sample)
        )
        assert any(p.startswith("data/file") for p in places(on_disk, sample)), sorted(on_disk)[:20]
    assert not any(m.compressed for m in proxies["file"].grpc_messages())
    assert secrets_seen.kinds["file_key"] == 2

    assert places(on_the_wire, marker.encode()) == []
    assert places(on_disk, marker.encode()) == []
    assert found_in(on_the_wire, secrets_seen.found) == []
    assert found_in(on_disk, secrets_seen.found) == []
