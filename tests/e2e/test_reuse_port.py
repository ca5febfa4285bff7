"""K gateway processes on one port (SO_REUSEPORT, `server.gateway_processes`), sharing the NATS bus."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley import Client
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services import launcher
from services.runtime.config import ConfigError, load_config
from services.runtime.server import require_port_sharing, server_options
from services.runtime.session_ids import gateway_of
from tests.scale_out import NATS_URL, SECRET, ScaleOut, fresh_database, scale_out
from tests.streams import Stream, payload_of
from tests.support import ServerProcess, bearer, make_config

SERVICE = bearer(f"svc:backend:{SECRET}")
ROOMS_TOML = """
[[rooms]]
id = "lobby"
"""
# Connections tried before giving up on reaching every process: a 2^-40 chance for two.
MAX_CONNECTIONS = 40

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ScaleOut]:
    """The services on PostgreSQL and NATS, and one `parley serve gateway` running two gateway processes."""
    with fresh_database() as storage_url, scale_out(tmp_path, ROOMS_TOML, gateways=0, storage_url=storage_url) as out:
        out.env["PARLEY_SERVER_GATEWAY_PROCESSES"] = "2"
        out.start("gateways", serve="gateway")
        yield out


async def test_two_gateway_processes_share_one_port_and_the_bus(cluster: ScaleOut, tmp_path: Path) -> None:
    pool = cluster.processes["gateways"]
    gateway_pids = children_of(pool.process.pid)
    assert len(gateway_pids) == 2
    tokens = [await registered(pool.address, tmp_path / f"{name}.json") for name in ("ann", "bob")]
    async with contextlib.AsyncExitStack() as stack:
        ann = await stack.enter_async_context(connect_until(pool.address, tokens[0], lambda gateway: True))
        bob = await stack.enter_async_context(connect_until(pool.address, tokens[1], lambda g: g != gateway(ann)))
        await ann.join("lobby")
        await bob.join("lobby")
        await ann.publish("lobby", "message", {"text": "across processes"})
        received = await bob.next_event()
        assert payload_of(received) == {"text": "across processes"}
        assert await sessions_by_gateway(pool.address) == {gateway(ann), gateway(bob)}
    assert await exclusive_bind_refused(pool.port)
    cluster.processes.pop("gateways").terminate()
    assert pool.process.returncode == 0
    assert [pid for pid in gateway_pids if alive(pid)] == []
    assert "Traceback" not in pool.output()


async def test_all_in_one_with_gateway_processes_stops_them_all_when_one_dies(tmp_path: Path) -> None:
    """`parley serve` with two gateway processes: the other services in the parent, each gateway
    serving health on the port; one gateway killed, the parent stops the other and exits 1."""
    env = {
        "PARLEY_BUS_URL": NATS_URL,
        "PARLEY_BUS_SUBJECT_PREFIX": f"t{secrets.token_hex(6)}",
        "PARLEY_SERVER_GATEWAY_PROCESSES": "2",
        "PARLEY_SERVER_GRACE_SECONDS": "1",
    }
    server = ServerProcess(["--port", "0", "--data-dir", str(tmp_path / "data")], env, tmp_path / "all.log")
    try:
        first, second = children_of(server.process.pid)
        token = await registered(server.address, tmp_path / "ann.json")
        async with (
            connect_until(server.address, token, lambda gateway: True) as one,
            connect_until(server.address, token, lambda g: g != gateway(one)),
        ):
            assert await serving(server.address)
        os.kill(first, signal.SIGKILL)
        assert server.process.wait(15) == 1
        assert not alive(second)
        assert f"error: gateway process 1 (pid {first}) exited with status -9; stopped the others" in server.output()
    finally:
        server.terminate()


def test_more_than_one_gateway_process_needs_a_nats_bus() -> None:
    with pytest.raises(ConfigError, match=r"server.gateway_processes = 2 needs bus.url"):
        load_config(overrides={"server.gateway_processes": 2})
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(overrides={"server.gateway_processes": 0})
    assert load_config(overrides={"server.gateway_processes": 2, "bus.url": NATS_URL}).server.gateway_processes == 2


async def test_gateway_processes_apply_only_to_the_gateway(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"server.gateway_processes": 2, "bus.url": NATS_URL})
    with pytest.raises(ConfigError, match="not identity"):
        await launcher.serve(config, "identity")


def test_port_sharing_is_refused_where_the_kernel_would_not_spread_connections(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_port_sharing()  # this Linux
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ConfigError, match=r"need SO_REUSEPORT on Linux: this platform \(darwin\)"):
        require_port_sharing()


def test_a_server_shares_its_port_only_when_asked(tmp_path: Path) -> None:
    assert ("grpc.so_reuseport", 0) in server_options(make_config(tmp_path))
    assert ("grpc.so_reuseport", 1) in server_options(make_config(tmp_path, **{"server.reuse_port": True}))


async def registered(address: str, key_file: Path) -> str:
    """A new user's access token."""
    async with Client(address, username=f"u{secrets.token_hex(4)}", key_file=key_file) as client:
        return await client.access_token()


@contextlib.asynccontextmanager
async def connect_until(address: str, token: str, wanted: Callable[[str], bool]) -> AsyncIterator[Stream]:
    """A Connect stream on its own TCP connection, opened again until `wanted(gateway id)` holds.

    Each try has a subchannel (and so a connection) of its own: channels to one
    address would otherwise share one, and reach one process.
    """
    for _ in range(MAX_CONNECTIONS):
        channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        opened = await Stream(channel, token).open()
        if wanted(gateway(opened)):
            try:
                yield opened
            finally:
                await opened.close()
                await channel.close(None)
            return
        await opened.close()
        await channel.close(None)
    raise AssertionError(f"no connection of {MAX_CONNECTIONS} reached the gateway wanted")


def gateway(stream: Stream) -> str:
    assert stream.welcome is not None
    return gateway_of(stream.welcome.session_id)


async def sessions_by_gateway(address: str) -> set[str]:
    """The gateways holding connections, as the backend API (asked of any one process) lists them."""
    async with grpc.aio.insecure_channel(address) as channel:
        api = gateway_pb2_grpc.GatewayServiceStub(channel)
        listed = await api.ListConnections(gateway_pb2.ListConnectionsRequest(), metadata=SERVICE)
    return {gateway_of(connection.session_id) for connection in listed.connections}


async def serving(address: str) -> bool:
    """Every one of several connections (so, in all likelihood, every process) answers SERVING."""
    answers = set()
    for _ in range(8):
        async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            answers.add(reply.status)
    return answers == {health_pb2.HealthCheckResponse.SERVING}


async def exclusive_bind_refused(port: int) -> bool:
    """A server without reuse_port cannot join the port the gateways share."""
    server = grpc.aio.server(options=server_options(make_config(Path("unused"))))
    try:
        return server.add_insecure_port(f"127.0.0.1:{port}") == 0
    except RuntimeError:
        return True
    finally:
        await server.stop(None)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
