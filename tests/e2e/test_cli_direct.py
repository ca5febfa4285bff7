"""`parley dm`, `inbox`, `safety-number` and `trust` against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from parley import Client, DeviceIdentity
from parley.cli.parser import build_parser

pytestmark = pytest.mark.timeout(60)

DIGITS = re.compile(r"\d{5}(?: \d{5}){11}")
TIME = r"\[\d\d:\d\d:\d\d\]"
DIRECT_COMMANDS = [["dm"], ["inbox"], ["safety-number"], ["trust"]]


async def parley(*args: str, key_file: Path, address: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.cli.main",
        *args,
        "--addr",
        address,
        "--key-file",
        str(key_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**_without_parley_settings(), **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _without_parley_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}


async def register(address: str, key_file: Path, username: str) -> str:
    async with Client(address, username=username, key_file=key_file, device_name="laptop") as client:
        return client.user_id


async def ready_for_direct_messages(address: str, key_file: Path) -> None:
    """A first `parley inbox` publishes the device's keys; until then nobody can write to it."""
    code, out, err = await parley("inbox", "--wait", "0.5", key_file=key_file, address=address)
    assert (code, out) == (0, "no new messages\n"), err


async def pin_a_wrong_key(address: str, key_file: Path, user_id: str) -> None:
    """As if the user's key had been replaced since this device pinned it."""
    async with Client(address, key_file=key_file) as client:
        parts = await client._direct.ready()
        parts.trust.pin_user_key(user_id, b"\x01" * 32)
        await parts.state.persist()


def safety_digits(out: str) -> str:
    found: list[str] = DIGITS.findall(out)
    assert len(found) == 1, out
    return found[0]


@pytest.mark.parametrize("command", DIRECT_COMMANDS, ids=" ".join)
def test_every_direct_message_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: parley {command[0]}")
    assert "PARLEY_KEYSTORE_PASSPHRASE" in out
    assert "--addr" in out
    assert "--key-file" in out


@pytest.mark.parametrize("wait", ["0", "-1", "soon", "nan", "inf"])
def test_inbox_refuses_a_wait_that_is_no_positive_number(wait: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["inbox", "--wait", wait])
    assert exited.value.code == 2
    assert "--wait" in capsys.readouterr().err


