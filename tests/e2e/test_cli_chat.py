"""`parley chat` on a pseudo-terminal against a real server: refusals, read-only rooms, restarts, Ctrl-C,
a prompt that incoming lines never overwrite, history, presence and payloads."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley import Client
from services import allinone
from services.runtime.config import Config, EventDefinition, HistorySettings, RoomDefinition
from tests.support import make_config, running, sigint_as_from_a_terminal

KEPT = HistorySettings(enabled=True)
SHORT_TEXT = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 5}},
    "required": ["text"],
}
ROOMS = [
    RoomDefinition(id="lobby", events=[EventDefinition(name="*", history=KEPT)], sync_history_on_join=10),
    RoomDefinition(id="terse", events=[EventDefinition(name="message", schema=SHORT_TEXT, history=KEPT)]),
    RoomDefinition(id="news", events=[]),
]
# Escape sequences (CSI, OSC, charset and keypad modes) and carriage returns: what is left is the text shown.
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")
CLOCK = r"\d\d:\d\d:\d\d"
CTRL_C, CTRL_D = "\x03", "\x04"


def cli_argv(address: str, key_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "parley.cli.main", "--addr", address, "--key-file", str(key_file), *args]


def cli_env() -> dict[str, str]:
    # No terminal answers the cursor position requests here; a real one does.
    return {**os.environ, "PARLEY_ADDR": "", "PARLEY_KEY_FILE": "", "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}


class Terminal:
    """A command on a pseudo-terminal: what it shows (without escape sequences) and what is typed into it."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self._master = master
        self._raw = b""
        self._seen = 0
        self._changed = asyncio.Event()
        self._closed = False
        asyncio.get_running_loop().add_reader(master, self._read)

    @classmethod
    async def start(cls, argv: list[str]) -> Terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        # Not its controlling terminal: making it one takes Python code between fork and exec, unsafe
        # beside gRPC's threads. The keys that matter (Ctrl-C, Ctrl-D) reach the prompt as keys anyway.
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=slave, stdout=slave, stderr=slave, env=cli_env(), start_new_session=True
        )
        os.close(slave)
        return cls(process, master)

    def _read(self) -> None:
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: the command has closed its side
            chunk = b""
        if not chunk:
            self._stop_reading()
        self._raw += chunk
        self._changed.set()

    def _stop_reading(self) -> None:
        if not self._closed:
            self._closed = True
            asyncio.get_running_loop().remove_reader(self._master)

    @property
    def shown(self) -> str:
        return ESCAPES.sub("", self._raw.decode(errors="replace"))

    async def expect(self, pattern: str, within: float = 20.0, *, consume: bool = True) -> re.Match[str]:
        """The next match of `pattern` (a regex, "." matching newlines too) after the previous one; the one
        after that is looked for after this one, unless `consume` is False."""
        deadline = time.monotonic() + within
        while True:
            match = re.compile(pattern, re.DOTALL).search(self.shown, self._seen)
            if match is not None:
                self._seen = match.end() if consume else self._seen
                return match
            if self._closed or time.monotonic() > deadline:
                shown = self.shown[self._seen :]
                raise AssertionError(f"{pattern!r} not shown (exit {self.process.returncode}); it shows:\n{shown}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

    def type(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    async def type_at_prompt(self, prompt: str, keys: str) -> None:
        """Types once the prompt is drawn (again) after what was shown last: before, the terminal is not yet
        in the prompt's raw mode, and it would take Ctrl-C and Ctrl-D itself."""
        await self.expect(f"{prompt}>")
        self.type(keys)

    async def exit_code(self, within: float = 10.0) -> int:
        return await asyncio.wait_for(self.process.wait(), within)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._stop_reading()
        os.close(self._master)


class Chatters:
    """ann and ben, registered on a server; ben chats from a terminal, ann talks through the SDK."""

    def __init__(self, address: str, keys: Path) -> None:
        self.address = address
        self.keys = keys

    async def register(self) -> None:
        for name in ("ann", "ben"):
            async with Client(self.address, username=name, key_file=self.keys / f"{name}.json"):
                pass

    def ann(self) -> Client:
        return Client(self.address, key_file=self.keys / "ann.json")

    @contextlib.asynccontextmanager
    async def ben_chats(self, room_id: str) -> AsyncIterator[Terminal]:
        terminal = await Terminal.start(cli_argv(self.address, self.keys / "ben.json", "chat", room_id))
        try:
            await terminal.expect(f"in {room_id} as ben; type to talk")
            # The prompt may be drawn before the history is printed above it.
            await terminal.expect(f"{room_id}>", consume=False)
            yield terminal
        finally:
            await terminal.close()

    async def texts(self, room_id: str) -> list[object]:
        async with self.ann() as ann:
            return [event.data for event in reversed(await ann.history(room_id, limit=100))]


def chat_config(data_dir: Path, port: int = 0) -> Config:
    return make_config(data_dir, rooms=ROOMS, **{"server.port": port})


@pytest.fixture
async def chatters(data_dir: Path, tmp_path: Path) -> AsyncIterator[Chatters]:
    async with running(allinone.create_server, chat_config(data_dir)) as (_, address):
        people = Chatters(address, tmp_path)
        await people.register()
        yield people


async def test_a_refused_line_prints_why_and_the_chat_goes_on(chatters: Chatters) -> None:
    async with chatters.ben_chats("terse") as chat:
        chat.type("far too long\r")
        await chat.expect(rf"{CLOCK} -- not sent 'far too long': VALIDATION_FAILED: [^\n]*payload\.text")
        await chat.type_at_prompt("terse", "short\r")
        await chat.expect(rf"{CLOCK} ben: short\n")
        await chat.type_at_prompt("terse", CTRL_D)
        assert await chat.exit_code() == 0
    assert await chatters.texts("terse") == [{"text": "short"}]


async def test_a_read_only_room_says_so_on_join_and_refuses_lines(chatters: Chatters) -> None:
    async with chatters.ben_chats("news") as chat:
        # Said before the first prompt.
        assert re.search(rf"in news as ben[^\n]*\n{CLOCK} -- read-only: you can read, not write\n", chat.shown)
        chat.type("hello\r")
        await chat.expect(r"-- not sent 'hello': EVENT_NOT_ALLOWED: room 'news' is read-only")
        await chat.type_at_prompt("news", CTRL_D)
        assert await chat.exit_code() == 0


async def test_lines_typed_while_the_server_is_down_go_out_once_it_is_back(data_dir: Path, tmp_path: Path) -> None:
    server, port = await allinone.create_server(chat_config(data_dir))
    chatters = Chatters(f"127.0.0.1:{port}", tmp_path)
    try:
        await chatters.register()
        async with chatters.ben_chats("lobby") as chat:
            chat.type("before\r")
            await chat.expect(rf"{CLOCK} ben: before\n")
            await server.stop(0)
            await chat.expect(r"-- connection lost — reconnecting…")
            await chat.type_at_prompt("lobby", "while away\r")
            await chat.expect(r"-- queued 'while away': it goes out once the connection is back")
            server, _ = await allinone.create_server(chat_config(data_dir, port))
            await chat.expect(r"-- reconnected\n", within=30)
            await chat.expect(rf"{CLOCK} ben: while away\n")
            await chat.type_at_prompt("lobby", CTRL_D)
            assert await chat.exit_code() == 0
        assert await chatters.texts("lobby") == [{"text": "before"}, {"text": "while away"}]
    finally:
        await server.stop(0)


async def test_ctrl_c_leaves_at_once_without_a_traceback(chatters: Chatters) -> None:
    async with chatters.ben_chats("lobby") as chat:
        chat.type("half a thou")
        await chat.expect("half a thou")
        started = time.monotonic()
        chat.type(CTRL_C)
        assert await chat.exit_code(within=5) == 130
        assert time.monotonic() - started < 3
        assert "Traceback" not in chat.shown
    assert await chatters.texts("lobby") == []


async def test_ctrl_c_leaves_a_piped_chat_at_once(chatters: Chatters) -> None:
    process = await asyncio.create_subprocess_exec(
        *cli_argv(chatters.address, chatters.keys / "ben.json", "chat", "lobby"),
        stdin=asyncio.subprocess.PIPE,  # kept open: the chat waits for input when interrupted
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
        preexec_fn=sigint_as_from_a_terminal,
    )
    assert process.stdout is not None
    try:
        intro = await asyncio.wait_for(process.stdout.readline(), 20)
        assert intro.startswith(b"in lobby as ben")
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 5)
        assert process.returncode == 130
        assert b"Traceback" not in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_incoming_lines_never_overwrite_the_line_being_typed(chatters: Chatters) -> None:
    async with chatters.ann() as ann:
        room = await ann.join("lobby")
        async with chatters.ben_chats("lobby") as chat:
            chat.type("half-typ")
            await chat.expect("half-typ")
            await room.trigger("message", {"text": "from ann"})
            # The incoming line is printed above the prompt, which is drawn again with what was typed.
            await chat.expect(rf"{CLOCK} ann: from ann\n.*lobby>\s*half-typ")
            chat.type("ed\r")
            await chat.expect(rf"{CLOCK} ben: half-typed\n")
    assert await chatters.texts("lobby") == [{"text": "from ann"}, {"text": "half-typed"}]


async def test_history_then_a_divider_then_live_lines_with_times_and_presence(chatters: Chatters) -> None:
    async with chatters.ann() as ann:
        room = await ann.join("lobby")
        for text in ("one", "two"):
            await room.trigger("message", {"text": text})
        await room.leave()
        async with chatters.ben_chats("lobby") as chat:
            await chat.expect(
                rf"{CLOCK} ann: one\n{CLOCK} ann: two\n──── 2 earlier messages above · live from here ────"
            )
            room = await ann.join("lobby")
            await chat.expect(rf"{CLOCK} -- ann joined\n")
            await room.trigger("message", {"text": "three"})
            await chat.expect(rf"{CLOCK} ann: three\n")
            await room.leave()
            await chat.expect(rf"{CLOCK} -- ann left\n")
            assert chat.shown.count("earlier messages above") == 1


async def test_non_text_payloads_are_shown_as_json(chatters: Chatters) -> None:
    async with chatters.ann() as ann:
        room = await ann.join("lobby")
        async with chatters.ben_chats("lobby") as chat:
            await room.trigger("message", {"n": 1})
            await chat.expect(rf'{CLOCK} ann: {{"n":1}}\n')
            await room.trigger("message", ["a", {"text": "b"}])
            await chat.expect(rf'{CLOCK} ann: \["a",{{"text":"b"}}\]\n')
            await room.trigger("message", {"text": 7})
            await chat.expect(rf'{CLOCK} ann: {{"text":7}}\n')
            await room.trigger("message", {"text": "bell\x07"})
            await chat.expect(rf"{CLOCK} ann: bell\\x07\n")


async def test_piped_lines_are_sent_and_the_chat_ends_with_the_input(chatters: Chatters) -> None:
    process = await asyncio.create_subprocess_exec(
        *cli_argv(chatters.address, chatters.keys / "ben.json", "chat", "terse"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(b"hi\n\nway too long\nbye"), 30)
    assert process.returncode == 0, err
    assert "not sent 'way too long': VALIDATION_FAILED" in out.decode()
    assert await chatters.texts("terse") == [{"text": "hi"}, {"text": "bye"}]
    assert out.decode().startswith("in terse as ben")


async def test_a_deleted_room_ends_the_chat(chatters: Chatters) -> None:
    async with chatters.ann() as ann:
        await ann.create_room("brief")
        async with chatters.ben_chats("brief") as chat:
            await ann.delete_room("brief")
            assert await chat.exit_code() == 1
            await chat.expect("error: left brief: the room ended, or the connection gave up")
            assert "Traceback" not in chat.shown
