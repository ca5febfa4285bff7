"""Where `parley chat` reads lines: a prompt on a terminal, plain lines from a pipe or a file.

On a terminal the prompt (prompt_toolkit) stays below whatever is printed
meanwhile, and what is half typed is drawn again after each incoming line.
Elsewhere (tests, scripts) stdin is read line by line as it comes.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout


class LineInput(Protocol):
    def screen(self) -> contextlib.AbstractContextManager[object]:
        """While entered, printing does not disturb the input."""

    def lines(self) -> AsyncIterator[str]:
        """Each line entered, without its line end, until end of input (Ctrl-D).

        Ctrl-C on a terminal raises KeyboardInterrupt.
        """


def line_input(prompt: str) -> LineInput:
    if sys.stdin.isatty() and sys.stdout.isatty():
        return TerminalInput(prompt)
    return PipedInput(sys.stdin.fileno())


class TerminalInput:
    def __init__(self, prompt: str) -> None:
        self._prompt = prompt
        # The accepted line is wiped: it shows again, stamped, once the server has it.
        self._session: PromptSession[str] = PromptSession(erase_when_done=True)

    def screen(self) -> contextlib.AbstractContextManager[object]:
        return patch_stdout(raw=True)

    async def lines(self) -> AsyncIterator[str]:
        while True:
            try:
                yield await self._session.prompt_async(self._prompt)
            except EOFError:
                return


class PipedInput:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def screen(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    async def lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[str | None] = asyncio.Queue()

        def hand_over(line: str | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads any more
                loop.call_soon_threadsafe(arrived.put_nowait, line)

        # A daemon thread, not the loop's executor: a read that never returns
        # must not hold up leaving after Ctrl-C.
        reader = threading.Thread(
            target=lambda: _read_lines(self._fd, hand_over), name="parley-chat-stdin", daemon=True
        )
        reader.start()
        while (line := await arrived.get()) is not None:
            yield line


def _read_lines(fd: int, hand_over: Callable[[str | None], None]) -> None:
    for line in _split_lines(fd):
        hand_over(line)
    hand_over(None)


def _split_lines(fd: int) -> Iterator[str]:
    # os.read, not sys.stdin: this thread may still be blocked in it when the
    # interpreter exits, and sys.stdin's buffer lock would then be held.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        pending += decoder.decode(chunk, final=not chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line.removesuffix("\r")
        if not chunk:
            break
    if pending:
        yield pending
