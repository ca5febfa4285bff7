"""The bus `bus.url` names: in process (empty) or NATS (`nats://host:port`, several comma-separated)."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.runtime.bus import Bus, InProcessBus
from services.runtime.config import BusConfig, ConfigError
from services.runtime.nats_wire import check_subject_prefix


async def open_bus(config: BusConfig) -> Bus:
    """Connects inside the running loop; ConfigError for a URL that names no bus Parley has."""
    if not config.url:
        return InProcessBus()
    for server in config.url.split(","):
        check_server_url(server.strip())
    try:
        check_subject_prefix(config.subject_prefix)
    except ValueError as exc:
        raise ConfigError(f"bus.subject_prefix: {exc}") from exc
    from services.runtime.nats_bus import NatsBus

    return await NatsBus.connect(config.url, config.subject_prefix)


def check_server_url(server: str) -> None:
    wanted = f"bus.url: {server!r} is not nats://host:port (several comma-separated, or empty for the in-process bus)"
    try:
        parts = urlsplit(server)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(wanted) from exc
    if parts.scheme not in ("nats", "tls") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(wanted)
