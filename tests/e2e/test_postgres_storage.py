"""The all-in-one server with its state in PostgreSQL (`storage.url`): a user, a room and its history
outlive a restart on the same database, and a client resumes where it was."""

from __future__ import annotations

from pathlib import Path

import grpc

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from tests.scale_out import fresh_database
from tests.streams import stream
from tests.support import bearer, make_config, running

KEPT = room_pb2.EventDefinition(name="message", history=room_pb2.HistoryPolicy(enabled=True))


async def test_register_publish_restart_and_resume_on_postgresql(tmp_path: Path) -> None:
    with fresh_database() as url:
        # A data directory per run: anything that outlives the restart came from PostgreSQL.
        first = make_config(tmp_path / "data-1", **{"storage.url": url})
        async with running(allinone.create_server, first) as (_, address):
            async with (
                Client(address, username="pat", key_file=tmp_path / "pat.json") as pat,
                grpc.aio.insecure_channel(address) as channel,
            ):
                token = await pat.access_token()
                rooms = room_pb2_grpc.RoomServiceStub(channel)
                await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id="den", events=[KEPT]), metadata=bearer(token))
                async with stream(address, token) as writer:
                    await writer.join("den")
                    async with stream(address, token) as reader:
                        await reader.join("den")
                        for n in (1, 2):
                            await writer.publish("den", "message", {"n": n})
                        seen = [await reader.next_event() for _ in range(2)]
                    # The reader is gone; two more arrive while it is away.
                    for n in (3, 4):
                        await writer.publish("den", "message", {"n": n})
                page = await pat.history("den")
                assert [e.seq for e in page] == [4, 3, 2, 1]
        assert not list((tmp_path / "data-1").glob("*.sqlite3"))

        again = make_config(tmp_path / "data-2", **{"storage.url": url})
        async with running(allinone.create_server, again) as (_, address):
            async with Client(address, username="pat", key_file=tmp_path / "pat.json") as pat:
                assert (await pat.whoami()).username == "pat"  # the same account logs in
                assert (await pat.get_room("den")).creator == pat.user_id
                page = await pat.history("den")
                assert [(e.seq, e.data) for e in page] == [(n, {"n": n}) for n in (4, 3, 2, 1)]
                assert {e.epoch for e in page} == {seen[-1].epoch}
                async with stream(address, await pat.access_token()) as back:
                    resumed = await back.ok(
                        join=gateway_pb2.JoinCommand(room_id="den", since_seq=seen[-1].seq, epoch=seen[-1].epoch)
                    )
                    replay = (await back.next_other("history")).history
                    assert (resumed.join.recovered, replay.recovered) == (True, True)
                    assert [e.seq for e in replay.events] == [3, 4]
                    live = await back.publish("den", "message", {"n": 5})
                    assert list(live.publish.seqs) == [5]
                    assert (await back.next_event()).seq == 5
