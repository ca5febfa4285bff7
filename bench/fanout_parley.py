"""Parley as the fan-out benchmark runs it: all-in-one, or the services and two gateways on NATS.

- `parley`: `parley serve`, every service in one process, the in-process bus,
  SQLite under a temporary data directory.
- `parley_2gw`: two gateway processes on a nats-server of the run's own
  (started here; its CPU is counted with the servers'), SQLite, in one of two
  layouts:
  - `reuseport` (the default): `parley serve --gateway-processes 2`, the
    other services in the parent process and two gateway processes sharing
    one port (SO_REUSEPORT: the kernel spreads the connections);
  - `ports`: the scale-out deployment of bench/scale_out_bench.py (its
    `launch`, `wait_for` and start order), `parley serve
    identity|history|room|file` and two `parley serve gateway` on two ports;
    subscriber i connects to gateway (i + 1) mod 2, so N=1's subscriber is on
    the gateway the publisher is not.
  Clients see only the list of gateway addresses (one or two).

Every subscriber and publisher is its own user, registered on a gateway: the
run lifts the per-address registration limit, makes access tokens last the
run (a subscriber's raw stream ends when its token does), and lifts the
per-user event rate limit and the outbound buffer bound.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.fanout_baselines import start_nats_server, version
from bench.fanout_publishers import ParleyPublisher, Publisher
from bench.fanout_systems import ServerGroup
from bench.fanout_wire import ROOM
from bench.server_process import ProcessGroups, parley_serve
from parley.client import Client
from parley.device_identity import DeviceIdentity

# Settings every Parley server of the fan-out and scale-out benchmarks runs with.
PARLEY_ENV = {
    "PARLEY_GATEWAY_EVENTS_PER_WINDOW": "100000000",
    "PARLEY_GATEWAY_MAX_OUTBOUND_BYTES": "67108864",
    "PARLEY_LOGGING_LEVEL": "WARNING",
}
FANOUT_PARLEY_ENV = {
    **PARLEY_ENV,
    "PARLEY_AUTH_REGISTRATIONS_PER_MINUTE": "1000000",
    "PARLEY_AUTH_ACCESS_TOKEN_TTL_SECONDS": "86400",
    "PARLEY_SERVER_GRACE_SECONDS": "1",
}
BENCH_TOML = f'[[rooms]]\nid = "{ROOM}"\n'
# After a room's table: every event of the room is kept (appended to the log before fan-out, as always, but stored).
HISTORY_EVENTS_TOML = '\n  [[rooms.events]]\n  name = "*"\n  history = { enabled = true }\n'
GATEWAY_LAYOUTS = ("reuseport", "ports")
GATEWAYS = 2
REGISTER_CONCURRENCY = 16
DEPLOYMENTS = {
    "": "parley serve (every service in one process), in-process bus, SQLite",
    "reuseport": f"parley serve --gateway-processes {GATEWAYS}: the services in one process, {GATEWAYS} gateway "
    "processes sharing one port (SO_REUSEPORT), SQLite, bus: a nats-server of this run's own",
    "ports": f"parley serve identity|history|room|file and {GATEWAYS} parley serve gateway on two ports, each its "
    "own process, SQLite files, bus: a nats-server of this run's own",
}


def rooms_toml(rooms: Sequence[str], keep_history: bool) -> str:
    return "\n".join(f'[[rooms]]\nid = "{room}"\n' + (HISTORY_EVENTS_TOML if keep_history else "") for room in rooms)


async def register(address: str) -> str:
    """A new user registered and logged in on `address`: its access token."""
    async with Client(address, identity=DeviceIdentity.generate(f"sub{secrets.token_hex(5)}")) as client:
        return await client.access_token()


class Users:
    """Subscribers' users, registered as they are first needed and reused by later scenarios."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def take(self, address: str, count: int) -> list[str]:
        gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

        async def one() -> str:
            async with gate:
                return await register(address)

        if count > len(self.tokens):
            self.tokens += await asyncio.gather(*(one() for _ in range(count - len(self.tokens))))
        return self.tokens[:count]


