"""The channel benchmark's `through_gateway` phase: a sealed channel against an open room, same clients, same
payloads, one server, one run.

K clients in this process, each with its own user, device and key file: the sender and K - 1 receivers.

- channel: the sender creates it (`client.space.create_channel`) and adds each receiver
  (`space.add_member`, a commit per member); every client opens it (`client.space.join_channel`); the sender
  sends with `space.send_message(payload)` (sealed once, signed, one PublishCommand) and each receiver counts
  what its `space.on_message` handler gets, opened and verified by the SDK;
- open_room: the sender creates an open room (`client.create_room`); every client joins it
  (`client.join`); the sender publishes the same payload as a plain event (`room.trigger`) and each
  receiver counts what its `room.on` handler gets.

Both send through the same Room.trigger path with its default echo, so the sender gets its own events back
in both modes (and, in the channel, opens them). Each payload carries its phase, index and the
`perf_counter` at its send's start: a handler's latency is send start to handler call on one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.dm_throughput_bench import drive
from bench.dm_throughput_modes import Deliver, Deliveries, Payload, SendOne
from bench.report import percentile_ms, ratio
from bench.server_process import ServerProcess, descendants, total_cpu_seconds
from parley.client import Client
from parley.rooms import Room, RoomEvent
from parley.spaces import MESSAGE_EVENT, ChannelMessage, Space

MODES = ("open_room", "channel")
# After the last delivery, for the last handlers and acknowledgements before CPU is read.
SETTLE_SECONDS = 0.5
DELIVERY_TIMEOUT_SECONDS = 60.0


@dataclass
class Mode:
    """One way of sending, and what each receiver got in the current phase."""

    send: SendOne
    receivers: int
    deliveries: list[Deliveries] = field(default_factory=list)
    event_data_bytes: int = 0
    """The event's `data` as JSON, as a receiver's room got it (the sealed envelope for the channel)."""

    def start(self, phase: int) -> None:
        self.deliveries = [Deliveries(phase) for _ in range(self.receivers)]

    def deliver(self, receiver: int) -> Deliver:
        return self.deliveries[receiver].record

    def tap(self, event: RoomEvent) -> None:
        if not self.event_data_bytes:
            self.event_data_bytes = len(json.dumps(event.data, separators=(",", ":")).encode())


def server_cpu_seconds(server: ServerProcess) -> float:
    """The server and any process it started."""
    return total_cpu_seconds(descendants([server.pid])[server.pid])


async def open_clients(stack: contextlib.AsyncExitStack, address: str, directory: Path, members: int) -> list[Client]:
    tag = secrets.token_hex(3)
    names = ["sender", *(f"rx{n}" for n in range(1, members))]
    clients = []
    for name in names:
        client = Client(address, username=f"ch-{name}-{tag}", key_file=directory / f"{name}.json")
        clients.append(await stack.enter_async_context(client))
        await client.publish_prekeys()
    return clients


async def channel_mode(clients: list[Client]) -> Mode:
    sender, receivers = clients[0], clients[1:]
    name = f"bench-{secrets.token_hex(4)}"
    space = await sender.space.create_channel(name)
    for receiver in receivers:
        await space.add_member(receiver.user_id)

    async def send(data: Payload) -> str:
        return await space.send_message(data)

    mode = Mode(send, len(receivers))
    for index, receiver in enumerate(receivers):
        joined = await receiver.space.join_channel(name)
        joined.on_message(_channel_handler(mode, index))
        _room_of(joined).on(MESSAGE_EVENT, mode.tap)
    return mode


def _channel_handler(mode: Mode, receiver: int) -> Callable[[ChannelMessage], None]:
    def handle(message: ChannelMessage) -> None:
        mode.deliver(receiver)(message.body)

    return handle


def _room_of(space: Space) -> Room:
    # The channel's room (private to the SDK): only to see the size of what the server delivers.
    return space._room


async def open_room_mode(clients: list[Client]) -> Mode:
    sender, receivers = clients[0], clients[1:]
    room_id = f"bench-open-{secrets.token_hex(4)}"
    await sender.create_room(room_id)
    room = await sender.join(room_id)

    async def send(data: Payload) -> object:
        return await room.trigger(MESSAGE_EVENT, data)

    mode = Mode(send, len(receivers))
    for index, receiver in enumerate(receivers):
        joined = await receiver.join(room_id)
        joined.on(MESSAGE_EVENT, _event_handler(mode, index))
        joined.on(MESSAGE_EVENT, mode.tap)
    return mode


def _event_handler(mode: Mode, receiver: int) -> Callable[[RoomEvent], None]:
    def handle(event: RoomEvent) -> None:
        mode.deliver(receiver)(event.data)

    return handle


async def run_phase(
    server: ServerProcess, mode: Mode, phase: int, seconds: float, in_flight: int, size: int
) -> dict[str, Any]:
    mode.start(phase)
    server_cpu, client_cpu = server_cpu_seconds(server), time.process_time()
    started = time.perf_counter()
    sent = await drive(mode.send, phase, seconds, in_flight, size)
    sending_seconds = time.perf_counter() - started
    arrived = await asyncio.gather(*(d.all_of(sent, DELIVERY_TIMEOUT_SECONDS) for d in mode.deliveries))
    await asyncio.sleep(SETTLE_SECONDS)
    server_cpu, client_cpu = server_cpu_seconds(server) - server_cpu, time.process_time() - client_cpu
    measured = time.perf_counter() - started
    received = [len(d.latencies) for d in mode.deliveries]
    rates = [count / (d.last_at - started) for count, d in zip(received, mode.deliveries, strict=True) if count]
    delivered = sum(received)
    ordered = sorted(latency for d in mode.deliveries for latency in d.latencies)
    return {
        "sent": sent,
        "received_per_receiver": received,
        "complete": all(arrived),
        "stray_messages": sum(d.strays for d in mode.deliveries),
        "sending_seconds": round(sending_seconds, 3),
        # Each receiver's messages over the time from the first send to its last message.
        "messages_per_s_per_receiver": {
            "mean": round(sum(rates) / len(rates), 1) if rates else None,
            "min": round(min(rates), 1) if rates else None,
        },
        "latency_ms": {
            "p50": percentile_ms(ordered, 0.50),
            "p99": percentile_ms(ordered, 0.99),
            "max": percentile_ms(ordered, 1.0),
        },
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_utilization": round(server_cpu / measured, 3),
        "server_cpu_ms_per_delivery": round(server_cpu * 1e3 / delivered, 4) if delivered else None,
        "server_cpu_ms_per_message_sent": round(server_cpu * 1e3 / sent, 4) if sent else None,
        "client_cpu_seconds": round(client_cpu, 3),
        "client_cpu_utilization": round(client_cpu / measured, 3),
        "client_cpu_ms_per_message_sent": round(client_cpu * 1e3 / sent, 4) if sent else None,
        "client_cpu_ms_per_delivery": round(client_cpu * 1e3 / delivered, 4) if delivered else None,
        "event_data_bytes": mode.event_data_bytes,
    }


async def measure_through_gateway(
    server: ServerProcess, directory: Path, *, seconds: float, warmup: float, members: int, in_flight: int, size: int
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        clients = await open_clients(stack, server.address, directory, members)
        modes = {"open_room": await open_room_mode(clients), "channel": await channel_mode(clients)}
        warmups = {name: await run_phase(server, modes[name], 1, warmup, in_flight, size) for name in MODES}
        timed = {name: await run_phase(server, modes[name], 2, seconds, in_flight, size) for name in MODES}
    for name in MODES:
        timed[name]["warmup"] = {
            key: warmups[name][key]
            for key in ("sent", "received_per_receiver", "complete", "messages_per_s_per_receiver")
        }
    return {
        "members": members,
        "receivers": members - 1,
        "modes": timed,
        "channel_over_open_room": ratios(timed["channel"], timed["open_room"]),
    }


def ratios(channel: dict[str, Any], open_room: dict[str, Any]) -> dict[str, float | None]:
    return {
        "messages_per_s_per_receiver": ratio(
            channel["messages_per_s_per_receiver"]["mean"], open_room["messages_per_s_per_receiver"]["mean"]
        ),
        "latency_p50": ratio(channel["latency_ms"]["p50"], open_room["latency_ms"]["p50"]),
        "latency_p99": ratio(channel["latency_ms"]["p99"], open_room["latency_ms"]["p99"]),
        "server_cpu_per_delivery": ratio(
            channel["server_cpu_ms_per_delivery"], open_room["server_cpu_ms_per_delivery"]
        ),
        "client_cpu_per_message_sent": ratio(
            channel["client_cpu_ms_per_message_sent"], open_room["client_cpu_ms_per_message_sent"]
        ),
        "event_data_bytes": ratio(channel["event_data_bytes"], open_room["event_data_bytes"]),
    }
