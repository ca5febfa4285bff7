"""The example web chat (examples/web) in headless Chromium, through Envoy, across a server restart.

The example is built once (`npm run build --workspace examples/web`) and its
dist/ served over HTTP from a thread; `parley serve --web-port` runs
examples/parley.toml, whose #chat keeps history, seeded here by a Python
client. examples/web/test/browser-chat.mjs (playwright-core driving
/usr/bin/chromium) opens two pages as two users: a message typed in one
appears in the other, each sees the other present; the server is restarted
on the same web port and data directory, the pages reconnect and resume,
and messages typed afterwards arrive, each shown once. The driver takes a
900x600 screenshot: docs/images/web-chat.png when that file is missing or
UPDATE_SCREENSHOTS=1 (it changes with the clock on every run),
otherwise into the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from parley import Client
from services.web_proxy.serving import free_port
from tests.support import REPO, ServerProcess

EXAMPLE = REPO / "examples" / "web"
DRIVER = EXAMPLE / "test" / "browser-chat.mjs"
CONFIG_FILE = REPO / "examples" / "parley.toml"
DOCS_SCREENSHOT = REPO / "docs" / "images" / "web-chat.png"
# Tests that build clients/typescript/dist run in one xdist worker, one after another (make test: -n 2).
pytestmark = pytest.mark.xdist_group("typescript-build")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HISTORY_TEXT = "welcome to #chat (sent from Python before the pages opened)"
STEP_TIMEOUT = 45.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def site() -> Path:
    """The example's static bundle, built once for the module."""
    assert shutil.which("npm"), "npm is not installed"
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (make install does)"
    built = subprocess.run(
        ["npm", "run", "build", "--workspace", "examples/web"], cwd=REPO, timeout=120, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return EXAMPLE / "dist"


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request on stderr."""


@contextlib.contextmanager
def serving(root: Path) -> Iterator[int]:
    """`root` over HTTP on a free port, from a thread; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def start_server(data_dir: Path, web_port: int, log: Path) -> ServerProcess:
    args = ["--config", str(CONFIG_FILE), "--port", "0", "--web-port", str(web_port), "--data-dir", str(data_dir)]
    return ServerProcess(args, {}, log)


async def seed_history(address: str, key_dir: Path) -> None:
    async with Client(address, username="carol", key_file=key_dir / "carol.json") as carol:
        room = await carol.join("chat")
        await room.trigger("message", {"text": HISTORY_TEXT})


def children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Playwright starts Chromium in a process group of its own)."""
    tree, found, todo = children_of(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def screenshot_path(tmp_path: Path) -> Path:
    if not DOCS_SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        return DOCS_SCREENSHOT
    return tmp_path / "web-chat.png"


class Driver:
    """browser-chat.mjs in a child process: JSON lines out, a line in when the server has restarted."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.browser_processes: set[int] = set()

    async def step(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT)
        self.browser_processes |= descendants(self.process.pid)
        if not raw:
            raise AssertionError(f"the driver ended early: {await self.errors()}")
        step: dict[str, Any] = json.loads(raw)
        return step

    async def go_on(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    async def finished(self) -> None:
        code = await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT)
        assert code == 0, await self.errors()

    async def errors(self) -> str:
        assert self.process.stderr is not None
        return (await asyncio.wait_for(self.process.stderr.read(), 5)).decode()

    async def stop(self) -> None:
        """Ends the driver (Playwright closes Chromium on SIGTERM), then whatever it left."""
        self.browser_processes |= descendants(self.process.pid)
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        kill_all(self.browser_processes)


@contextlib.asynccontextmanager
async def driver(page_url: str, screenshot: Path) -> AsyncIterator[Driver]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        page_url,
        str(screenshot),
        HISTORY_TEXT,
        cwd=EXAMPLE,
        env={**os.environ, "CHROMIUM": CHROMIUM},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Driver(process)
    try:
        yield running
    finally:
        await running.stop()


async def test_two_pages_chat_through_envoy_and_survive_a_server_restart(site: Path, tmp_path: Path) -> None:
    web_port = free_port("127.0.0.1")
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    screenshot = screenshot_path(tmp_path)
    server = start_server(data_dir, web_port, log)
    try:
        await seed_history(server.address, tmp_path)
        with serving(site) as site_port:
            page_url = f"http://127.0.0.1:{site_port}/index.html?server=http://127.0.0.1:{web_port}"
            async with driver(page_url, screenshot) as pages:
                assert await pages.step() == {"step": "restart"}
                assert server.terminate() == 0
                server = await asyncio.to_thread(start_server, data_dir, web_port, log)
                await pages.go_on()
                lines = await pages.step()
                assert await pages.step() == {"step": "done"}
                await pages.finished()
    finally:
        server.terminate()

    assert lines["alice"] == [
        HISTORY_TEXT,
        "hello bob, from alice's page",
        "hi alice",
        "still here after the restart",
        "so am I",
    ]  # in order, each once: history, live, and after the resume
    assert png_size(screenshot) == (900, 600)
    assert screenshot.stat().st_size < 200_000