class ParleySystem:
    subscriber_kind = "parley"

    def __init__(
        self,
        log_dir: Path,
        groups: ProcessGroups,
        rooms: Sequence[str],
        *,
        keep_history: bool = False,
        gateway_layout: str = "",
    ) -> None:
        """`gateway_layout` "" is all-in-one, one process; "reuseport" or "ports" two gateway processes on NATS."""
        self.name = "parley_2gw" if gateway_layout else "parley"
        self.label = f"Parley, {GATEWAYS} gateway processes ({gateway_layout})" if gateway_layout else "Parley"
        self._log_dir = log_dir
        self._layout = gateway_layout
        self._keep_history = keep_history
        self._config = log_dir / "bench.toml"
        self._config.write_text(rooms_toml(rooms, keep_history))
        self.servers = ServerGroup(groups)
        self.gateways: list[str] = []
        self._users = Users()

    async def start(self) -> None:
        if not self._layout:
            command = parley_serve(self._log_dir / "data", "--config", str(self._config))
            process = self.servers.start("parley", command, self._log_dir, env=FANOUT_PARLEY_ENV)
            self.gateways = [await asyncio.to_thread(process.wait_for_address)]
            return
        bus = await start_nats_server(self.servers, "nats-bus", self._log_dir)
        if self._layout == "ports":
            await asyncio.to_thread(self._start_services_and_gateways, bus)
            return
        command = parley_serve(
            self._log_dir / "data", "--config", str(self._config), "--gateway-processes", str(GATEWAYS)
        )
        env = {**FANOUT_PARLEY_ENV, "PARLEY_BUS_URL": bus, "PARLEY_BUS_SUBJECT_PREFIX": f"fanout{secrets.token_hex(6)}"}
        process = self.servers.start("parley", command, self._log_dir, env=env)
        self.gateways = [await asyncio.to_thread(process.wait_for_address)]

    def _start_services_and_gateways(self, bus_url: str) -> None:
        # Imported here: bench.scale_out_bench imports bench.fanout_bench, which imports this module.
        from bench.scale_out_bench import SCALE_OUT_WAVES, launch, wait_for

        env = {
            **FANOUT_PARLEY_ENV,
            "PARLEY_BUS_URL": bus_url,
            "PARLEY_BUS_SUBJECT_PREFIX": f"fanout{secrets.token_hex(6)}",
            "PARLEY_AUTH_SERVICE_CREDENTIALS": f"parley={secrets.token_hex(16)}",
        }
        for wave in SCALE_OUT_WAVES:
            for name in wave:
                service = "gateway" if name.startswith("gateway") else name
                # Services believe the client address a gateway forwards; clients reach only gateways.
                trusted = "false" if service == "gateway" else "true"
                process = launch(
                    name, service, {**env, "PARLEY_SERVER_TRUST_FORWARDED_CLIENT": trusted}, self._config, self._log_dir
                )
                self.servers.add(process)
            for name in wave:
                address = wait_for(self.servers.processes[name])
                if name.startswith("gateway"):
                    self.gateways.append(address)
                else:
                    env[f"PARLEY_PEERS_{name.upper()}"] = address

    async def subscriber_specs(self, count: int) -> list[dict[str, str]]:
        tokens = await self._users.take(self.gateways[0], count)
        homes = [self.gateways[(i + 1) % len(self.gateways)] for i in range(count)]
        return [{"address": home, "token": token} for home, token in zip(homes, tokens, strict=True)]

    def publisher(self, room: str, index: int) -> Callable[[], Awaitable[Publisher]]:
        return lambda: ParleyPublisher.open(self.gateways[0], room)

    async def stop(self) -> dict[str, int | None]:
        # Gateways first (the services they call stay up while they drain), the bus last.
        names = list(self.servers.processes)
        gateways = [name for name in names if name.startswith("gateway")]
        services = [name for name in names if name not in gateways and name != "nats-bus"]
        return await asyncio.to_thread(self.servers.stop, gateways, services, ["nats-bus"])

    def describe(self) -> dict[str, Any]:
        return {
            "deployment": DEPLOYMENTS[self._layout],
            "gateway_addresses": self.gateways,
            "server_env": FANOUT_PARLEY_ENV,
            "room_keeps_history": self._keep_history,
            "versions": {"parley": version("parley"), "grpcio": grpc.__version__},
            "subscriber": "raw Connect stream on its own grpc.aio channel (local subchannel pool), its own user; "
            "joining is a JoinCommand, ready at its reply",
            "publisher": "the SDK's Room.trigger(event, payload, echo=False): one PublishCommand per event, its "
            "reply awaited; its own user",
        }
