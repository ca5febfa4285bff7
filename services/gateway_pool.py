"""K gateway processes on one port (SO_REUSEPORT), started, watched and stopped as one.

Each is `python -m services.gateway_process` with a socket pair to this process
as its standard input (the config goes down, its port comes back; see there).
A gateway that ends without being asked to is a fault: the pool's owner stops
the others and exits, and the service manager above restarts the whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import signal
import socket
import sys

from services.gateway_process import send_config
from services.runtime.config import Config

log = logging.getLogger("parley.gateway_pool")
CHILD_MODULE = "services.gateway_process"
# A gateway still running this long past its drain time (server.grace_seconds) is killed.
KILL_AFTER_SECONDS = 5.0


class GatewayExited(ChildProcessError):
    """A gateway process ended without being asked to."""


@dataclasses.dataclass
class GatewayProcess:
    number: int
    process: asyncio.subprocess.Process
    # The parent's end of the socket pair: while it is open, the child serves.
    link: asyncio.StreamWriter

    def exit_message(self) -> str:
        return f"gateway process {self.number} (pid {self.process.pid}) exited with status {self.process.returncode}"


class GatewayPool:
    """`count` gateway processes on `config.server.port`, each with its own gateway id."""

    def __init__(self, config: Config, count: int) -> None:
        self._config = copy.deepcopy(config)
        self._config.server.reuse_port = True
        self._config.server.gateway_processes = 1
        self._count = count
        self.processes: list[GatewayProcess] = []

    async def start(self) -> int:
        """Starts the gateways; the port they share. With port 0 the first picks it, then the others start."""
        port = self._config.server.port
        numbers = range(1, self._count + 1)
        if port == 0:
            port = await self._start_one(1, 0)
            numbers = range(2, self._count + 1)
        starting = [asyncio.ensure_future(self._start_one(n, port)) for n in numbers]
        try:
            await asyncio.gather(*starting)
        except BaseException:
            for start in starting:
                start.cancel()
            await asyncio.gather(*starting, return_exceptions=True)
            raise
        return port

    async def _start_one(self, number: int, port: int) -> int:
        config = copy.deepcopy(self._config)
        config.server.port = port
        ours, theirs = socket.socketpair()
        with theirs:
            # A session of its own: a terminal's Ctrl-C reaches only this process, which stops each child once.
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", CHILD_MODULE, stdin=theirs.fileno(), start_new_session=True
            )
        reader, writer = await asyncio.open_connection(sock=ours)
        child = GatewayProcess(number, process, writer)
        self.processes.append(child)
        send_config(writer, config)
        await writer.drain()
        line = await reader.readline()
        if not line:
            await process.wait()
            raise GatewayExited(f"{child.exit_message()} while starting")
        log.info("gateway process started", extra={"number": number, "pid": process.pid, "port": int(line)})
        return int(line)

    async def first_exit(self) -> GatewayProcess:
        """Waits until one of the gateways ends; that one."""
        waits = {asyncio.ensure_future(child.process.wait()): child for child in self.processes}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return waits[done.pop()]

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM to every gateway still running (each drains), SIGKILL to any still running after that."""
        running = [child.process for child in self.processes if child.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            waits = [asyncio.ensure_future(process.wait()) for process in running]
            _, late = await asyncio.wait(waits, timeout=grace_seconds + KILL_AFTER_SECONDS)
            for wait in late:
                wait.cancel()
        for process in running:
            if process.returncode is None:
                log.error("gateway process did not stop in time; killing it", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for child in self.processes:
            child.link.close()
