"""`parley rooms|listen|send|chat|pub|sub` against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley import Client
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.support import make_config, running


class Cli:
    def __init__(self, address: str, key_file: Path) -> None:
        self.address = address
        self.key_file = key_file

    def _argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "parley.cli.main",
            "--addr",
            self.address,
            "--key-file",
            str(self.key_file),
            *args,
        ]

    async def run(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *self._argv(*args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PARLEY_ADDR": "", "PARLEY_KEY_FILE": ""},
        )
        out, err = await asyncio.wait_for(process.communicate(stdin), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self._argv(*args), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )


async def read_json_line(process: asyncio.subprocess.Process) -> dict[str, object]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    parsed: dict[str, object] = json.loads(line)
    return parsed


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    await asyncio.wait_for(process.wait(), 10)


@pytest.fixture
async def setup(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[Cli, Cli]]:
    kept = RoomDefinition(id="kept", events=[EventDefinition(name="*", history=HistorySettings(enabled=True))])
    config = make_config(data_dir, rooms=[RoomDefinition(id="chat"), kept])
    async with running(allinone.create_server, config) as (_, address):
        for name in ("ann", "ben"):
            async with Client(address, username=name, key_file=tmp_path / f"{name}.json"):
                pass
        yield Cli(address, tmp_path / "ann.json"), Cli(address, tmp_path / "ben.json")


async def test_rooms_list_create_delete(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    code, out, err = await ann.run("rooms", "create", "games", "--name", "Games", "--max-size", "4")
    assert (code, out.strip()) == (0, "created room games"), err
    code, out, _ = await ann.run("rooms", "list")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["chat", "games", "kept"]
    assert "0/4" in lines[1]
    code, _, err = await ben.run("rooms", "delete", "games")
    assert code == 1
    assert "NOT_CREATOR" in err
    code, out, _ = await ann.run("rooms", "delete", "games")
    assert (code, out.strip()) == (0, "deleted room games")


async def test_listen_and_send(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    listener = await ben.start("listen", "chat", "--event", "message")
    try:
        ready = await read_json_line(listener)
        assert ready == {"listening": "chat", "subscriptions": ["message"]}
        code, out, err = await ann.run("send", "chat", "typing", "{}")
        assert code == 0, err
        code, out, err = await ann.run("send", "chat", "message", '{"text": "hello"}')
        assert code == 0, err
        assert json.loads(out)["seq"] == 2
        event = await read_json_line(listener)
        assert (event["event"], event["data"], event["seq"]) == ("message", {"text": "hello"}, 2)
    finally:
        await stop(listener)
    code, _, err = await ann.run("send", "chat", "message", "{not json")
    assert code != 0
    assert "not JSON" in err


async def test_pub_and_sub(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    subscriber = await ben.start("sub", "presence:*")
    try:
        assert await read_json_line(subscriber) == {"subscribed": "presence:*"}
        code, _, err = await ann.run("pub", "presence:lobby", '{"here": true}')
        assert code == 0, err
        message = await read_json_line(subscriber)
        assert (message["subject"], message["data"]) == ("presence:lobby", {"here": True})
    finally:
        await stop(subscriber)


async def test_chat(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    listener = await ann.start("listen", "chat")
    try:
        await read_json_line(listener)
        code, out, err = await ben.run("chat", "chat", stdin=b"hi there\n\nbye\n")
        assert code == 0, err
        assert out.startswith("in chat as ben")
        texts = [(await read_json_line(listener))["data"] for _ in range(2)]
        assert texts == [{"text": "hi there"}, {"text": "bye"}]
    finally:
        await stop(listener)


async def test_chat_shows_what_others_say(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    chat = await ben.start("chat", "chat")
    assert chat.stdout is not None
    assert chat.stdin is not None
    try:
        intro = await asyncio.wait_for(chat.stdout.readline(), 20)
        assert intro.decode().startswith("in chat as ben")
        for text in ("first", "second"):
            code, _, err = await ann.run("send", "chat", "message", json.dumps({"text": text}))
            assert code == 0, err
        shown: list[str] = []
        while len(shown) < 2:  # join and leave notices come between: each `parley send` joins and leaves
            line = (await asyncio.wait_for(chat.stdout.readline(), 20)).decode().strip()
            if "ann: " in line:
                shown.append(line.split(" ", 1)[1])  # after the time
        assert shown == ["ann: first", "ann: second"]
        chat.stdin.close()
        assert await asyncio.wait_for(chat.wait(), 20) == 0
    finally:
        await stop(chat)


async def test_history_prints_kept_events_newest_first(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    for n in range(4):
        code, _, err = await ann.run("send", "kept", "note" if n % 2 else "message", json.dumps({"n": n}))
        assert code == 0, err
    code, out, err = await ben.run("history", "kept", "--limit", "3")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["event"], line["data"], line["seq"]) for line in lines] == [
        ("note", {"n": 3}, 4),
        ("message", {"n": 2}, 3),
        ("note", {"n": 1}, 2),
    ]
    code, out, _ = await ben.run("history", "kept", "--event", "message", "--before", "3")
    assert [json.loads(line)["data"] for line in out.splitlines()] == [{"n": 0}]
    code, _, err = await ben.run("history", "kept", "--limit", "-2")
    assert code == 2
    assert "negative" in err


async def test_edit_and_delete_from_the_command_line(setup: tuple[Cli, Cli]) -> None:
    ann, ben = setup
    code, out, err = await ann.run("send", "kept", "message", '{"text": "typo"}')
    assert code == 0, err
    handle = json.loads(out)["handle"]
    code, out, err = await ben.run("edit", "kept", handle, '{"text": "not mine"}')
    assert code == 1
    assert "NOT_AUTHOR" in err
    code, out, err = await ann.run("edit", "kept", handle, '{"text": "fixed"}')
    assert code == 0, err
    assert json.loads(out)["data"] == {"text": "fixed"}
    code, out, _ = await ann.run("history", "kept", "--limit", "1")
    assert json.loads(out)["data"] == {"text": "fixed"}
    assert "edit_time_ms" in json.loads(out)
    code, out, err = await ann.run("delete", "kept", handle)
    assert code == 0, err
    assert json.loads(out)["deleted"] is True
    code, out, _ = await ann.run("history", "kept", "--limit", "1")
    assert json.loads(out)["deleted"] is True
