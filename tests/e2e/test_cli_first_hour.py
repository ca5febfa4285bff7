"""The `parley` CLI's first hour (issue 11, parts 6 and 7): what a newcomer meets, against real servers."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from parley import Client, DeviceIdentity
from parley.cli.parser import build_parser
from tests.support import LISTENING, REPO

GLOBAL_OPTIONS = ("--addr", "--key-file")


async def cli(
    *args: str, cwd: Path | None = None, stdout: int = asyncio.subprocess.PIPE, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """Runs `parley ARGS` with no PARLEY_* variables; the test puts the global options where it likes."""
    env = {k: v for k, v in os.environ.items() if k not in ("PARLEY_ADDR", "PARLEY_KEY_FILE")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli.main",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, (out or b"").decode(), err.decode()


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def every_command(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_command(sub, (*path, name))


COMMANDS = list(every_command(build_parser()))


async def register(address: str, key_file: Path, username: str) -> None:
    async with Client(address, username=username, key_file=key_file, device_name="laptop"):
        pass


# 1 and 10: global options anywhere, help everywhere


def test_the_command_list_is_complete() -> None:
    assert {" ".join(c) for c in COMMANDS} >= {"user show", "devices add", "whoami", "pub", "health", "serve"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "parley")
def test_every_command_has_help_with_the_global_options(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    usage, description = out.split("\n\n")[:2]
    assert usage.startswith("usage: parley")
    assert len(description.strip()) > 10, f"{command}: no description"
    for option in GLOBAL_OPTIONS:
        assert option in out, f"`parley {' '.join(command)} --help` does not show {option}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--addr", "h:1", "--key-file", "/k/a.json", "devices", "add", "phone"],
        ["devices", "add", "phone", "--addr", "h:1", "--key-file", "/k/a.json"],
        ["devices", "--addr", "h:1", "add", "--key-file", "/k/a.json", "phone"],
        ["--addr", "elsewhere:2", "devices", "add", "phone", "--addr", "h:1", "--key-file", "/k/a.json"],
    ],
)
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser({}).parse_args(argv)
    assert (args.addr, args.key_file, args.device_name) == ("h:1", Path("/k/a.json"), "phone")


def test_global_options_given_first_survive_the_command() -> None:
    args = build_parser({"PARLEY_ADDR": "env:1"}).parse_args(["--addr", "h:1", "user", "register", "ann"])
    assert args.addr == "h:1"
    assert build_parser({"PARLEY_ADDR": "env:1"}).parse_args(["whoami"]).addr == "env:1"


async def test_health_takes_addr_after_the_command_as_the_readme_shows(server_address: str) -> None:
    code, out, err = await cli("health", "--addr", server_address)
    assert (code, out.strip()) == (0, "SERVING"), err


# 2: --version


async def test_version() -> None:
    code, out, _ = await cli("--version")
    assert (code, out.strip()) == (0, f"parley {metadata.version('parley')}")


# 3: a closed pipe


async def test_output_cut_short_exits_quietly(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    async with Client(server_address, username="ann", key_file=key_file) as ann:
        await ann.create_room("lobby")
    for command in (["whoami"], ["listen", "lobby"], ["rooms", "list"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader (`head`) has gone before anything was written
        try:
            code, _, err = await cli(*command, "--addr", server_address, "--key-file", str(key_file), stdout=write_end)
        finally:
            os.close(write_end)
        assert (code, err) == (141, ""), command


async def test_a_shell_pipeline_into_head_has_no_traceback(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    await register(server_address, key_file, "ann")
    parley = f"{sys.executable} -m parley.cli.main --addr {server_address} --key-file {key_file}"
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f'set -o pipefail; {parley} whoami | head -c 1; echo " $?"',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert out.decode().split()[-1] in ("0", "141")  # 141 when head left before parley finished writing
    assert err.decode() == ""


# 4: a server that is down, other errors


async def test_a_server_that_is_down_gets_one_clear_line(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    await register(server_address, key_file, "ann")
    down = f"127.0.0.1:{closed_port()}"
    expected = f"error: no Parley server at {down} — start one with `make run`\n"
    for command in (["whoami"], ["send", "lobby", "message", "{}"]):
        code, out, err = await cli(*command, "--addr", down, "--key-file", str(key_file))
        assert (code, out, err) == (1, "", expected), command
    code, out, err = await cli("user", "register", "bob", "--addr", down, "--key-file", str(tmp_path / "bob.json"))
    assert (code, out, err) == (1, "", expected)
    assert not (tmp_path / "bob.json").exists()
    code, out, err = await cli("health", "--addr", down, "--timeout", "2")
    assert (code, out, err) == (1, "UNAVAILABLE\n", expected)


async def test_other_errors_print_the_reason_in_one_line(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    await register(server_address, key_file, "ann")
    code, _, err = await cli("rooms", "delete", "nowhere", "--addr", server_address, "--key-file", str(key_file))
    assert code == 1
    assert re.fullmatch(r"error: ROOM_NOT_FOUND: \S.*\n", err), err
    code, _, err = await cli("user", "show", "nobody", "--addr", server_address, "--key-file", str(key_file))
    assert code == 1
    assert re.fullmatch(r"error: [A-Z_]+: \S.*\n", err), err
    assert "Traceback" not in err


# 5: make run PORT=…


async def test_make_run_takes_a_port_and_leaves_the_tree_clean(tmp_path: Path) -> None:
    before = git_status()
    # `-o` keeps make from reinstalling the shared .venv; the recipe under test is `run`'s.
    make = await asyncio.create_subprocess_exec(
        *("make", "--no-print-directory", "-o", ".venv/.installed", "run", "PORT=0", f"DATA_DIR={tmp_path / 'data'}"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        port = await asyncio.wait_for(listening_port(make), 60)
        assert port != 50051
        code, out, err = await cli("health", "--addr", f"localhost:{port}")
        assert (code, out.strip()) == (0, "SERVING"), err
    finally:
        os.killpg(make.pid, signal.SIGTERM)  # make and the server it started
        await asyncio.wait_for(make.communicate(), 30)
    assert (tmp_path / "data").is_dir()
    assert git_status() == before
    # The default DATA_DIR, ./data, is ignored too.
    assert ignored_by_git("data/parley.db")


async def listening_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    seen = []
    while line := (await process.stdout.readline()).decode():
        seen.append(line)
        if match := LISTENING.search(line):
            return int(match.group(2))
    raise AssertionError("make run exited:\n" + "".join(seen))


def ignored_by_git(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def git_status() -> set[str]:
    """Changes at the top of the repo and in package-lock.json: where `make run` could leave something."""
    lines = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return {line for line in lines if "/" not in line[3:] or "package-lock" in line}


# 6: pub and send confirm


async def test_pub_and_send_confirm(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    await register(server_address, key_file, "ann")
    where = ("--addr", server_address, "--key-file", str(key_file))
    code, out, err = await cli("pub", "presence:lobby", '{"online": 1}', *where)
    assert (code, json.loads(out)) == (0, {"published": "presence:lobby"}), err
    code, out, err = await cli("rooms", "create", "lobby", *where)
    assert code == 0, err
    code, out, err = await cli("send", "lobby", "message", '{"text": "hi"}', *where)
    assert code == 0, err
    sent = json.loads(out)
    assert (sent["room"], sent["event"], sent["seq"]) == ("lobby", "message", 1)
    assert sent["handle"]


# 7: devices add NAME


async def test_devices_add_writes_the_key_beside_the_key_file(server_address: str, tmp_path: Path) -> None:
    keys, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    elsewhere.mkdir()
    key_file = keys / "ann.json"
    await register(server_address, key_file, "ann")
    code, out, err = await cli(
        "devices", "add", "My Phone", "--addr", server_address, "--key-file", str(key_file), cwd=elsewhere
    )
    assert code == 0, err
    phone_file = keys / "ann-my-phone.json"
    assert str(phone_file) in out
    assert stat.S_IMODE(phone_file.stat().st_mode) == 0o600
    assert list(elsewhere.iterdir()) == []
    phone = DeviceIdentity.load(phone_file)
    assert (phone.display_name, phone.registered) == ("My Phone", True)

    code, out, err = await cli("whoami", "--addr", server_address, "--key-file", str(phone_file))
    assert code == 0, err
    assert f"My Phone  {phone.device_id} (this device)" in out

    code, out, err = await cli("devices", "add", "my phone", "--addr", server_address, "--key-file", str(key_file))
    assert code == 0, err  # a rerun: that device is there already
    assert out.startswith(f"device my phone already added ({phone.device_id})")
    code, out, _ = await cli("devices", "--addr", server_address, "--key-file", str(key_file))
    assert len(out.splitlines()) == 2  # the rerun registered nothing

    DeviceIdentity.generate("someone-else").save(phone_file)  # a key file that is not this user's device
    code, _, err = await cli("devices", "add", "my phone", "--addr", server_address, "--key-file", str(key_file))
    assert code == 1
    assert f"{phone_file} already exists" in err


# 8: people, keys and usernames


async def test_whoami_is_human_readable(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "ann.json"
    await register(server_address, key_file, "ann")
    me = DeviceIdentity.load(key_file)
    code, out, err = await cli("whoami", "--addr", server_address, "--key-file", str(key_file))
    assert code == 0, err
    assert out.splitlines()[0] == f"ann  (user {me.user_id})"
    assert f"laptop  {me.device_id} (this device)" in out
    assert b64(me.user_public_key) in out
    assert b64(me.device_signing_key.verify_key.encode()) in out
    assert b64(me.device_dh_key.public_key.encode()) in out
    assert "\\" not in out  # no escaped bytes

    code, out, err = await cli("whoami", "--json", "--addr", server_address, "--key-file", str(key_file))
    assert code == 0, err
    profile = json.loads(out)
    assert (profile["username"], profile["user_id"], profile["device_id"]) == ("ann", me.user_id, me.device_id)
    assert [d["name"] for d in profile["devices"]] == ["laptop"]


async def test_user_show_by_name_or_id(server_address: str, tmp_path: Path) -> None:
    await register(server_address, tmp_path / "ann.json", "ann")
    await register(server_address, tmp_path / "ben.json", "ben")
    ann = DeviceIdentity.load(tmp_path / "ann.json")
    for who in ("ann", ann.user_id):
        code, out, err = await cli(
            "user", "show", who, "--addr", server_address, "--key-file", str(tmp_path / "ben.json")
        )
        assert code == 0, err
        assert out.splitlines()[0] == f"ann  (user {ann.user_id})"
        assert f"laptop  {ann.device_id}" in out
        assert "this device" not in out


async def test_usernames_next_to_user_ids(server_address: str, tmp_path: Path) -> None:
    await register(server_address, tmp_path / "ann.json", "ann")
    await register(server_address, tmp_path / "ben.json", "ben")
    ann = DeviceIdentity.load(tmp_path / "ann.json")
    as_ann = ("--addr", server_address, "--key-file", str(tmp_path / "ann.json"))
    as_ben = ("--addr", server_address, "--key-file", str(tmp_path / "ben.json"))
    code, _, err = await cli("rooms", "create", "lobby", *as_ann)
    assert code == 0, err
    code, out, err = await cli("rooms", "list", *as_ben)
    assert code == 0, err
    assert f"ann ({ann.user_id})" in out

    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.cli.main", "listen", "lobby", *as_ben, stdout=asyncio.subprocess.PIPE
    )
    subscriber = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley.cli.main", "sub", "presence:*", *as_ben, stdout=asyncio.subprocess.PIPE
    )
    try:
        for process in (listener, subscriber):
            await json_line(process)  # ready
        code, _, err = await cli("send", "lobby", "message", '{"text": "hi"}', *as_ann)
        assert code == 0, err
        code, _, err = await cli("pub", "presence:lobby", "1", *as_ann)
        assert code == 0, err
        for process in (listener, subscriber):
            line = await json_line(process)
            assert (line["sender"], line["sender_username"]) == (ann.user_id, "ann")
    finally:
        for process in (listener, subscriber):
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def json_line(process: asyncio.subprocess.Process) -> dict[str, object]:
    assert process.stdout is not None
    parsed: dict[str, object] = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
    return parsed


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# 9 (part 7): a failed registration never locks the user out


async def test_a_rejected_registration_writes_no_key_file(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "me.json"
    where = ("--addr", server_address, "--key-file", str(key_file))
    await register(server_address, tmp_path / "other.json", "taken")
    for username, reason in (("No!", "VALIDATION_FAILED"), ("taken", "USERNAME_TAKEN")):
        code, _, err = await cli("user", "register", username, *where)
        assert code == 1
        assert err.startswith(f"error: {reason}: "), err
        assert not key_file.exists()
    code, _, _ = await cli("user", "register", "mel", *("--addr", f"127.0.0.1:{closed_port()}"), *where[2:])
    assert code == 1
    assert not key_file.exists()

    code, out, err = await cli("user", "register", "mel", "--device-name", "laptop", *where)
    assert code == 0, err
    assert out.startswith("registered mel (u")
    assert DeviceIdentity.load(key_file).registered
    code, out, err = await cli("whoami", *where)
    assert (code, out.splitlines()[0].split()[0]) == (0, "mel"), err


async def test_an_unfinished_registration_is_finished_or_discarded(server_address: str, tmp_path: Path) -> None:
    key_file = tmp_path / "me.json"
    where = ("--addr", server_address, "--key-file", str(key_file))

    # Keys kept after an unknown outcome that never reached the server: another name may be chosen.
    DeviceIdentity.generate("typo").save(key_file)
    code, out, err = await cli("user", "register", "meant", *where)
    assert code == 0, err
    assert DeviceIdentity.load(key_file).username == "meant"

    # Keys kept after an unknown outcome that did reach the server: another name is refused...
    accepted = DeviceIdentity.generate("lost-reply")
    async with Client(server_address, identity=accepted):
        pass
    accepted.registered = False
    accepted.save(key_file)
    code, _, err = await cli("user", "register", "other", *where)
    assert code == 1
    assert "belongs to 'lost-reply' (registered earlier), not 'other'" in err
    assert DeviceIdentity.load(key_file).registered

    # ...and the same name finishes it.
    accepted.save(key_file)
    code, out, err = await cli("user", "register", "lost-reply", *where)
    assert code == 0, err
    assert out.startswith("registered lost-reply")
    assert DeviceIdentity.load(key_file).registered
