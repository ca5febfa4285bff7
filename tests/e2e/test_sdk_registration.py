"""A failed registration never locks a user out: the key file is written once the server accepted it (issue 11)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from parley import AlreadyExistsError, Client, ParleyError, UnavailableError, ValidationError
from parley.auth import pending_key_file
from parley.backoff import Backoff
from parley.device_identity import DeviceIdentity
from parley.identity.v1 import identity_pb2
from tests.chaos_proxy import chaos_proxy


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_refused_registration_leaves_no_key_file(server_address: str, tmp_path: Path) -> None:
    async with Client(server_address, username="taken", key_file=tmp_path / "first.json"):
        pass
    key_file = tmp_path / "me.json"
    for username, error in (("taken", AlreadyExistsError), ("No Caps!", ValidationError)):
        with pytest.raises(error):
            async with Client(server_address, username=username, key_file=key_file):
                pass
        assert not key_file.exists()
        assert not pending_key_file(key_file).exists()
    with pytest.raises(UnavailableError):
        async with Client(f"127.0.0.1:{closed_port()}", username="mel", key_file=key_file, timeout=2):
            pass
    assert not key_file.exists()
    assert not pending_key_file(key_file).exists()
    async with Client(server_address, username="mel", key_file=key_file) as mel:
        assert (await mel.whoami()).username == "mel"
    assert DeviceIdentity.load(key_file).registered
    assert not pending_key_file(key_file).exists()


async def test_a_registration_whose_reply_was_lost_is_finished_by_the_next_run(
    server_address: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "me.json"
    async with chaos_proxy(server_address) as proxy:
        client = Client(proxy.address, username="lostreply", key_file=key_file, timeout=1)
        await client.identity_stub.GetVerificationKeys(identity_pb2.GetVerificationKeysRequest())  # link up
        proxy.stall(to_server=False)  # the request arrives; the reply never comes back
        with pytest.raises(ParleyError):
            await client.connect()
    assert not key_file.exists()
    pending = DeviceIdentity.load(pending_key_file(key_file))
    assert pending.username == "lostreply"

    # Another name with the same key file: the server has the first, so the file is that user's.
    with pytest.raises(ParleyError, match="belongs to 'lostreply' \\(registered earlier\\), not 'other'"):
        async with Client(server_address, username="other", key_file=key_file):
            pass
    assert DeviceIdentity.load(key_file).registered
    async with Client(server_address, key_file=key_file) as finished:
        assert (await finished.whoami()).device_id == pending.device_id


async def test_an_unfinished_registration_that_never_arrived_gives_way_to_another_name(
    server_address: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "me.json"
    DeviceIdentity.generate("typo").save(pending_key_file(key_file))
    async with Client(server_address, username="meant", key_file=key_file, backoff=Backoff()) as meant:
        assert (await meant.whoami()).username == "meant"
    assert DeviceIdentity.load(key_file).username == "meant"
    assert not pending_key_file(key_file).exists()
