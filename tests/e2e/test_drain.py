"""Graceful drain (issue 11 part 3): a stopping gateway goes NOT_SERVING and tells its clients to come
back within a short random time; they resume on the restarted gateway, or on another, with nothing
lost and nothing doubled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley import Client, ParleyError
from parley.backoff import Backoff
from parley.connection import ConnectionState
from parley.outbox import Send, SendStatus
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import stream
from tests.support import make_config, running, wait_until

ROOMS = [RoomDefinition(id="chat", events=[EventDefinition(name="message", history=HistorySettings(enabled=True))])]
ROOMS_TOML = """
[[rooms]]
id = "chat"

  [[rooms.events]]
  name = "message"
  history = { enabled = true }
"""


async def test_a_restart_during_a_burst_loses_nothing_and_doubles_nothing(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.drain_reconnect_within_ms": 300})
    async with running(allinone.create_server, config) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        fast = Backoff(initial=0.05, cap=0.5)
        writer = Client(address, username="wri", key_file=tmp_path / "w.json", backoff=fast)
        reader = Client(address, username="rea", key_file=tmp_path / "r.json", backoff=fast)
        errors: list[ParleyError] = []
        try:
            for client in (writer, reader):
                await client.connect()
                client.on_error(errors.append)
            received: list[int] = []
            (await reader.join("chat")).on("message", lambda e: received.append(e.seq))
            room = await writer.join("chat")
            sends: list[Send] = []

            async def burst() -> None:
                for n in range(200):
                    sends.append(room.send("message", n))
                    await asyncio.sleep(0.002)

            bursting = asyncio.create_task(burst())
            await wait_until(lambda: len(sends) > 50, interval=0.005)
            await server.stop(1)
            assert writer.state is not ConnectionState.CONNECTED
            restarted = make_config(data_dir, rooms=ROOMS, **{"server.port": port})
            async with running(allinone.create_server, restarted):
                await bursting
                await asyncio.wait_for(asyncio.gather(*(s.result() for s in sends)), 30)
                assert all(s.status is SendStatus.SENT for s in sends)
                kept = list(reversed(await writer.history("chat", limit=1000)))
                assert [e.data for e in kept] == list(range(200))
                await wait_until(lambda: len(received) >= 200)
                assert received == [e.seq for e in kept]
            assert errors == [], "a drain is no error"
        finally:
            await writer.close()
            await reader.close()


async def test_a_draining_gateway_goes_not_serving_and_hints_a_spread(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.drain_reconnect_within_ms": 1234})
    async with running(allinone.create_server, config) as (server, address):
        async with Client(address, username="ann", key_file=tmp_path / "a.json", reconnect=False) as ann:
            await ann.join("chat")
            ended: list[ParleyError | None] = []
            ann.on_disconnect(ended.append)
            async with stream(address, await ann.access_token()) as raw, grpc.aio.insecure_channel(address) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
                assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.SERVING
                stopping = asyncio.create_task(server.stop(1))
                assert (await anext(aiter(watch))).status == health_pb2.HealthCheckResponse.NOT_SERVING
                go_away = (await raw.next_other("go_away")).go_away
                await stopping
            await wait_until(lambda: bool(ended))
    assert (go_away.status.reason, go_away.reconnect_within_ms) == ("DRAINING", 1234)
    assert go_away.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert ended[0] is not None
    assert ended[0].reason == "DRAINING", "the SDK says why its stream ended"
