"""Split mode: five processes, clients talk to the gateway address only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley import Client, EventChange, UnavailableError
from parley.file.v1 import file_pb2, file_pb2_grpc
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from tests.streams import Stream
from tests.support import ServerProcess, bearer, error_reason, grpcurl, wait_until

PEERS = ("identity", "history", "room", "file")
ROOMS_TOML = """
[auth]
challenges_per_minute = 6

[[rooms]]
id = "lobby"
name = "Lobby"
description = "Say hello"

  [[rooms.events]]
  name = "*"
  history = { enabled = true }

[[rooms]]
id = "news"

  [[rooms.events]]
  name = "headline"
  history = { enabled = true, limit = 2, max_age_seconds = 86400 }
"""


@dataclass
class Cluster:
    tmp: Path
    processes: dict[str, ServerProcess]
    env: dict[str, str]

    @property
    def gateway(self) -> str:
        return self.processes["gateway"].address

    def start(self, name: str, port: int = 0) -> ServerProcess:
        process = ServerProcess(
            [
                name,
                "--port",
                str(port),
                "--data-dir",
                str(self.tmp / "data" / name),
                "--config",
                str(self.tmp / "p.toml"),
            ],
            {
                **self.env,
                "PARLEY_TELEMETRY_CONSOLE_PATH": str(self.tmp / f"{name}-spans.jsonl"),
                # Services behind the gateway believe the client address it forwards.
                "PARLEY_SERVER_TRUST_FORWARDED_CLIENT": "false" if name == "gateway" else "true",
            },
            self.tmp / f"{name}.log",
        )
        self.processes[name] = process
        return process

    def spans(self, name: str) -> list[dict[str, object]]:
        path = self.tmp / f"{name}-spans.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _started_cluster(tmp_path_factory.mktemp("split"), {})


def _started_cluster(tmp: Path, settings: dict[str, str]) -> Iterator[Cluster]:
    (tmp / "p.toml").write_text(ROOMS_TOML)
    env = {
        "PARLEY_TELEMETRY_TRACING": "console",
        "PARLEY_SERVER_GRACE_SECONDS": "1",
        # Parley's own service credential, shared by every process.
        "PARLEY_AUTH_SERVICE_CREDENTIALS": "parley=split-test-secret",
        **settings,
    }
    cluster = Cluster(tmp, {}, env)
    try:
        # Identity first: the others fetch token verification keys from it.
        env["PARLEY_PEERS_IDENTITY"] = cluster.start("identity").address
        for name in PEERS[1:]:
            env[f"PARLEY_PEERS_{name.upper()}"] = cluster.start(name).address
        cluster.start("gateway")
        yield cluster
    finally:
        for process in cluster.processes.values():
            process.terminate()


def test_gateway_reflection_lists_every_public_service(cluster: Cluster) -> None:
    result = grpcurl(cluster.gateway, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {
        "parley.identity.v1.IdentityService",
        "parley.room.v1.RoomService",
        "parley.room.v1.ChannelService",
        "parley.history.v1.HistoryService",
        "parley.file.v1.FileService",
        "parley.gateway.v1.GatewayService",
        "grpc.health.v1.Health",
    }
    described = grpcurl(cluster.gateway, "describe", "parley.room.v1.RoomService")
    assert described.returncode == 0, described.stderr
    assert "rpc ListRooms" in described.stdout


@pytest.mark.parametrize("name", PEERS)
def test_each_service_process_serves_reflection_and_health(cluster: Cluster, name: str) -> None:
    address = cluster.processes[name].address
    service = f"parley.{name}.v1.{name.capitalize()}Service"
    served = [service, "parley.room.v1.ChannelService"] if name == "room" else [service]
    listed = grpcurl(address, "list")
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(
        [*served, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    )
    for checked in ("", service):
        health = grpcurl(address, "grpc.health.v1.Health/Check", data={"service": checked})
        assert json.loads(health.stdout) == {"status": "SERVING"}, health.stderr


async def test_bad_input_through_the_gateway(cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(
        cluster.gateway, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
    ) as channel:
        raw = channel.unary_unary("/parley.identity.v1.IdentityService/RegisterUser", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await raw(b"\xff\xff\xff\xff")
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(malformed.value) == "MALFORMED_REQUEST"
        with pytest.raises(grpc.aio.AioRpcError) as oversized:
            await raw(b"\x0a" + b"\xff\xff\xff\x02" + b"x" * (5 * 1024 * 1024))
        assert oversized.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_register_login_whoami_through_gateway_in_one_trace(cluster: Cluster) -> None:
    async with Client(cluster.gateway, username="splitty", key_file=cluster.tmp / "splitty.json") as client:
        me = await client.whoami()
    assert me.username == "splitty"
    assert me.device_id == client.device_id

    def whoami_spans(name: str) -> list[dict[str, object]]:
        return [s for s in cluster.spans(name) if s["name"] == "parley.identity.v1.IdentityService/WhoAmI"]

    await wait_until(lambda: whoami_spans("gateway") and whoami_spans("identity"))
    (gateway_span,) = whoami_spans("gateway")
    (identity_span,) = whoami_spans("identity")
    gateway_context = gateway_span["context"]
    identity_context = identity_span["context"]
    assert isinstance(gateway_context, dict)
    assert isinstance(identity_context, dict)
    assert identity_context["trace_id"] == gateway_context["trace_id"]
    assert identity_span["parent_id"] == gateway_context["span_id"]


async def test_other_services_are_forwarded(cluster: Cluster) -> None:
    async with Client(cluster.gateway, username="roomy", key_file=cluster.tmp / "roomy.json") as client:
        token = bearer(await client.access_token())
    async with grpc.aio.insecure_channel(cluster.gateway) as channel:
        rooms = await room_pb2_grpc.RoomServiceStub(channel).ListRooms(room_pb2.ListRoomsRequest(), metadata=token)
        assert [r.room_id for r in rooms.rooms] == ["lobby", "news"]
        state = await history_pb2_grpc.HistoryServiceStub(channel).GetLogState(
            history_pb2.GetLogStateRequest(room_id="lobby"), metadata=token
        )
        assert (state.state.room_id, state.state.last_seq) == ("lobby", 0)
        policy = await file_pb2_grpc.FileServiceStub(channel).GetUploadPolicy(
            file_pb2.GetUploadPolicyRequest(), metadata=token
        )
        assert policy.policy.total_shares >= policy.policy.data_shares > 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await room_pb2_grpc.RoomServiceStub(channel).ListRooms(room_pb2.ListRoomsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_gateway_sets_the_client_address_for_rate_limits(cluster: Cluster) -> None:
    async with Client(cluster.gateway, username="limited", key_file=cluster.tmp / "limited.json") as client:
        async with grpc.aio.insecure_channel(cluster.gateway) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            request = identity_pb2.CreateLoginChallengeRequest(username="limited", device_id=client.device_id)
            codes = []
            for n in range(8):  # the client's own login took one of the six
                spoofed = (("x-parley-client-address", f"10.9.9.{n}"),)
                try:
                    await stub.CreateLoginChallenge(request, metadata=spoofed)
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)
    assert codes == ["OK"] * 5 + ["RESOURCE_EXHAUSTED"] * 3


async def test_rooms_and_events_through_the_gateway(cluster: Cluster) -> None:
    async with (
        Client(cluster.gateway, username="sally", key_file=cluster.tmp / "sally.json") as sally,
        Client(cluster.gateway, username="tom", key_file=cluster.tmp / "tom.json") as tom,
    ):
        created: asyncio.Queue[str] = asyncio.Queue()
        tom.on_room_created(lambda room: created.put_nowait(room.room_id))
        lobby_for_tom = await tom.join("lobby")
        lobby_for_sally = await sally.join("lobby")
        published = await lobby_for_sally.trigger("message", {"text": "split hello"})
        event = await asyncio.wait_for(anext(lobby_for_tom.events()), 5)
        assert (event.data, event.seq, event.sender) == ({"text": "split hello"}, published.seq, sally.user_id)
        assert set(await lobby_for_tom.participants()) == {sally.user_id, tom.user_id}
        edits: asyncio.Queue[EventChange] = asyncio.Queue()
        lobby_for_tom.on_edited(edits.put_nowait)
        await lobby_for_sally.edit(published.handle, {"text": "split hello, edited"})
        assert (await asyncio.wait_for(edits.get(), 5)).data == {"text": "split hello, edited"}
        (kept,) = await tom.history("lobby")
        assert (kept.handle, kept.data) == (published.handle, {"text": "split hello, edited"})
        await sally.create_room("split-room")
        assert await asyncio.wait_for(created.get(), 5) == "split-room"


async def test_revoking_a_device_cuts_it_off_through_the_gateway(cluster: Cluster) -> None:
    async with Client(cluster.gateway, username="vera", key_file=cluster.tmp / "vera.json") as laptop:
        phone = await laptop.add_device("phone")
        async with Client(cluster.gateway, identity=phone, reconnect=False) as thief:
            stolen = await thief.access_token()
            async with grpc.aio.insecure_channel(cluster.gateway) as channel:
                stream = await Stream(channel, stolen).open()
                joined = await stream.command(join=gateway_pb2.JoinCommand(room_id="lobby"))
                assert joined.status.code == 0, joined.status
                await laptop.revoke_device(phone.device_id)
                ended = await asyncio.wait_for(stream.ended, 10)
                assert ended is not None
                assert error_reason(ended) == "DEVICE_REVOKED"
                identity = identity_pb2_grpc.IdentityServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await identity.RevokeDevice(
                        identity_pb2.RevokeDeviceRequest(device_id=laptop.device_id), metadata=bearer(stolen)
                    )
                assert error_reason(refused.value) == "DEVICE_REVOKED"
        # Straight to the identity process, past the gateway: its store refuses too.
        async with grpc.aio.insecure_channel(cluster.processes["identity"].address) as channel:
            identity = identity_pb2_grpc.IdentityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await identity.RevokeDevice(
                    identity_pb2.RevokeDeviceRequest(device_id=laptop.device_id), metadata=bearer(stolen)
                )
            assert error_reason(refused.value) == "DEVICE_REVOKED"
        assert [d.device_id for d in await laptop.devices()] == [laptop.device_id]


async def test_a_restarted_room_service_gets_the_memberships_back(cluster: Cluster) -> None:
    async with Client(cluster.gateway, username="uma", key_file=cluster.tmp / "uma.json") as uma:
        lobby = await uma.join("lobby")
        room = cluster.processes["room"]
        port = room.port
        assert room.terminate() == 0
        cluster.start("room", port)
        for _ in range(100):
            try:
                if uma.user_id in await lobby.participants():
                    break
            except UnavailableError:
                pass
            await asyncio.sleep(0.1)
        assert uma.user_id in await lobby.participants()
        published = await lobby.trigger("message", {"text": "still here"})
        assert published.seq > 0


async def test_publishing_waits_for_the_history_service(cluster: Cluster) -> None:
    async with Client(cluster.gateway, username="vic", key_file=cluster.tmp / "vic.json") as vic:
        lobby = await vic.join("lobby")
        before = await lobby.trigger("message", {"text": "one"})
        history = cluster.processes["history"]
        port = history.port
        assert history.terminate() == 0
        with pytest.raises(UnavailableError):
            await lobby.trigger("message", {"text": "lost?"})
        cluster.start("history", port)
        for _ in range(100):
            try:
                after = await lobby.trigger("message", {"text": "two"})
                break
            except UnavailableError:
                await asyncio.sleep(0.1)
        # Nothing was sequenced while history was down; the log goes on where it was.
        assert after.seq == before.seq + 1


async def _gateway_health(cluster: Cluster, service: str) -> int:
    async with grpc.aio.insecure_channel(cluster.gateway) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return response.status


async def test_identity_down_then_back(cluster: Cluster) -> None:
    key_file = cluster.tmp / "phoenix.json"
    async with Client(cluster.gateway, username="phoenix", key_file=key_file) as client:
        assert (await client.whoami()).username == "phoenix"
        identity = cluster.processes["identity"]
        port = identity.port
        assert identity.terminate() == 0

        with pytest.raises(UnavailableError) as caught:
            await client.whoami()
        assert "identity service" in caught.value.message
        assert caught.value.retryable
        service = "parley.identity.v1.IdentityService"
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        await wait_until(lambda: _is(cluster, service, not_serving))

        cluster.start("identity", port)
        await wait_until(lambda: _is(cluster, service, health_pb2.HealthCheckResponse.SERVING))
        assert (await client.whoami()).username == "phoenix"


async def _is(cluster: Cluster, service: str, status: int) -> bool:
    return await _gateway_health(cluster, service) == status


async def test_the_gateway_hands_each_rooms_retention_to_the_history_service(cluster: Cluster) -> None:
    log = cluster.tmp / "data" / "history" / "history.sqlite3"

    def recorded() -> list[tuple[str, str, int, int]]:
        with contextlib.closing(sqlite3.connect(f"file:{log}?mode=ro", uri=True)) as db:
            return db.execute("SELECT room_id, event, keep_last, keep_seconds FROM retention").fetchall()

    # Over SetRetention, at the gateway's start: nothing was published in "news".
    await wait_until(lambda: log.exists() and recorded())
    assert recorded() == [("news", "headline", 2, 86400)]


@pytest.fixture(scope="module")
def short_token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Token times are whole seconds: a 3 s token lives 2 to 3 s.
    settings = {"PARLEY_AUTH_ACCESS_TOKEN_TTL_SECONDS": "3", "PARLEY_AUTH_CLOCK_SKEW_SECONDS": "0"}
    yield from _started_cluster(tmp_path_factory.mktemp("split-short"), settings)


async def test_a_stream_through_the_gateway_lives_as_long_as_its_token(short_token_cluster: Cluster) -> None:
    gateway = short_token_cluster.gateway
    async with (
        Client(gateway, username="ttl", key_file=short_token_cluster.tmp / "ttl.json") as ttl,
        grpc.aio.insecure_channel(gateway) as channel,
    ):
        refreshed = await Stream(channel, await ttl.access_token()).open()
        expiring = await Stream(channel, await ttl.access_token()).open()
        for _ in range(3):  # past the first token's life: only the refreshed stream is left
            await asyncio.sleep(1.1)
            reply = await refreshed.command(refresh=gateway_pb2.RefreshCommand(access_token=await ttl.access_token()))
            assert reply.status.code == 0, reply.status
        ended = await asyncio.wait_for(expiring.ended, 10)
        assert ended is not None
        assert error_reason(ended) == "TOKEN_EXPIRED"
        assert not refreshed.ended.done()
        joined = await refreshed.command(join=gateway_pb2.JoinCommand(room_id="lobby"))
        assert joined.status.code == 0, joined.status
