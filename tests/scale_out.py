"""A scale-out deployment for tests: the services and several gateways, each its own process, on NATS.

Every cluster has its own NATS subject prefix (so test runs never hear each
other) and, when PostgreSQL is asked for, its own database, dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ServerProcess

NATS_URL = "nats://127.0.0.1:4222"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICES = ("identity", "history", "room", "file")
SECRET = "scale-out-secret"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database for one test run; dropped afterwards, whatever happened."""
    import psycopg

    name = f"parley_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ScaleOut:
    tmp: Path
    env: dict[str, str]
    config: Path
    processes: dict[str, ServerProcess] = field(default_factory=dict)

    def start(self, name: str, serve: str = "") -> ServerProcess:
        """Starts `parley serve <serve or name>` as `name` (e.g. "gateway-2" serving a gateway)."""
        process = ServerProcess(
            [serve or name, "--port", "0", "--data-dir", str(self.tmp / "data" / name), "--config", str(self.config)],
            {
                **self.env,
                "PARLEY_SERVER_TRUST_FORWARDED_CLIENT": "false" if (serve or name) == "gateway" else "true",
            },
            self.tmp / f"{name}.log",
        )
        self.processes[name] = process
        return process

    def gateway(self, n: int) -> str:
        return self.processes[f"gateway-{n}"].address

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no leave, no goodbye."""
        process = self.processes[name].process
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        # Gateways first: the services they call stay up while they drain.
        for process in reversed(self.processes.values()):
            process.terminate()


@contextlib.contextmanager
def scale_out(
    tmp: Path, config_toml: str, gateways: int = 2, storage_url: str = "", **settings: str
) -> Iterator[ScaleOut]:
    """The services and `gateways` gateways on NATS (and PostgreSQL when `storage_url` is given),
    all with the config file `config_toml` and the PARLEY_* `settings`."""
    config = tmp / "parley.toml"
    config.write_text(config_toml)
    env = {
        "PARLEY_SERVER_GRACE_SECONDS": "1",
        "PARLEY_AUTH_SERVICE_CREDENTIALS": f"parley={SECRET},backend={SECRET}",
        "PARLEY_BUS_URL": NATS_URL,
        "PARLEY_BUS_SUBJECT_PREFIX": f"t{secrets.token_hex(6)}",
        **settings,
    }
    if storage_url:
        env["PARLEY_STORAGE_URL"] = storage_url
    cluster = ScaleOut(tmp, env, config)
    try:
        env["PARLEY_PEERS_IDENTITY"] = cluster.start("identity").address
        for name in SERVICES[1:]:
            env[f"PARLEY_PEERS_{name.upper()}"] = cluster.start(name).address
        for n in range(1, gateways + 1):
            cluster.start(f"gateway-{n}", serve="gateway")
        yield cluster
    finally:
        cluster.stop()
