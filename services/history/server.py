"""The history service as a module of a server, and on its own."""

from __future__ import annotations

from opentelemetry.metrics import Meter

from parley.history.v1 import history_pb2
from services.history.appender import GroupCommitter
from services.history.hot import HotBuffer
from services.history.log_readers import open_log_readers
from services.history.mailbox_storage import open_mailbox_storage
from services.history.mailboxes import Mailboxes
from services.history.pruner import Pruner
from services.history.sequences import ReservedSequences
from services.history.servicer import HistoryServicer
from services.history.storage import open_history_storage
from services.runtime.bus import Bus, InProcessBus
from services.runtime.bus_factory import open_bus
from services.runtime.bus_health import report_bus_health
from services.runtime.config import Config
from services.runtime.grpc_types import HealthStatus
from services.runtime.raw_handlers import passthrough_handler
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry, observe_counter

SERVICE = history_pb2.DESCRIPTOR.services_by_name["HistoryService"]
APPEND_TRANSACTIONS_METRIC = "parley.history.append.transactions"
NUMBERED_IN_MEMORY_METRIC = "parley.history.append.numbered_in_memory"


async def history_module(config: Config) -> ServiceModule:
    bus = await open_bus(config.bus)
    module, _ = await history_parts(config, bus, owns_bus=True)
    return module


async def history_parts(
    config: Config, bus: Bus | None = None, owns_bus: bool = False
) -> tuple[ServiceModule, HistoryServicer]:
    """The module, and its servicer for an in-process gateway (all-in-one); it announces writes on
    `bus` (without one, on a bus of its own in this process)."""
    if bus is None:
        bus = InProcessBus()
    # Transient events are numbered in memory, from blocks the store reserves.
    storage = ReservedSequences(await open_history_storage(config))
    hot = HotBuffer(config.history.hot_events_per_name, config.history.hot_buffer_bytes)
    committer = GroupCommitter(storage, config.history.idempotency_window_seconds, hot)
    mailboxes = Mailboxes(await open_mailbox_storage(config), config.history)
    readers = await open_log_readers(config)
    servicer = HistoryServicer(storage, committer, config.history, hot, bus, mailboxes, readers)
    pruner = Pruner(storage, config.history, hot, servicer.retention_received)

    async def close() -> None:
        await readers.close()
        await mailboxes.close()
        await pruner.close()
        await committer.close()
        await storage.close()
        if owns_bus:
            await bus.close()

    def start(health: HealthStatus, own_address: str) -> None:
        report_bus_health(bus, health, [SERVICE.full_name])
        pruner.start()
        mailboxes.start()

    def use_meter(meter: Meter) -> None:
        observe_counter(
            meter,
            APPEND_TRANSACTIONS_METRIC,
            lambda: storage.transactions,
            unit="{transaction}",
            description="Transactions the history service wrote appends in (each holds many appends)",
        )
        observe_counter(
            meter,
            NUMBERED_IN_MEMORY_METRIC,
            lambda: storage.numbered_in_memory,
            unit="{append}",
            description="Appends of transient events numbered from a reserved block, with no write",
        )

    module = ServiceModule(
        services=[SERVICE],
        register=lambda server: server.add_generic_rpc_handlers((passthrough_handler(SERVICE, servicer),)),
        close=close,
        start=start,
        use_meter=use_meter,
    )
    return module, servicer


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The history service alone; verification keys come from `peers.identity`."""
    return await serve_modules(
        config, [history_module], process_name="history", identity_address=config.peers.identity, telemetry=telemetry
    )
