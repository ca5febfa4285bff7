"""The gateway: GatewayService (server info, Connect, backend API) and, in split
mode, the forwarding of the other services' public RPCs to their processes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from google.protobuf import descriptor
from opentelemetry.metrics import Meter

from parley.gateway.v1 import gateway_pb2
from services.file.server import SERVICE as FILE_SERVICE
from services.gateway.backend_api import DeploymentBackendApi
from services.gateway.deployment import GatewayPeers
from services.gateway.directory import follow_room_changes
from services.gateway.forwarding import ForwardingHandler, Peer, routes_for
from services.gateway.history_client import HistoryAppender, HistoryClient
from services.gateway.identity_client import IdentityClient
from services.gateway.log_follower import follow_logs
from services.gateway.mailbox_client import MailboxClient, RemoteMailbox
from services.gateway.peer_health import mirror_peer_health
from services.gateway.realtime import Realtime
from services.gateway.retention import RetentionSync
from services.gateway.revocations import follow_revocations
from services.gateway.room_client import InProcessRoomClient, Memberships, RoomClient
from services.gateway.servicer import SERVICE, GatewayServicer
from services.history.server import SERVICE as HISTORY_SERVICE
from services.identity.server import SERVICE as IDENTITY_SERVICE
from services.room.server import CHANNEL_SERVICE
from services.room.server import SERVICE as ROOM_SERVICE
from services.runtime.bus import Bus, InProcessBus
from services.runtime.bus_factory import open_bus
from services.runtime.bus_health import report_bus_health
from services.runtime.channels import open_channel
from services.runtime.config import Config
from services.runtime.errors import ServiceError
from services.runtime.grpc_types import HealthStatus
from services.runtime.hooks import Hooks
from services.runtime.peer_client import PeerClient, internal_secret
from services.runtime.raw_handlers import passthrough_handler
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry, observe_gauge
from services.runtime.tokens import TokenVerifier

log = logging.getLogger("parley.gateway")
# Services whose public RPCs clients reach through the gateway.
PUBLIC_SERVICES = (IDENTITY_SERVICE, ROOM_SERVICE, CHANNEL_SERVICE, HISTORY_SERVICE, FILE_SERVICE)
OUTBOX_BYTES_METRIC = "parley.gateway.outbox.bytes"


def gateway_module(
    config: Config,
    mode: gateway_pb2.DeploymentMode.ValueType,
    local_peers: bool,
    bus: Bus,
    history: HistoryAppender | None = None,
    owns_bus: bool = False,
    memberships: Memberships | None = None,
    mailbox: MailboxClient | None = None,
) -> ServiceModule:
    """GatewayService. With `local_peers` the room service is on this same server
    (reached over a loopback channel, joins and leaves in process through `memberships`)
    and `history` is the in-process history service."""
    secret = internal_secret(config)
    rooms = (
        InProcessRoomClient(config.server, secret, memberships)
        if memberships is not None
        else RoomClient(config.server, secret, "" if local_peers else config.peers.room)
    )
    identity = IdentityClient(config.server, secret, "" if local_peers else config.peers.identity)
    remote_history: HistoryClient | None = None
    if history is None:
        history = remote_history = HistoryClient(config.server, secret, config.peers.history)
    remote_mailbox: RemoteMailbox | None = None
    if mailbox is None:
        mailbox = remote_mailbox = RemoteMailbox(config.server, secret, config.peers.history)
    realtime = Realtime(config.gateway, bus, rooms, history, Hooks(config.hooks), mailbox, identity)
    realtime.membership_is_local = local_peers
    realtime.clock_skew_seconds = config.auth.clock_skew_seconds
    retention = RetentionSync(history, realtime.directory)
    services = [s.full_name for s in (SERVICE, *PUBLIC_SERVICES)]
    backend = DeploymentBackendApi(realtime)
    peers = GatewayPeers(bus, realtime.gateway_id, backend.answer)
    servicer = GatewayServicer(realtime, backend, mode, services, config.server.max_message_bytes)
    tasks: list[asyncio.Task[None]] = []
    lease_task: list[asyncio.Task[None]] = []

    def start(health: HealthStatus, own_address: str) -> None:
        report_bus_health(bus, health, [SERVICE.full_name])
        if local_peers:
            rooms.address = identity.address = own_address
        follow = follow_room_changes(
            rooms, realtime.directory, realtime.on_room_change, realtime.rejoin_all, retention.schedule
        )
        tasks.append(asyncio.create_task(follow))
        tasks.append(asyncio.create_task(follow_revocations(identity, realtime.on_device_revoked)))
        tasks.append(asyncio.create_task(start_peers()))
        tasks.append(asyncio.create_task(start_direct()))
        if not local_peers:  # renewed until the module closes: a long drain must not let it lapse
            lease = renew_lease(rooms, realtime.gateway_id, config.gateway.lease_seconds)
            lease_task.append(asyncio.create_task(lease))
        if remote_history is not None and isinstance(bus, InProcessBus):
            # The history service's bus does not reach this process: its announcements come by stream.
            tasks.append(asyncio.create_task(follow_logs(remote_history, bus, realtime.feeds.suspect_gaps)))

    async def start_direct() -> None:
        try:
            await realtime.direct.start()
        except Exception:
            log.exception("could not listen for direct-message wake-ups; devices get them when they reconnect")

    async def start_peers() -> None:
        await peers.start()
        backend.peers = peers

    def use_verifier(verifier: TokenVerifier) -> None:
        realtime.verifier = verifier

    def use_meter(meter: Meter) -> None:
        observe_gauge(
            meter,
            OUTBOX_BYTES_METRIC,
            lambda: realtime.scheduler.budget.total_bytes,
            unit="By",
            description="Bytes queued for this gateway's streams and not yet sent (capped by max_outbound_bytes_total)",
        )

    async def drain() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await peers.close()
        await retention.close()
        realtime.go_away("the server is shutting down; reconnect shortly")

    close_clients = closing(rooms, identity, history, remote_mailbox, bus if owns_bus else None)

    async def close() -> None:
        await realtime.direct.close()
        for task in lease_task:
            task.cancel()
        await asyncio.gather(*lease_task, return_exceptions=True)
        if not local_peers:  # its connections have left by now: the lease goes without the lapse warning
            try:
                await rooms.release_lease(realtime.gateway_id)
            except ServiceError as error:
                log.info("could not give the gateway's lease back; it lapses", extra={"error": error.message})
        await close_clients()

    return ServiceModule(
        services=[SERVICE],
        register=lambda server: server.add_generic_rpc_handlers((passthrough_handler(SERVICE, servicer),)),
        close=close,
        start=start,
        before_drain=drain,
        use_verifier=use_verifier,
        use_meter=use_meter,
    )


async def renew_lease(rooms: RoomClient, gateway_id: str, ttl_seconds: float) -> None:
    """Keeps this gateway's connections' memberships alive in the room service, until cancelled."""
    while True:
        try:
            await rooms.renew_lease(gateway_id, ttl_seconds)
        except ServiceError as error:
            log.warning("could not renew the gateway's lease", extra={"error": error.message})
            await asyncio.sleep(min(1.0, ttl_seconds / 10))
            continue
        await asyncio.sleep(ttl_seconds / 3)


def closing(*clients: PeerClient | HistoryAppender | Bus | None) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        for client in clients:
            if client is not None:
                await client.close()

    return close


class PeerConnections:
    """Channels to the peer services and the tasks mirroring their health."""

    def __init__(self, config: Config) -> None:
        addresses = {
            IDENTITY_SERVICE: ("identity", config.peers.identity),
            ROOM_SERVICE: ("room", config.peers.room),
            CHANNEL_SERVICE: ("room", config.peers.room),
            HISTORY_SERVICE: ("history", config.peers.history),
            FILE_SERVICE: ("file", config.peers.file),
        }
        self.peers: dict[descriptor.ServiceDescriptor, Peer] = {
            service: Peer(name, address, open_channel(address, config.server))
            for service, (name, address) in addresses.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start_health_mirrors(self, health_servicer: HealthStatus, own_address: str) -> None:
        for service, peer in self.peers.items():
            task = asyncio.create_task(mirror_peer_health(peer.channel, service.full_name, health_servicer))
            self._tasks.append(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers.values():
            await peer.channel.close(None)


async def forwarding_module(config: Config) -> ServiceModule:
    """The other services' public RPCs, forwarded to `peers.*`; unhealthy until reached."""
    connections = PeerConnections(config)
    return ServiceModule(
        services=list(PUBLIC_SERVICES),
        register=lambda server: None,
        close=connections.close,
        generic_handlers=[ForwardingHandler(routes_for(connections.peers))],
        initially_serving=False,
        start=connections.start_health_mirrors,
    )


async def split_gateway_module(config: Config) -> ServiceModule:
    bus = await open_bus(config.bus)
    return gateway_module(config, gateway_pb2.DEPLOYMENT_MODE_SPLIT, local_peers=False, bus=bus, owns_bus=True)


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The split-mode gateway: forwards to `peers.*`, verifies tokens with `peers.identity`'s keys."""
    return await serve_modules(
        config,
        [split_gateway_module, forwarding_module],
        process_name="gateway",
        identity_address=config.peers.identity,
        telemetry=telemetry,
    )
