"""Several gateways on NATS: clients of a drained gateway resume on another, and server questions and
peer discovery work for users connected anywhere (issue 11 parts 3, 4, 5)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.backoff import Backoff
from parley.connection import ConnectionState
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.outbox import Send
from parley.values import to_value
from tests.chaos_proxy import chaos_proxy
from tests.scale_out import SECRET, ScaleOut, scale_out
from tests.support import bearer, wait_until

SERVICE = bearer(f"svc:backend:{SECRET}")
ROOMS_TOML = """
[[rooms]]
id = "chat"

  [[rooms.events]]
  name = "message"
  history = { enabled = true }
"""
# A backoff that would wait long: only the drain hint brings the clients back quickly.
SLOW_BACKOFF = Backoff(initial=20.0, cap=20.0)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    tmp = tmp_path_factory.mktemp("drain")
    with scale_out(
        tmp, ROOMS_TOML, PARLEY_GATEWAY_LEASE_SECONDS="2", PARLEY_GATEWAY_DRAIN_RECONNECT_WITHIN_MS="300"
    ) as up:
        yield up


async def test_clients_of_a_drained_gateway_resume_on_another_with_nothing_lost(
    cluster: ScaleOut, tmp_path: Path
) -> None:
    doomed = cluster.start("gateway-3", serve="gateway")
    tag = secrets.token_hex(3)
    try:
        async with chaos_proxy(doomed.address) as front:  # what a load balancer does for the clients
            publisher = Client(cluster.gateway(1), username=f"pub{tag}", key_file=tmp_path / "p.json")
            movers = [
                Client(front.address, username=f"mov{n}{tag}", key_file=tmp_path / f"m{n}.json", backoff=SLOW_BACKOFF)
                for n in range(3)
            ]
            try:
                await publisher.connect()
                received: list[list[int]] = []
                for mover in movers:
                    await mover.connect()
                    seqs: list[int] = []
                    (await mover.join("chat")).on("message", lambda e, seqs=seqs: seqs.append(e.seq))
                    received.append(seqs)
                room = await publisher.join("chat")
                mover_rooms = [await m.join("chat") for m in movers]
                came_back: list[list[tuple[str, float]]] = [[] for _ in movers]
                for mover, seen in zip(movers, came_back, strict=True):
                    mover.on_state(lambda state, error, seen=seen: seen.append((state.value, time.monotonic())))
                sends: list[Send] = []

                async def load() -> None:
                    for n in range(150):
                        sends.append(room.send("message", f"p{n}"))
                        sends.append(mover_rooms[n % 3].send("message", f"m{n}"))
                        await asyncio.sleep(0.005)

                loading = asyncio.create_task(load())
                await wait_until(lambda: len(sends) > 60, interval=0.005)
                front.retarget(cluster.gateway(1))  # new connections go to the gateway that stays
                drained_at = time.monotonic()
                await asyncio.to_thread(cluster.processes["gateway-3"].terminate)  # SIGTERM: drain
                await wait_until(
                    lambda: (
                        all(seen and seen[-1][0] == "connected" for seen in came_back)
                        and all(any(state == "reconnecting" for state, _ in seen) for seen in came_back)
                    ),
                    interval=0.02,
                )
                back_after = max(seen[-1][1] for seen in came_back) - drained_at
                assert back_after < 5, "the drain hint, not the 20 s backoff, set the pace"
                await loading
                await asyncio.wait_for(asyncio.gather(*(s.result() for s in sends)), 30)
                kept = [e.seq for e in reversed(await publisher.history("chat", limit=1000))]
                mine = {s.reply.publish.seqs[0] for s in sends if s.reply is not None}
                assert mine <= set(kept)
                assert len(mine) == len(sends), "every send stored once"
                for seqs in received:
                    await wait_until(lambda seqs=seqs: len(seqs) >= len(kept), within=20)
                    assert seqs == kept, "every event once, in order, across the move"
                assert all(m.state is ConnectionState.CONNECTED for m in movers)
                await asyncio.sleep(3)  # past the lease (2 s): a drained gateway gave it back, nothing lapsed
                assert "leases lapsed" not in cluster.processes["room"].output()
            finally:
                for client in [publisher, *movers]:
                    await client.close()
    finally:
        cluster.processes.pop("gateway-3", doomed).terminate()


async def test_a_backend_on_one_gateway_asks_a_user_on_another(cluster: ScaleOut, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    async with Client(cluster.gateway(2), username=f"far{tag}", key_file=tmp_path / "f.json") as far:
        far.on_question(lambda question: {"topic": question.topic, "n": question.data})
        stream = await far.stream()
        assert stream.welcome is not None
        async with grpc.aio.insecure_channel(cluster.gateway(1)) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            by_user = await gateway.AskClient(
                gateway_pb2.AskClientRequest(user_id=far.user_id, topic="t", data=to_value(1)),
                metadata=SERVICE,
                timeout=10,
            )
            assert by_user.session_id == stream.welcome.session_id
            assert by_user.data.struct_value.fields["n"].number_value == 1
            by_session = await gateway.AskClient(
                gateway_pb2.AskClientRequest(session_id=stream.welcome.session_id, topic="u", data=to_value(2)),
                metadata=SERVICE,
                timeout=10,
            )
            assert by_session.data.struct_value.fields["topic"].string_value == "u"


async def test_peers_and_their_going_cross_gateways(cluster: ScaleOut, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    async with (
        Client(cluster.gateway(1), username=f"one{tag}", key_file=tmp_path / "1.json") as one,
        Client(cluster.gateway(2), username=f"two{tag}", key_file=tmp_path / "2.json") as two,
    ):
        room = "chat"
        await one.join(room)
        await two.join(room)
        gone: list[str] = []
        one.on_peer_disconnected(gone.append)
        await wait_until(lambda: one.peers(), within=10)
        assert two.user_id in {p.user_id for p in await one.peers()}
        await two.close()
        await wait_until(lambda: two.user_id in gone, within=10)
