"""The `parley` command line against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from parley.cli.main import build_parser

COMMANDS = [
    [],
    ["serve"],
    ["health"],
    ["user"],
    ["user", "register"],
    ["user", "login"],
    ["user", "show"],
    ["whoami"],
    ["devices"],
    ["devices", "add"],
    ["devices", "revoke"],
    ["rooms"],
    ["rooms", "list"],
    ["rooms", "create"],
    ["rooms", "delete"],
    ["listen"],
    ["send"],
    ["chat"],
    ["history"],
    ["edit"],
    ["delete"],
    ["pub"],
    ["sub"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "parley")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: parley")
    assert len(out.splitlines()) > 3


async def parley(*args: str, key_file: Path, address: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli.main",
        "--addr",
        address,
        "--key-file",
        str(key_file),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PARLEY_ADDR": "", "PARLEY_KEY_FILE": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_register_whoami_devices(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "alice.json"
    code, out, err = await parley(
        "user", "register", "alice", "--device-name", "laptop", key_file=key_file, address=server_address
    )
    assert code == 0, err
    assert out.startswith("registered alice")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    code, out, err = await parley("whoami", "--json", key_file=key_file, address=server_address)
    assert code == 0, err
    me = json.loads(out)
    assert me["username"] == "alice"

    code, out, err = await parley("user", "login", key_file=key_file, address=server_address)
    assert code == 0, err
    assert json.loads(out)["accessToken"].count(".") == 2

    phone_file = tmp_path / "keys" / "alice-phone.json"
    code, out, err = await parley("devices", "add", "phone", key_file=key_file, address=server_address)
    assert code == 0, err
    assert stat.S_IMODE(phone_file.stat().st_mode) == 0o600

    code, out, err = await parley("devices", key_file=key_file, address=server_address)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert any("laptop (this device)" in line for line in lines)
    assert any("phone" in line for line in lines)

    code, out, err = await parley("user", "register", "alice", key_file=key_file, address=server_address)
    assert code == 0, err
    assert out.startswith("already registered as alice")
    code, out, err = await parley("user", "register", "bob", key_file=key_file, address=server_address)
    assert code == 1
    assert "already holds a registered identity" in err


async def test_errors_are_one_clear_line(server_address: str, tmp_path: Path) -> None:
    code, _, err = await parley("user", "register", "No!", key_file=tmp_path / "k.json", address=server_address)
    assert code == 1
    assert err.strip() == "error: VALIDATION_FAILED: username: may only contain a-z, 0-9, '_', '.' and '-'"
    code, _, err = await parley("whoami", key_file=tmp_path / "missing.json", address=server_address)
    assert code != 0
    assert "parley user register" in err


async def test_health_exit_codes(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "unused.json"
    code, out, _ = await parley("health", key_file=key_file, address=server_address)
    assert (code, out.strip()) == (0, "SERVING")
    code, out, _ = await parley(
        "health", "--service", "parley.identity.v1.IdentityService", key_file=key_file, address=server_address
    )
    assert code == 0
    code, out, _ = await parley("health", "--service", "nope.v1.Nope", key_file=key_file, address=server_address)
    assert code == 1
    assert out.startswith("NOT_FOUND")
    code, out, _ = await parley("health", "--timeout", "1", key_file=key_file, address="127.0.0.1:1")
    assert code == 1
    assert out.startswith("UNAVAILABLE")


async def test_serve_rejects_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    code, _, err = await parley("serve", "--config", str(config), key_file=tmp_path / "k", address="x:1")
    assert code == 2
    assert "unknown setting server.prot" in err


async def test_serve_ignores_the_cli_client_variables(tmp_path: Path) -> None:
    from tests.support import ServerProcess

    process = ServerProcess(
        ["--port", "0", "--data-dir", str(tmp_path / "data")],
        {"PARLEY_ADDR": "elsewhere:1", "PARLEY_KEY_FILE": str(tmp_path / "k.json")},
        tmp_path / "serve.log",
    )
    try:
        code, out, _ = await parley("health", key_file=tmp_path / "k.json", address=process.address)
        assert (code, out.strip()) == (0, "SERVING")
    finally:
        assert process.terminate() == 0


async def test_serve_on_a_port_in_use_fails_with_one_clear_line(server_address: str, tmp_path: Path) -> None:
    port = server_address.rsplit(":", 1)[1]
    code, _, err = await parley(
        "serve", "--port", port, "--data-dir", str(tmp_path / "data"), key_file=tmp_path / "k", address="x:1"
    )
    assert code == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: is another server using the port?" in err
    assert "Traceback" not in err
