"""A deleted room's history is gone; a room re-created with the same id starts a new log (issue 8, item 2)."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.values import to_value
from services import allinone
from services.room.registry import DELETED, RoomRegistry
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import payload_of, stream
from tests.support import SERVICE_SECRET, ServerProcess, bearer, error_reason, make_config, running, wait_until

ROOM = "attic"
SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")
EMPTY = {"epoch": "", "last_seq": 0, "page": [], "since": []}
KEPT = room_pb2.EventDefinition(name="*", history=room_pb2.HistoryPolicy(enabled=True))


async def create_kept_room(address: str, client: Client) -> room_pb2.Room:
    async with grpc.aio.insecure_channel(address) as channel:
        request = room_pb2.CreateRoomRequest(room_id=ROOM, events=[KEPT])
        response = await room_pb2_grpc.RoomServiceStub(channel).CreateRoom(
            request, metadata=bearer(await client.access_token())
        )
    return response.room


def note(text: str, key: str = "") -> gateway_pb2.OutgoingEvent:
    return gateway_pb2.OutgoingEvent(event="note", payload=to_value({"text": text}), idempotency_key=key)


async def publish(address: str, client: Client, *events: gateway_pb2.OutgoingEvent) -> gateway_pb2.PublishResult:
    async with stream(address, await client.access_token()) as connection:
        await connection.join(ROOM)
        reply = await connection.ok(publish=gateway_pb2.PublishCommand(room_id=ROOM, events=events))
        return reply.publish


async def history_of(address: str, client: Client) -> dict[str, Any]:
    """What the history service serves about the room: its log state, a page, and everything since 0."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        token = bearer(await client.access_token())
        state = await stub.GetLogState(history_pb2.GetLogStateRequest(room_id=ROOM), metadata=token)
        page = await stub.ListEvents(history_pb2.ListEventsRequest(room_id=ROOM), metadata=token)
        since = await stub.ListEventsSince(history_pb2.ListEventsSinceRequest(room_id=ROOM), metadata=token)
    return {
        "epoch": state.state.epoch,
        "last_seq": state.state.last_seq,
        "page": [payload_of_logged(e) for e in page.events],
        "since": [payload_of_logged(e) for e in since.events],
    }


def payload_of_logged(event: history_pb2.LoggedEvent) -> Any:
    return json_format.MessageToDict(event.payload)


async def backend_append(
    address: str, text: str, service: tuple[tuple[str, str], ...] = SERVICE
) -> history_pb2.AppendEventsResponse:
    event = history_pb2.NewEvent(event="note", payload=to_value({"text": text}), sender="ops", handle=text)
    async with grpc.aio.insecure_channel(address) as channel:
        return await history_pb2_grpc.HistoryServiceStub(channel).AppendEvents(
            history_pb2.AppendEventsRequest(room_id=ROOM, events=[event]), metadata=service
        )


async def delete_then_recreate(
    address: str, olive: Client, pete: Client, service: tuple[tuple[str, str], ...] = SERVICE
) -> None:
    """Olive's room, with kept events, deleted; Pete re-creates the id: nothing of Olive's comes back."""
    await create_kept_room(address, olive)
    await publish(address, olive, note("olive 1", key="k1"), note("olive 2"), note("olive 3"))
    before = await history_of(address, olive)
    assert before["last_seq"] == 3
    old_epoch = before["epoch"]

    await olive.delete_room(ROOM)
    assert await history_of(address, olive) == EMPTY
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # a publish racing the deletion
        await backend_append(address, "late", service)
    assert (refused.value.code(), error_reason(refused.value)) == (grpc.StatusCode.NOT_FOUND, "ROOM_NOT_FOUND")

    room = await create_kept_room(address, pete)
    assert room.creator == pete.user_id
    # The same sender and idempotency key as an event of the old log: a new event, not a duplicate.
    retried = await publish(address, olive, note("olive again", key="k1"))
    await publish(address, pete, note("pete 1"))
    assert list(retried.seqs) == [1]
    after = await history_of(address, pete)
    assert after["epoch"] not in ("", old_epoch)
    assert after["last_seq"] == 2
    assert after["since"] == [{"text": "olive again"}, {"text": "pete 1"}]

    # A client that saw the old room resumes from its start: nothing of the old log is replayed.
    async with stream(address, await olive.access_token()) as connection:
        join = gateway_pb2.JoinCommand(room_id=ROOM, epoch=old_epoch, since_seq=0, resume=True)
        joined = (await connection.ok(join=join)).join
        replay = (await connection.next_other("history")).history
    assert joined.epoch == after["epoch"] != old_epoch
    assert not joined.recovered
    assert [payload_of(e) for e in replay.events] == []


async def test_a_deleted_room_is_gone_with_its_history(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with (
            Client(address, username="olive", key_file=tmp_path / "olive.json") as olive,
            Client(address, username="pete", key_file=tmp_path / "pete.json") as pete,
        ):
            await delete_then_recreate(address, olive, pete)


async def test_a_room_declared_with_a_deleted_rooms_id_syncs_none_of_its_events(data_dir: Path, tmp_path: Path) -> None:
    """Run-time rooms have no sync_history_on_join: a config room taking the id after a restart has."""
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, username="olive", key_file=tmp_path / "olive.json") as olive:
            await create_kept_room(address, olive)
            await publish(address, olive, note("olive 1"), note("olive 2"))
            await olive.delete_room(ROOM)
    declared = RoomDefinition(
        id=ROOM, events=[EventDefinition(name="*", history=HistorySettings(enabled=True))], sync_history_on_join=True
    )
    async with running(allinone.create_server, make_config(data_dir, rooms=[declared])) as (_, address):
        async with Client(address, username="pete", key_file=tmp_path / "pete.json") as pete:
            await publish(address, pete, note("pete 1"))
            async with stream(address, await pete.access_token()) as connection:
                joined = (await connection.join(ROOM)).join
                synced = (await connection.next_other("history")).history
    assert synced.kind == gateway_pb2.HistoryBatch.KIND_SYNC
    assert [payload_of(e) for e in synced.events] == [{"text": "pete 1"}]
    assert joined.last_seq == 1


