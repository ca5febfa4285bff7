"""`parley channel create|join|list|invite|accept|send|read|members|add|remove` against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from parley import Client
from parley.cli.parser import build_parser
from tests.e2e.test_cli_direct import TIME, parley
from tests.support import sigint_as_from_a_terminal

pytestmark = pytest.mark.timeout(30)

CHANNEL_COMMANDS = [
    ["channel"],
    *(["channel", action] for action in ("create", "join", "list", "invite", "accept", "send", "read", "members")),
    ["channel", "add"],
    ["channel", "remove"],
]
SPACE_ID = r"sp-[0-9a-f]{32}"


async def register(address: str, key_file: Path, username: str) -> str:
    async with Client(address, username=username, key_file=key_file, device_name="laptop") as client:
        await client.publish_prekeys()
        return client.user_id


async def ok(*args: str, key_file: Path, address: str) -> str:
    code, out, err = await parley(*args, key_file=key_file, address=address)
    assert (code, err) == (0, ""), f"parley {' '.join(args)}: {err}"
    return out


async def refused(*args: str, key_file: Path, address: str) -> str:
    """A command that fails: exit 1, nothing on stdout, one line on stderr (returned)."""
    code, out, err = await parley(*args, key_file=key_file, address=address)
    assert (code, out) == (1, ""), f"parley {' '.join(args)}: {out}{err}"
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", CHANNEL_COMMANDS, ids=" ".join)
def test_every_channel_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: parley {' '.join(command)}")
    assert "PARLEY_KEYSTORE_PASSPHRASE" in out or command[-1] == "list"
    assert "--addr" in out
    assert "--key-file" in out


@pytest.mark.parametrize("uses", ["0", "1001", "many"])
def test_invite_refuses_uses_out_of_range(uses: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["channel", "invite", "crew", "--uses", uses])
    assert exited.value.code == 2
    assert "--uses" in capsys.readouterr().err


async def test_create_then_list(server_address: str, tmp_path: Path) -> None:
    ann_key = tmp_path / "ann.json"
    await register(server_address, ann_key, "ann")
    assert await ok("channel", "list", key_file=ann_key, address=server_address) == "no channels\n"

    out = await ok("channel", "create", "crew", key_file=ann_key, address=server_address)
    assert re.fullmatch(rf"{SPACE_ID}\n", out), out
    space_id = out.strip()
    err = await refused("channel", "create", "crew", key_file=ann_key, address=server_address)
    assert err.startswith("error: CHANNEL_EXISTS: a channel named 'crew' exists already"), err
    again = await ok("channel", "create", "crew", "--exist-ok", key_file=ann_key, address=server_address)
    assert again == out

    listed = await ok("channel", "list", key_file=ann_key, address=server_address)
    assert re.fullmatch(rf"crew +{space_id} +end-to-end +epoch 0\n", listed), listed
    joined = await ok("channel", "join", space_id, key_file=ann_key, address=server_address)
    assert joined == f"crew ({space_id}): end-to-end, epoch 0, 1 member\n"


async def test_a_non_member_is_told_to_ask_for_an_invitation(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ok("channel", "create", "crew", key_file=ann_key, address=server_address)

    err = await refused("channel", "join", "crew", key_file=ben_key, address=server_address)
    assert err.startswith("error: NOT_A_MEMBER: you are not a member of channel 'crew'; ask one of its admins"), err
    assert "`parley channel accept CODE AUTH_CODE`" in err
    err = await refused("channel", "join", "nothing", key_file=ben_key, address=server_address)
    assert err == "error: CHANNEL_NOT_FOUND: no channel 'nothing'\n"


async def test_an_invitation_admits_with_the_right_auth_code_only(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ok("channel", "create", "crew", key_file=ann_key, address=server_address)

    out = await ok("channel", "invite", "crew", "--expires", "600", key_file=ann_key, address=server_address)
    code_line, auth_line, advice = out.splitlines()
    code, auth_code = code_line.split()[-1], auth_line.split()[-1]
    assert code_line == f"code       {code}", out
    assert code.startswith("pi1."), out
    assert re.fullmatch(r"auth code  \d{8}", auth_line), out
    assert advice.startswith("give the guest the code and the auth code by different channels"), out
    assert "it admits 1 guest until " in advice

    wrong = "0" * 8 if auth_code != "0" * 8 else "1" * 8
    err = await refused("channel", "accept", code, wrong, key_file=ben_key, address=server_address)
    assert err.startswith("error: INVITATION_INVALID: not admitted: wrong auth code; 2 more tries;"), err
    assert "check the auth code with whoever invited you" in err
    out = await ok("channel", "accept", code, auth_code, key_file=ben_key, address=server_address)
    assert out == "crew\n"
    assert "crew" in await ok("channel", "list", key_file=ben_key, address=server_address)

    err = await refused("channel", "accept", code, auth_code, key_file=ben_key, address=server_address)
    assert err == "error: you are a member of crew already; the invitation is left unused\n"
    err = await refused("channel", "accept", "not-a-code", auth_code, key_file=ben_key, address=server_address)
    assert err.startswith("error: not a Parley invitation code"), err
    err = await refused("channel", "invite", "crew", key_file=ben_key, address=server_address)
    assert err == "error: NOT_ADMIN: only admins of crew invites; ask one of them\n"


async def test_a_message_sent_is_read_with_its_senders_name(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ok("channel", "create", "crew", key_file=ann_key, address=server_address)
    assert await ok("channel", "read", "crew", key_file=ann_key, address=server_address) == "no messages\n"
    out = await ok("channel", "send", "crew", "before ben", key_file=ann_key, address=server_address)
    assert out == "sent to crew (epoch 0)\n"
    await ok("channel", "add", "crew", "ben", key_file=ann_key, address=server_address)
    out = await ok("channel", "send", "crew", "hello crew", key_file=ann_key, address=server_address)
    assert out == "sent to crew (epoch 1)\n"
    async with Client(server_address, key_file=ben_key) as ben:  # a body that is not {"text": …}
        await (await ben.space.join_channel("crew")).send_message({"poll": ["tea", "coffee"]})

    out = await ok("channel", "read", "crew", key_file=ben_key, address=server_address)
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert re.fullmatch(rf"{TIME} -- 1 kept message this device cannot open left out \(sent before .*", lines[0]), out
    assert re.fullmatch(rf"{TIME} ann: hello crew", lines[1]), out
    assert re.fullmatch(rf'{TIME} ben: {{"poll":\["tea","coffee"\]}}', lines[2]), out
    out = await ok("channel", "read", "crew", "--limit", "1", key_file=ann_key, address=server_address)
    assert re.fullmatch(rf'{TIME} ben: {{"poll":\["tea","coffee"\]}}\n', out), out


async def test_admins_add_and_remove_members(server_address: str, tmp_path: Path) -> None:
    keys = {name: tmp_path / f"{name}.json" for name in ("ann", "ben", "cyd")}
    for name, key_file in keys.items():
        await register(server_address, key_file, name)
    ann_key, ben_key, cyd_key = keys.values()
    await ok("channel", "create", "crew", key_file=ann_key, address=server_address)

    out = await ok("channel", "add", "crew", "ben", "--admin", key_file=ann_key, address=server_address)
    assert out == "added ben to crew as admin; epoch 1: they read what is sent from now on\n"
    err = await refused("channel", "add", "crew", "ben", key_file=ann_key, address=server_address)
    assert err == "error: ben is a member of crew already\n"
    out = await ok("channel", "add", "crew", "cyd", key_file=ben_key, address=server_address)
    assert out == "added cyd to crew as member; epoch 2: they read what is sent from now on\n"
    err = await refused("channel", "add", "crew", "nobody", key_file=ann_key, address=server_address)
    assert err == "error: USER_NOT_FOUND: no user named 'nobody'\n"
    err = await refused("channel", "remove", "crew", "ann", key_file=cyd_key, address=server_address)
    assert err == "error: NOT_ADMIN: only admins of crew remove members; ask one of them\n"

    out = await ok("channel", "members", "crew", key_file=cyd_key, address=server_address)
    rows = sorted(line.split() for line in out.splitlines())
    assert rows == [
        ["ann", "admin", "1", "device"],
        ["ben", "admin", "1", "device"],
        ["cyd", "(you)", "member", "1", "device"],
    ], out

    await ok("channel", "send", "crew", "before", key_file=ann_key, address=server_address)
    out = await ok("channel", "remove", "crew", "cyd", key_file=ann_key, address=server_address)
    assert out == "removed cyd from crew; epoch 3: they cannot read what is sent from now on\n"
    err = await refused("channel", "remove", "crew", "cyd", key_file=ann_key, address=server_address)
    assert err == "error: cyd is not a member of crew\n"
    await ok("channel", "send", "crew", "after", key_file=ann_key, address=server_address)
    err = await refused("channel", "read", "crew", key_file=cyd_key, address=server_address)
    assert err.startswith("error: NOT_A_MEMBER: you are not a member of channel 'crew'; ask one of its admins"), err
    out = await ok("channel", "members", "crew", key_file=ben_key, address=server_address)
    assert sorted(line.split()[0] for line in out.splitlines()) == ["ann", "ben"], out


async def test_read_follow_prints_what_arrives_until_ctrl_c(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ok("channel", "create", "crew", key_file=ann_key, address=server_address)
    await ok("channel", "add", "crew", "ben", key_file=ann_key, address=server_address)
    await ok("channel", "send", "crew", "kept", key_file=ann_key, address=server_address)

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli.main",
        *("channel", "read", "crew", "--follow", "--addr", server_address, "--key-file", str(ben_key)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
        preexec_fn=sigint_as_from_a_terminal,
    )
    assert process.stdout is not None
    try:
        kept = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        assert re.fullmatch(rf"{TIME} ann: kept\n", kept), kept
        await ok("channel", "send", "crew", "live", key_file=ann_key, address=server_address)
        live = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        assert re.fullmatch(rf"{TIME} ann: live\n", live), live
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 10)
        assert (process.returncode, out, err) == (130, b"", b"")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
