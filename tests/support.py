"""Helpers shared by the tests: servers on ephemeral ports, subprocesses, grpcurl."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

import grpc

from parley.client import Client
from parley.identity.v1 import identity_pb2_grpc
from services import allinone
from services.runtime.config import Config, load_config
from services.runtime.server import ParleyServer

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors"
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"
LISTENING = re.compile(r"listening on (\S+):(\d+)")
SERVICE_SECRET = "test-service-secret"


def make_config(data_dir: Path, **overrides: Any) -> Config:
    """A config for in-process servers: port 0, quiet logs, a backend credential."""
    values: dict[str, Any] = {
        "server.host": "127.0.0.1",
        "server.port": 0,
        "server.data_dir": data_dir,
        "server.grace_seconds": 1.0,
        "auth.service_credentials": {"backend": SERVICE_SECRET},
        # Tests register many users from one address; test_registration_limit sets its own.
        "auth.registrations_per_minute": 10_000,
    }
    values.update(overrides)
    return load_config(overrides=values)


@contextlib.asynccontextmanager
async def running(factory: Any, config: Config, **kwargs: Any) -> AsyncIterator[tuple[ParleyServer, str]]:
    """Starts `factory(config)` (a create_server) and stops it afterwards."""
    server, port = await factory(config, **kwargs)
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def user_on_server(
    data_dir: Path, key_dir: Path, username: str, **settings: Any
) -> AsyncIterator[tuple[Client, identity_pb2_grpc.IdentityServiceAsyncStub]]:
    """An all-in-one server with `settings`, a logged-in user, and a raw identity stub."""
    async with running(allinone.create_server, make_config(data_dir, **settings)) as (_, address):
        async with Client(address, username=username, key_file=key_dir / f"{username}.json") as client:
            async with grpc.aio.insecure_channel(address) as channel:
                yield client, identity_stub(channel)


async def token_of(address: str, name: str, key_dir: Path) -> str:
    """An access token of user `name` (registered on first use, its key in `key_dir`)."""
    async with Client(address, username=name, key_file=key_dir / f"{name}.json") as client:
        return await client.access_token()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def identity_stub(channel: grpc.aio.Channel) -> identity_pb2_grpc.IdentityServiceAsyncStub:
    return identity_pb2_grpc.IdentityServiceStub(channel)  # type: ignore[return-value]


def error_reason(error: grpc.aio.AioRpcError) -> str:
    from parley.errors import error_from_rpc

    return error_from_rpc(error).reason


def grpcurl_command(address: str, *args: str, data: Any = None, headers: Mapping[str, str] | None = None) -> list[str]:
    command = [GRPCURL, "-plaintext"]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}: {value}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return [*command, address, *args]


def grpcurl(
    address: str, *args: str, data: Any = None, headers: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs grpcurl against a plaintext server in another process."""
    command = grpcurl_command(address, *args, data=data, headers=headers)
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


async def grpcurl_async(address: str, *args: str, data: Any = None) -> tuple[int, str, str]:
    """grpcurl against a server running in this test's event loop."""
    process = await asyncio.create_subprocess_exec(
        *grpcurl_command(address, *args, data=data), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def sigint_as_from_a_terminal() -> None:
    """A child's `preexec_fn` when a test sends it SIGINT for a terminal's Ctrl-C: SIGINT at its default
    action, though the tests may run with it ignored (started in the background: `nohup make test &`),
    which a child inherits (Python then never raises KeyboardInterrupt in it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProcess:
    """`parley serve ...` in a child process; its address is read from its output."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "a")  # noqa: SIM115
        full_env = {
            **os.environ,
            "PARLEY_LOGGING_LEVEL": "WARNING",
            "PARLEY_AUTH_REGISTRATIONS_PER_MINUTE": "10000",
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "parley.cli.main", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        self.address = self._wait_for_address()

    def _wait_for_address(self, timeout: float = 30.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
                continue
            self._log.write(line)
            match = LISTENING.search(line)
            if match:
                return f"127.0.0.1:{match.group(2)}"
        raise TimeoutError(f"server did not start: {self.log_path.read_text()[-2000:]}")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def terminate(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process.stdout is not None and not self.process.stdout.closed:  # not terminated before
            self._log.write(self.process.stdout.read())
            self.process.stdout.close()
            self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text()


class FakeClock:
    """A clock tests move by hand; call it for the time."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def wait_until(predicate: Any, within: float = 10.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def build_typescript_client() -> None:
    """Compiles @parley/client into clients/typescript/dist with its own pinned TypeScript (npm's workspace script).

    Tests that call it share the xdist group "typescript-build", so one build runs at a time."""
    subprocess.run(
        ["npm", "run", "--silent", "build", "--workspace", "@parley/client"], cwd=REPO, check=True, timeout=120
    )