async def test_a_deleted_rooms_log_stays_closed_to_appends(data_dir: Path, tmp_path: Path) -> None:
    """What a gateway that has not heard of the deletion yet would append is refused, and nothing is readable."""
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, username="olive", key_file=tmp_path / "olive.json") as olive:
            await create_kept_room(address, olive)
            await publish(address, olive, note("olive 1"))
            await olive.delete_room(ROOM)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await backend_append(address, "late")
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_reason(refused.value) == "ROOM_NOT_FOUND"
            async with grpc.aio.insecure_channel(address) as channel:
                history = history_pb2_grpc.HistoryServiceStub(channel)
                edit = history_pb2.EditEventRequest(room_id=ROOM, handle="late", payload=to_value("x"))
                with pytest.raises(grpc.aio.AioRpcError) as not_edited:
                    await history.EditEvent(edit, metadata=SERVICE)
            assert error_reason(not_edited.value) == "ROOM_NOT_FOUND"
            assert await history_of(address, olive) == EMPTY


async def test_a_publish_racing_a_deletion_gets_room_not_found(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway still has the room's rules and the member (it never hears of the deletion here)."""
    announce = RoomRegistry._announce

    def announce_all_but_deletions(registry: RoomRegistry, change: room_pb2.RoomChange) -> None:
        if change.kind != DELETED:
            announce(registry, change)

    monkeypatch.setattr(RoomRegistry, "_announce", announce_all_but_deletions)
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, username="olive", key_file=tmp_path / "olive.json") as olive:
            await create_kept_room(address, olive)
            async with stream(address, await olive.access_token()) as connection:
                await connection.join(ROOM)
                await connection.ok(publish=gateway_pb2.PublishCommand(room_id=ROOM, events=[note("before")]))
                await olive.delete_room(ROOM)
                reply = await connection.command(
                    publish=gateway_pb2.PublishCommand(room_id=ROOM, events=[note("after")])
                )
            assert reply.status.code == grpc.StatusCode.NOT_FOUND.value[0], reply.status
            assert reply.status.reason == "ROOM_NOT_FOUND", reply.status
            assert await history_of(address, olive) == EMPTY


async def test_a_room_created_over_a_backend_written_log_adopts_it(data_dir: Path, tmp_path: Path) -> None:
    """A log a backend wrote to an id that is no room is not a deleted room's: creating the room keeps it."""
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        written = await backend_append(address, "from the backend")
        async with Client(address, username="pete", key_file=tmp_path / "pete.json") as pete:
            await create_kept_room(address, pete)
            published = await publish(address, pete, note("pete 1"))
            kept = await history_of(address, pete)
    assert list(published.seqs) == [2]
    assert kept["epoch"] == written.epoch
    assert kept["since"] == [{"text": "from the backend"}, {"text": "pete 1"}]


# Split mode: five processes, history started before the room service (which calls it).
PEERS = ("identity", "history", "room", "file")


@dataclasses.dataclass
class Split:
    tmp: Path
    env: dict[str, str]
    processes: dict[str, ServerProcess] = dataclasses.field(default_factory=dict)

    def start(self, name: str, port: int = 0) -> ServerProcess:
        args = [name, "--port", str(port), "--data-dir", str(self.tmp / "data" / name)]
        self.processes[name] = ServerProcess(args, dict(self.env), self.tmp / f"{name}.log")
        return self.processes[name]


@pytest.fixture
def split(tmp_path: Path) -> Iterator[Split]:
    env = {"PARLEY_AUTH_SERVICE_CREDENTIALS": "parley=deletion-test-secret", "PARLEY_SERVER_GRACE_SECONDS": "1"}
    cluster = Split(tmp_path, env)
    try:
        for name in PEERS:
            env[f"PARLEY_PEERS_{name.upper()}"] = cluster.start(name).address
        cluster.start("gateway")
        yield cluster
    finally:
        for process in cluster.processes.values():  # all stop at once, then each is waited for
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for process in cluster.processes.values():
            process.terminate()


async def test_split_mode_deletes_the_history_too(split: Split, tmp_path: Path) -> None:
    address = split.processes["gateway"].address
    async with (
        Client(address, username="olive", key_file=tmp_path / "olive.json") as olive,
        Client(address, username="pete", key_file=tmp_path / "pete.json") as pete,
    ):
        await delete_then_recreate(address, olive, pete, bearer("svc:parley:deletion-test-secret"))

        # Without the history service, a room cannot be deleted: it stays, with its log.
        history = split.processes["history"]
        port = history.port
        assert history.terminate() == 0
        async with grpc.aio.insecure_channel(address) as channel:
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            token = bearer(await pete.access_token())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rooms.DeleteRoom(room_pb2.DeleteRoomRequest(room_id=ROOM), metadata=token)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(refused.value) == "SERVICE_UNAVAILABLE"
            assert (await rooms.GetRoom(room_pb2.GetRoomRequest(room_id=ROOM), metadata=token)).room.room_id == ROOM
        split.start("history", port)

        async def log_kept() -> bool:
            try:
                return bool((await history_of(address, pete))["last_seq"] == 2)
            except grpc.aio.AioRpcError:
                return False  # the gateway has not reached the restarted history service yet

        await wait_until(log_kept)