async def test_a_message_is_shown_once_then_the_inbox_is_empty(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ready_for_direct_messages(server_address, ben_key)

    code, out, err = await parley("dm", "ben", "hello ben", key_file=ann_key, address=server_address)
    assert (code, out, err) == (0, "sent to ben (1 device)\n", "")
    async with Client(server_address, key_file=ann_key) as ann:  # a payload that is not {"text": …}
        ben = await ann.get_user("ben")
        await ann.message.send(f"user:{ben.user_id}", {"poll": ["tea", "coffee"]})

    code, out, err = await parley("inbox", key_file=ben_key, address=server_address)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert re.fullmatch(rf"{TIME} ann: hello ben", lines[0]), out
    assert re.fullmatch(rf'{TIME} ann: {{"poll":\["tea","coffee"\]}}', lines[1]), out

    code, out, err = await parley("inbox", "--wait", "1", key_file=ben_key, address=server_address)
    assert (code, out) == (0, "no new messages\n"), err


async def test_your_other_devices_get_a_copy(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    code, _, err = await parley("devices", "add", "phone", key_file=ann_key, address=server_address)
    assert code == 0, err
    phone_key = tmp_path / "ann-phone.json"
    for key_file in (ben_key, phone_key):
        await ready_for_direct_messages(server_address, key_file)

    code, out, err = await parley("dm", "ben", "lunch?", key_file=ann_key, address=server_address)
    assert (code, out) == (0, "sent to ben (1 device, 1 of your other devices)\n"), err
    code, out, err = await parley("inbox", key_file=phone_key, address=server_address)
    assert code == 0, err
    assert re.fullmatch(rf"{TIME} you → ben: lunch\?\n", out), out


async def test_dm_to_someone_who_cannot_get_it_fails_clearly(server_address: str, tmp_path: Path) -> None:
    ann_key = tmp_path / "ann.json"
    await register(server_address, ann_key, "ann")
    code, out, err = await parley("dm", "nobody", "hi", key_file=ann_key, address=server_address)
    assert (code, out, err) == (1, "", "error: USER_NOT_FOUND: no user named 'nobody'\n")

    await register(server_address, tmp_path / "cyd.json", "cyd")  # never ran a direct-message command
    code, out, err = await parley("dm", "cyd", "hi", key_file=ann_key, address=server_address)
    assert (code, out) == (1, "")
    assert err.startswith("error: not sent: no device of cyd can receive direct messages yet;"), err
    assert "parley inbox" in err


async def test_dm_takes_a_user_id_too(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    ben_id = await register(server_address, ben_key, "ben")
    await ready_for_direct_messages(server_address, ben_key)
    code, out, err = await parley("dm", ben_id, "by id", key_file=ann_key, address=server_address)
    assert (code, out) == (0, "sent to ben (1 device)\n"), err


async def test_both_sides_see_the_same_safety_number(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    code, from_ann, err = await parley("safety-number", "ben", key_file=ann_key, address=server_address)
    assert code == 0, err
    code, from_ben, err = await parley("safety-number", "ann", key_file=ben_key, address=server_address)
    assert code == 0, err
    assert safety_digits(from_ann) == safety_digits(from_ben)
    assert "compare it with ben in person" in from_ann
    assert "not the one you pinned" not in from_ann

    code, out, err = await parley("trust", "ben", key_file=ann_key, address=server_address)
    assert (code, out) == (1, ""), "no number compared: nothing trusted"
    assert err.startswith("error: compare first:"), err
    assert f"`parley trust ben {safety_digits(from_ann).replace(' ', '')}`" in err
    code, out, err = await parley("trust", "ben", safety_digits(from_ann), key_file=ann_key, address=server_address)
    assert code == 0, err
    assert out == f"trusted ben's current key; safety number: {safety_digits(from_ann)}\n"


async def test_a_changed_key_is_refused_until_trusted(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    ben_id = await register(server_address, ben_key, "ben")
    await ready_for_direct_messages(server_address, ben_key)
    await pin_a_wrong_key(server_address, ann_key, ben_id)

    code, out, err = await parley("dm", "ben", "hi", key_file=ann_key, address=server_address)
    assert (code, out) == (1, "")
    assert err.startswith("error: not sent: ben's user key changed since you first used it;"), err
    assert "`parley safety-number ben`" in err
    assert "`parley trust ben NUMBER`" in err
    assert len(err.splitlines()) == 1

    code, out, err = await parley("safety-number", "ben", key_file=ann_key, address=server_address)
    assert code == 0, err
    assert "ben's key is not the one you pinned on first use" in out
    pinned, presented = DIGITS.findall(out)
    assert pinned != presented
    code, _, err = await parley("trust", "ben", pinned, key_file=ann_key, address=server_address)
    assert code == 1
    assert err.startswith("error: not trusted: ben's key gives another number now"), err
    code, out, err = await parley("trust", "ben", presented, key_file=ann_key, address=server_address)
    assert code == 0, err
    assert out.startswith("trusted ben's current key; safety number: ")
    code, out, err = await parley("dm", "ben", "hi again", key_file=ann_key, address=server_address)
    assert (code, out) == (0, "sent to ben (1 device)\n"), err


async def test_messages_from_a_changed_key_wait_for_trust(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    ann_id = await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ready_for_direct_messages(server_address, ben_key)
    await pin_a_wrong_key(server_address, ben_key, ann_id)
    code, _, err = await parley("dm", "ben", "are you there?", key_file=ann_key, address=server_address)
    assert code == 0, err

    for attempt in ("first", "again"):  # kept aside on ben's device: every inbox says so until ben trusts ann
        code, out, err = await parley("inbox", "--wait", "1", key_file=ben_key, address=server_address)
        assert code == 0, err
        assert re.fullmatch(rf"{TIME} -- messages from ann are held: ann's user key changed .*\n", out), attempt
        assert "`parley trust ann NUMBER`" in out

    code, out, err = await parley("safety-number", "ann", key_file=ben_key, address=server_address)
    assert code == 0, err
    presented = DIGITS.findall(out)[-1]
    code, _, err = await parley("trust", "ann", presented, key_file=ben_key, address=server_address)
    assert code == 0, err
    code, out, err = await parley("inbox", "--wait", "1", key_file=ben_key, address=server_address)
    assert code == 0, err
    assert re.fullmatch(rf"{TIME} ann: are you there\?\n", out), out


async def test_a_sealed_key_store_needs_its_passphrase(server_address: str, tmp_path: Path) -> None:
    ben_key = tmp_path / "ben.json"
    await register(server_address, ben_key, "ben")
    sealed = {"PARLEY_KEYSTORE_PASSPHRASE": "correct horse"}
    code, out, err = await parley("inbox", "--wait", "0.5", key_file=ben_key, address=server_address, env=sealed)
    assert (code, out) == (0, "no new messages\n"), err
    store = tmp_path / "ben.e2e.json"
    assert "sealed" in json.loads(store.read_text())
    assert DeviceIdentity.load(ben_key).username == "ben"

    code, out, err = await parley("inbox", key_file=ben_key, address=server_address)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {store} is sealed with a passphrase (PARLEY_KEYSTORE_PASSPHRASE holds"), err
    wrong = {"PARLEY_KEYSTORE_PASSPHRASE": "wrong"}
    code, _, err = await parley("safety-number", "ben", key_file=ben_key, address=server_address, env=wrong)
    assert code == 1
    assert err.startswith(f"error: {store}: wrong passphrase"), err
