"""`parley serve --web-port`: the server and its gRPC-Web proxy, started and stopped together.

Envoy starts first (it needs the gRPC port, so a port of 0 is chosen here,
before either binds), then the server. When the server stops, Envoy is
stopped after it, so pages' streams end with the server's drain; when Envoy
exits on its own, the server is stopped and EnvoyFailed raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys

from services import launcher
from services.runtime.config import Config, ConfigError
from services.runtime.logs import setup_logging
from services.web_proxy.envoy_config import ProxyPlan, plan_for
from services.web_proxy.envoy_process import EnvoyProcess, envoy_version

# Browsers log in (identity), read history and talk (gateway): only the all-in-one port serves them all.
PROXIED_TARGET = "all"


async def serve_with_web_proxy(config: Config, which: str = PROXIED_TARGET) -> None:
    """Runs Parley and Envoy in front of it until SIGTERM/SIGINT (or until either stops)."""
    if which != PROXIED_TARGET:
        raise ConfigError(
            f"web.port: the gRPC-Web proxy runs beside `parley serve` (all services on one port), not "
            f"`parley serve {which}`; in split mode run Envoy yourself (`parley serve --print-web-config`)"
        )
    if config.server.gateway_processes > 1:
        raise ConfigError(
            "web.port: a page's Subscribe and SendCommand calls must reach one gateway process, and Envoy would "
            f"spread them over the {config.server.gateway_processes} behind the port; run one gateway process "
            "with --web-port"
        )
    setup_logging(config.logging)
    config = with_chosen_ports(config)
    envoy = await EnvoyProcess.start(plan_for(config))
    try:
        _announce(envoy.plan)
        await _serve_while_envoy_runs(config, envoy)
    finally:
        await envoy.stop()


def with_chosen_ports(config: Config) -> Config:
    """`config` with a free port in place of each 0 (server.port, web.port)."""
    assert config.web.port is not None
    web_host = config.web.host or config.server.host
    server = dataclasses.replace(config.server, port=config.server.port or free_port(config.server.host))
    web = dataclasses.replace(config.web, port=config.web.port or free_port(web_host))
    return dataclasses.replace(config, server=server, web=web)


def free_port(host: str) -> int:
    """A port nothing listens on at `host` now (the OS's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host.strip("[]"), 0))
        port: int = probe.getsockname()[1]
        return port


async def _serve_while_envoy_runs(config: Config, envoy: EnvoyProcess) -> None:
    server = asyncio.ensure_future(launcher.serve(config, PROXIED_TARGET))
    envoy_exit = asyncio.ensure_future(envoy.wait())
    try:
        await asyncio.wait({server, envoy_exit}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not server.done():
            server.cancel()  # the server's own stop (a graceful drain) still runs
            await asyncio.gather(server, return_exceptions=True)
        envoy_exit.cancel()
    if server.done() and not server.cancelled():
        server.result()  # the server's own error, if it had one
        return
    raise envoy.failure()


def _announce(plan: ProxyPlan) -> None:
    print(
        f"Parley gRPC-Web proxy (Envoy {envoy_version()}) at http://{plan.web_address} for {plan.backend_address}",
        file=sys.stdout,
        flush=True,
    )
