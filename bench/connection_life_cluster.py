"""The rolling-drain benchmark's deployment: the services and two gateways on NATS, each gateway restartable.

bench/scale_out_bench.py's deployment (its `launch`, `wait_for`, start order
and settings), on SQLite files, with the environment kept so that a gateway
stopped on purpose can be started again with the same settings. A restarted
gateway is a new process named "gateway-<n>.<generation>" on a new port.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from bench.scale_out_bench import NATS_URL, SCALE_OUT_WAVES, launch, stop, wait_for, write_config
from bench.server_logs import LogWatch
from bench.server_process import ProcessGroups, ServerProcess

# SCALE_OUT_WAVES names the gateways "gateway-1", "gateway-2".
GATEWAY = "gateway-"


class GatewayCluster:
    def __init__(self, tmp: Path, settings: Mapping[str, str], groups: ProcessGroups) -> None:
        """`settings`: every server's PARLEY_* environment (bench/scale_out_bench.py's SERVER_ENV and more)."""
        self._tmp = tmp
        self._groups = groups
        self.logs = LogWatch()
        self._config = write_config(tmp)
        self.env = {
            **settings,
            "PARLEY_BUS_URL": NATS_URL,
            "PARLEY_BUS_SUBJECT_PREFIX": f"life{secrets.token_hex(6)}",
            "PARLEY_AUTH_SERVICE_CREDENTIALS": f"parley={secrets.token_hex(16)}",
        }
        # Every process started, stopped or not; the running gateway n is gateways[n].
        self.processes: dict[str, ServerProcess] = {}
        self.gateways: dict[int, ServerProcess] = {}
        self._generations: dict[int, int] = {}

    def start(self) -> None:
        """The services, then the gateways, wave by wave (each wave needs the addresses of those before)."""
        for wave in SCALE_OUT_WAVES:
            started = [self._launch(name) for name in wave]
            for name, process in zip(wave, started, strict=True):
                address = wait_for(process)
                if not name.startswith(GATEWAY):
                    self.env[f"PARLEY_PEERS_{name.upper()}"] = address

    def _launch(self, name: str) -> ServerProcess:
        if name.startswith(GATEWAY):
            return self._launch_gateway(int(name.removeprefix(GATEWAY)))
        # Services believe the client address a gateway forwards; clients reach only gateways.
        env = {**self.env, "PARLEY_SERVER_TRUST_FORWARDED_CLIENT": "true"}
        return self._watch(launch(name, name, env, self._config, self._tmp))

    def _watch(self, process: ServerProcess) -> ServerProcess:
        self.processes[process.name] = process
        self._groups.add(process.pid)
        self.logs.watch(process.name, process.stderr_path)
        return process

    def _launch_gateway(self, n: int) -> ServerProcess:
        generation = self._generations[n] = self._generations.get(n, 0) + 1
        name = f"gateway-{n}.{generation}"
        env = {**self.env, "PARLEY_SERVER_TRUST_FORWARDED_CLIENT": "false"}
        process = self.gateways[n] = self._watch(launch(name, "gateway", env, self._config, self._tmp))
        return process

    def drain(self, n: int) -> int:
        """SIGTERM to gateway n, and wait until it has stopped; its exit code."""
        code = self.gateways[n].terminate()
        self._groups.discard(self.gateways[n].pid)
        return code

    def restart(self, n: int) -> str:
        """Gateway n again, as a new process on a new port; its address once it listens."""
        return wait_for(self._launch_gateway(n))

    def address(self, n: int) -> str:
        return self.gateways[n].address

    def stop(self) -> None:
        """Every process still running, gateways first."""
        stop({name: p for name, p in self.processes.items() if p.process.poll() is None})
        for process in self.processes.values():
            self._groups.discard(process.pid)
