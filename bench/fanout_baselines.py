"""The fan-out benchmark's baselines, run in the same invocation as Parley.

- python-socketio: `python -m bench.socketio_server` (an AsyncServer on
  aiohttp, see there) in a child process; subscribers join rooms with an ack,
  the publisher emits with an ack.
- nats-server: Debian's /usr/sbin/nats-server, core NATS without JetStream,
  on a port of its own (`-p -1`: it picks a free one and says which); nats-py
  clients, each on its own connection. The ceiling: a server written for
  fan-out, in Go, doing no more than routing.
- the grpc.aio floor: `python -m bench.grpc_floor_server` (see there) in a
  child process: one bidi stream per connection of raw frames, join and
  publish each acknowledged, one message per event per member. The least a
  grpc.aio server does for the same client behaviour: what grpc.aio's own
  per-message cost leaves to any server built on it, Parley's included.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.fanout_publishers import GrpcFloorPublisher, NatsPublisher, Publisher, SocketIOPublisher
from bench.fanout_systems import ServerGroup
from bench.server_process import ProcessGroups, ServerProcess

NATS_SERVER = "/usr/sbin/nats-server"
NATS_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
REPO_ROOT = Path(__file__).resolve().parents[1]


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def nats_server_version() -> str:
    try:
        return subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError as exc:
        return f"unavailable: {exc}"


async def start_nats_server(servers: ServerGroup, name: str, log_dir: Path) -> str:
    """A nats-server (no JetStream) on a free port of 127.0.0.1 in `servers`; its URL."""
    command = [NATS_SERVER, "-p", "-1", "-a", "127.0.0.1"]
    # SIGINT: nats-server stops as cleanly on SIGTERM but then exits 1.
    process = servers.start(name, command, log_dir, listening=NATS_LISTENING, stop_signal=signal.SIGINT)
    return f"nats://{await asyncio.to_thread(process.wait_for_address)}"


async def start_python_server(servers: ServerGroup, name: str, module: str, log_dir: Path) -> str:
    """`python -m <module> --port 0` in `servers` as `name`; the HOST:PORT it listens on."""
    command = [sys.executable, "-m", module, "--port", "0"]
    process: ServerProcess = servers.start(name, command, log_dir, cwd=REPO_ROOT)
    return await asyncio.to_thread(process.wait_for_address)


class NatsSystem:
    name = "nats"
    label = "nats-server"
    subscriber_kind = "nats"

    def __init__(self, log_dir: Path, groups: ProcessGroups) -> None:
        self._log_dir = log_dir
        self.servers = ServerGroup(groups)
        self._url = ""

    async def start(self) -> None:
        self._url = await start_nats_server(self.servers, "nats-server", self._log_dir)

    async def subscriber_specs(self, count: int) -> list[dict[str, str]]:
        return [{"address": self._url, "user": f"sub{i}"} for i in range(count)]

    def publisher(self, room: str, index: int) -> Callable[[], Awaitable[Publisher]]:
        return lambda: NatsPublisher.open(self._url, room, f"pub{index}")

    async def stop(self) -> dict[str, int | None]:
        return self.servers.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "server": f"{NATS_SERVER} -p -1 -a 127.0.0.1 (core NATS, no JetStream)",
            "server_version": nats_server_version(),
            "client_library": f"nats-py {version('nats-py')}",
            "subscriber": "a nats-py client per subscriber, its own connection, named for its user; "
            "joining is SUB then a PING answered after it",
            "publisher": "nats-py core publish, one per message; core NATS has no per-message reply, so the "
            "publisher reads none (a flush at the end); the others' publishers read every reply",
        }


class SocketIOSystem:
    name = "socketio"
    label = "python-socketio"
    subscriber_kind = "socketio"

    def __init__(self, log_dir: Path, groups: ProcessGroups) -> None:
        self._log_dir = log_dir
        self.servers = ServerGroup(groups)
        self._address = ""

    async def start(self) -> None:
        self._address = await start_python_server(self.servers, "socketio", "bench.socketio_server", self._log_dir)

    async def subscriber_specs(self, count: int) -> list[dict[str, str]]:
        return [{"address": self._address, "user": f"sub{i}"} for i in range(count)]

    def publisher(self, room: str, index: int) -> Callable[[], Awaitable[Publisher]]:
        return lambda: SocketIOPublisher.open(self._address, room, f"pub{index}")

    async def stop(self) -> dict[str, int | None]:
        return self.servers.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "server": "python -m bench.socketio_server --port 0 (AsyncServer, async_mode=aiohttp)",
            "versions": {name: version(name) for name in ("python-socketio", "python-engineio", "aiohttp")},
            "subscriber": "bare Engine.IO v4 / Socket.IO v5 client on an aiohttp websocket, its user named in "
            "the CONNECT; joining is a 'join' event with an ack (the server's enter_room)",
            "publisher": "socketio.AsyncClient.call('publish', (room, payload)): one emit with an ack per message",
        }


class GrpcFloorSystem:
    name = "grpc_floor"
    label = "grpc.aio floor"
    subscriber_kind = "grpc_floor"

    def __init__(self, log_dir: Path, groups: ProcessGroups) -> None:
        self._log_dir = log_dir
        self.servers = ServerGroup(groups)
        self._address = ""

    async def start(self) -> None:
        self._address = await start_python_server(self.servers, "grpc_floor", "bench.grpc_floor_server", self._log_dir)

    async def subscriber_specs(self, count: int) -> list[dict[str, str]]:
        return [{"address": self._address, "user": f"sub{i}"} for i in range(count)]

    def publisher(self, room: str, index: int) -> Callable[[], Awaitable[Publisher]]:
        return lambda: GrpcFloorPublisher.open(self._address, room)

    async def stop(self) -> dict[str, int | None]:
        return self.servers.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "server": "python -m bench.grpc_floor_server --port 0 (grpc.aio, a generic handler on raw bytes: "
            "one bidi stream per connection, a queue per stream drained by its handler, one message per event)",
            "versions": {"grpcio": version("grpcio")},
            "subscriber": "a /floor.Floor/Connect stream on its own grpc.aio channel (local subchannel pool); "
            "joining is a join frame, ready at its ack; no users",
            "publisher": "a publish frame on its own stream, one per message, its ack awaited",
        }
