"""`parley user register NAME` run again: done already for the key file's own user, refused for another."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from parley import DeviceIdentity
from services import allinone
from tests.support import make_config, running


async def register(address: str, key_file: Path, username: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "parley.cli.main", "user", "register", username),
        *("--addr", address, "--key-file", str(key_file)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_registering_the_same_name_again_says_so_and_succeeds(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    code, out, err = await register(server_address, key_file, "ann")
    assert code == 0, err
    assert out.startswith("registered ann (")
    before = key_file.read_bytes()
    me = DeviceIdentity.load(key_file)

    code, out, err = await register(server_address, key_file, "ann")
    assert (code, err) == (0, "")
    assert out == f"already registered as ann ({me.user_id}), device {me.device_id}; keys in {key_file}\n"
    assert key_file.read_bytes() == before


async def test_another_name_is_refused(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    assert (await register(server_address, key_file, "ann"))[0] == 0
    code, out, err = await register(server_address, key_file, "bob")
    assert (code, out) == (1, "")
    assert err == f"error: {key_file} already holds a registered identity (ann); choose another --key-file\n"


async def test_a_key_file_the_server_does_not_know_is_not_called_registered(
    server_address: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "ann.json"
    assert (await register(server_address, key_file, "ann"))[0] == 0
    async with running(allinone.create_server, make_config(tmp_path / "other-data")) as (_, elsewhere):
        code, out, err = await register(elsewhere, key_file, "ann")
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {key_file} holds a registration this server does not know (")
    assert err.endswith("); choose another --key-file\n")
