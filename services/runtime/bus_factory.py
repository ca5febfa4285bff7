"""The bus `bus.url` names: in process (empty) or NATS (`nats://host:port`, several comma-separated)."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.runtime.bus import Bus, InProcessBus
from services.runtime.config import BusConfig, ConfigError


async def open_bus(config: BusConfig) -> Bus:
    """Connects inside the running loop; ConfigError for a URL that names no bus Parley has."""
    if not config.url:
        return InProcessBus()
    for server in config.url.split(","):
        parts = urlsplit(server.strip())
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(f"bus.url: {server!r} is not nats://host:port (or empty for the in-process bus)")
    from services.runtime.nats_bus import NatsBus

    return await NatsBus.connect(config.url, config.subject_prefix)
