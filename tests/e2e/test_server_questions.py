"""Server questions (GatewayService.AskClient → client.on_question) and peer discovery (issue 11 parts 4, 5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client, Question
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.values import to_value
from services import allinone
from services.runtime.config import RoomDefinition
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running, wait_until

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")


@pytest.fixture
async def served(data_dir: Path) -> AsyncIterator[tuple[str, gateway_pb2_grpc.GatewayServiceStub]]:
    rooms = [RoomDefinition(id="lobby"), RoomDefinition(id="den"), RoomDefinition(id="quiet", presence=False)]
    async with running(allinone.create_server, make_config(data_dir, rooms=rooms)) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            yield address, gateway_pb2_grpc.GatewayServiceStub(channel)


def ask(
    user_id: str = "", session_id: str = "", topic: str = "confirm", data: object = None
) -> gateway_pb2.AskClientRequest:
    request = gateway_pb2.AskClientRequest(topic=topic, data=to_value(data))
    if session_id:
        request.session_id = session_id
    else:
        request.user_id = user_id
    return request


async def connected(client: Client) -> str:
    """Opens the client's stream; its session id."""
    stream = await client.stream()
    assert stream.welcome is not None
    return stream.welcome.session_id


async def test_a_backend_asks_a_user_and_gets_the_answer(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, gateway = served
    async with Client(address, username="ann", key_file=tmp_path / "a.json") as ann:
        asked: list[Question] = []

        async def answer(question: Question) -> object:
            asked.append(question)
            await asyncio.sleep(0.01)
            return {"topic": question.topic, "echo": question.data, "ok": True}

        ann.on_question(answer)
        session = await connected(ann)
        response = await gateway.AskClient(ask(ann.user_id, data={"n": 1}), metadata=SERVICE, timeout=5)
        assert response.session_id == session
        assert asked[0].topic == "confirm"
        assert asked[0].deadline_ms > 0
        assert (
            gateway_pb2.AskClientResponse(data=to_value({"topic": "confirm", "echo": {"n": 1}, "ok": True})).data
            == response.data
        )
        by_session = await gateway.AskClient(ask(session_id=session, data=2), metadata=SERVICE, timeout=5)
        assert by_session.data.struct_value.fields["echo"].number_value == 2


async def test_no_handler_is_a_clear_error_and_a_slow_one_ends_in_deadline_exceeded(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, gateway = served
    async with Client(address, username="bob", key_file=tmp_path / "b.json") as bo:
        await connected(bo)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.AskClient(ask(bo.user_id), metadata=SERVICE, timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refused.value) == "NO_ANSWER"

        async def failing(question: Question) -> object:
            raise RuntimeError("cannot say")

        bo.on_question(failing)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gateway.AskClient(ask(bo.user_id), metadata=SERVICE, timeout=5)
        assert error_reason(failed.value) == "NO_ANSWER"
        assert "cannot say" in (failed.value.details() or "")

        async def slow(question: Question) -> object:
            await asyncio.sleep(5)
            return "late"

        bo.on_question(slow)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await gateway.AskClient(ask(bo.user_id), metadata=SERVICE, timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    with pytest.raises(grpc.aio.AioRpcError) as offline:
        await gateway.AskClient(ask(bo.user_id), metadata=SERVICE, timeout=5)
    assert offline.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_target:
        await gateway.AskClient(gateway_pb2.AskClientRequest(topic="x"), metadata=SERVICE, timeout=5)
    assert no_target.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_hundred_questions_at_once_each_get_their_own_answer(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, gateway = served
    async with Client(address, username="cyd", key_file=tmp_path / "c.json") as cy:

        async def double(question: Question) -> object:
            await asyncio.sleep(0.001 * (question.data % 7))
            return question.data * 2

        cy.on_question(double)
        await connected(cy)
        answers = await asyncio.gather(
            *(gateway.AskClient(ask(cy.user_id, data=n), metadata=SERVICE, timeout=10) for n in range(100))
        )
        assert [a.data.number_value for a in answers] == [2 * n for n in range(100)]


async def test_a_user_cannot_ask_and_only_services_may(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, gateway = served
    async with Client(address, username="dia", key_file=tmp_path / "d.json") as di:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await gateway.AskClient(ask(di.user_id), metadata=bearer(await di.access_token()), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_peers_are_the_online_users_who_share_a_room_and_their_going_is_told(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, _ = served
    async with (
        Client(address, username="eve", key_file=tmp_path / "e.json") as eve,
        Client(address, username="fay", key_file=tmp_path / "f.json") as fay,
        Client(address, username="gus", key_file=tmp_path / "g.json") as gus,
    ):
        stranger = Client(address, username="hal", key_file=tmp_path / "h.json")
        await stranger.connect()
        await eve.join("lobby")
        await eve.join("den")
        await fay.join("lobby")
        await fay.join("den")
        await gus.join("quiet")
        await stranger.join("quiet")
        peers = {p.user_id: p.room_ids for p in await eve.peers()}
        assert peers == {fay.user_id: ("den", "lobby")}, "only users who share a room; never the caller"
        assert [p.user_id for p in await gus.peers()] == [stranger.user_id]

        gone: list[str] = []
        eve.on_peer_disconnected(gone.append)
        quiet_gone: list[str] = []
        gus.on_peer_disconnected(quiet_gone.append)
        await fay.close()
        await wait_until(lambda: gone == [fay.user_id])
        await stranger.close()
        await asyncio.sleep(0.3)
        assert gone == [fay.user_id], "told once though they shared two rooms"
        assert quiet_gone == [], "a room with presence off says nothing"
        assert await eve.peers() == []


async def test_the_first_of_a_users_connections_to_answer_wins_and_an_ending_one_is_refused(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, gateway = served
    async with Client(address, username="ivy", key_file=tmp_path / "i.json") as laptop:
        laptop.identity.save(tmp_path / "same-device.json")
        async with Client(address, key_file=tmp_path / "same-device.json") as phone:

            async def slow(question: Question) -> object:
                await asyncio.sleep(5)
                return "laptop"

            laptop.on_question(slow)
            phone.on_question(lambda question: "phone")
            await connected(laptop)
            phone_session = await connected(phone)
            started = asyncio.get_running_loop().time()
            answer = await gateway.AskClient(ask(laptop.user_id), metadata=SERVICE, timeout=10)
            assert answer.data.string_value == "phone"
            assert answer.session_id == phone_session
            assert asyncio.get_running_loop().time() - started < 3, "the slow connection is not waited for"

            phone.on_question(slow)
            asking = asyncio.ensure_future(
                gateway.AskClient(ask(session_id=phone_session), metadata=SERVICE, timeout=10)
            )
            await asyncio.sleep(0.3)
            await phone.close()
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await asking
            assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(gone.value) == "SESSION_NOT_FOUND"


async def test_a_peer_who_comes_back_and_goes_again_is_told_again(
    served: tuple[str, gateway_pb2_grpc.GatewayServiceStub], tmp_path: Path
) -> None:
    address, _ = served
    async with Client(address, username="jon", key_file=tmp_path / "j.json") as jon:
        await jon.join("lobby")
        gone: list[str] = []
        jon.on_peer_disconnected(gone.append)
        for round_ in (1, 2):
            async with Client(address, username="kit", key_file=tmp_path / "k.json") as kit:
                await kit.join("lobby")
            await wait_until(lambda round_=round_: len(gone) == round_)
        assert gone == [kit.user_id, kit.user_id]
