"""The two ways the direct-message throughput benchmark sends and receives the same payloads.

Both go through the SDK's one send path (`Sender.send`, the client's outbox,
one SendDirectCommand per message) and its one receive path (the Connect
stream, then `Receiver`, which hands each `sealed` frame to the client's
`DirectMessages.received`). Only the last step differs:

- encrypted: `client.message.send("user:<id>", data)` seals the JSON payload
  on the ratchet session and saves the key store; the receiver's
  `DirectMessages` opens, checks and hands over each envelope, saves the key
  store per batch and acknowledges;
- plaintext: the same JSON bytes go as the device's "ciphertext", queued with
  `client._sender.send` (private: a benchmark may reach into the SDK); on the
  receiver a `PlaintextInbox` takes the place of `DirectMessages` in the
  `Receiver` (it only calls `received(frame)` on it), parses each envelope's
  JSON and acknowledges, one acknowledgement under way at a time like the SDK.

A `SealedFrames` tap sits in that place on both receivers, counting frames and
envelope bytes before handing the frame on.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from parley.client import Client
from parley.direct_messages import DirectMessage, DirectMessages
from parley.gateway.v1 import gateway_pb2

# The payload without padding: {"phase":…,"i":…,"t":…,"pad":""}, with room for large numbers.
MIN_PAYLOAD_BYTES = 96

Payload = dict[str, Any]
SendOne = Callable[[Payload], Awaitable[object]]
Deliver = Callable[[Payload], None]


def json_bytes(data: Payload) -> bytes:
    """JSON as the SDK encodes a direct message's data."""
    return json.dumps(data, separators=(",", ":")).encode()


def payload(phase: int, index: int, sent_at: float, size: int) -> Payload:
    """A JSON object of exactly `size` bytes carrying its phase, its index and when its send started."""
    data: Payload = {"phase": phase, "i": index, "t": sent_at, "pad": ""}
    data["pad"] = "x" * (size - len(json_bytes(data)))
    return data


class Deliveries:
    """What one phase's receiver got: latency of each message, when the last came, and whether all did."""

    def __init__(self, phase: int) -> None:
        self.phase = phase
        self.latencies: list[float] = []
        self.last_at = 0.0
        self.strays = 0
        self._expected: int | None = None
        self._all = asyncio.Event()

    def record(self, data: Payload) -> None:
        now = time.perf_counter()
        if data.get("phase") != self.phase:
            self.strays += 1
            return
        self.latencies.append(now - float(data["t"]))
        self.last_at = now
        self._check()

    async def all_of(self, expected: int, seconds: float) -> bool:
        """Waits until `expected` messages arrived (False if they did not within `seconds`)."""
        self._expected = expected
        self._check()
        try:
            await asyncio.wait_for(self._all.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _check(self) -> None:
        if self._expected is not None and len(self.latencies) >= self._expected:
            self._all.set()


class SealedFrames:
    """Stands where the receiving client's `DirectMessages` was in its `Receiver`: counts each sealed frame,
    then hands it on."""

    def __init__(self, hand_on: Callable[[gateway_pb2.SealedEnvelopes], None]) -> None:
        self._hand_on = hand_on
        self.frames = 0
        self.envelopes = 0
        self.ciphertext_bytes = 0

    def received(self, frame: gateway_pb2.SealedEnvelopes) -> None:
        self.frames += 1
        self.envelopes += len(frame.envelopes)
        self.ciphertext_bytes += sum(len(e.ciphertext) for e in frame.envelopes)
        self._hand_on(frame)

    def install(self, client: Client) -> None:
        # The Receiver calls nothing but `received(frame)` on what it holds there.
        client._receiver._direct = cast(DirectMessages, self)


class PlaintextInbox:
    """Parses each envelope's bytes as the JSON payload and acknowledges, as `DirectMessages` does after
    opening them."""

    def __init__(self, client: Client, deliver: Callable[[], Deliver]) -> None:
        self._client = client
        self._deliver = deliver
        self._handled_up_to = 0
        self._acked_up_to = 0
        self._acking: asyncio.Task[None] | None = None

    def received(self, frame: gateway_pb2.SealedEnvelopes) -> None:
        deliver = self._deliver()
        for envelope in frame.envelopes:
            if envelope.seq > self._handled_up_to:
                deliver(json.loads(envelope.ciphertext))
                self._handled_up_to = envelope.seq
        if self._acking is None or self._acking.done():
            self._acking = asyncio.get_running_loop().create_task(self._acknowledge())

    async def _acknowledge(self) -> None:
        while self._acked_up_to < self._handled_up_to:
            up_to = self._handled_up_to
            await self._client._sender.command(wait=False, ack_direct=gateway_pb2.AckDirectCommand(up_to_seq=up_to))
            self._acked_up_to = up_to


async def receive_encrypted(client: Client, deliver: Callable[[], Deliver]) -> SealedFrames:
    """Subscribes to the client's direct messages (decrypted by the SDK) and opens its stream."""
    direct = client._direct
    tap = SealedFrames(direct.received)
    tap.install(client)

    def handle(message: DirectMessage) -> None:
        deliver()(message.data)

    await client.message.subscribe(f"user:{client.user_id}", handle)
    await client.stream()
    return tap


async def receive_plaintext(client: Client, deliver: Callable[[], Deliver]) -> SealedFrames:
    """Counts and acknowledges the client's sealed frames as plain JSON and opens its stream."""
    inbox = PlaintextInbox(client, deliver)
    tap = SealedFrames(inbox.received)
    tap.install(client)
    await client.stream()
    return tap


def send_encrypted(client: Client, recipient: Client) -> SendOne:
    """One end-to-end encrypted direct message per call, through `client.message.send`."""
    target = f"user:{recipient.user_id}"

    async def send(data: Payload) -> object:
        sent = await client.message.send(target, data)
        if sent.device_ids != (recipient.device_id,):
            raise RuntimeError(f"sealed for {sent.device_ids}, unreachable {sent.unreachable_device_ids}")
        return sent

    return send


def send_plaintext(client: Client, recipient: Client) -> SendOne:
    """The same payload's JSON bytes as the recipient device's envelope, one SendDirectCommand per call."""

    async def send(data: Payload) -> object:
        command = gateway_pb2.SendDirectCommand(
            recipient_user_id=recipient.user_id,
            message_id=secrets.token_hex(16),
            envelopes=[gateway_pb2.DeviceCiphertext(device_id=recipient.device_id, ciphertext=json_bytes(data))],
        )
        # The outbox's send path, as `DirectMessages._deposit` takes it (private: fine in a benchmark).
        return await client._sender.send("", send_direct=command).result()

    return send
