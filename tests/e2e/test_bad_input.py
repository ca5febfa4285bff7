"""Malformed, oversized and incomplete requests get clear errors; the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.identity.v1 import identity_pb2
from services import allinone
from tests.support import error_reason, identity_stub, make_config, running

MAX_BYTES = 64 * 1024


@pytest.fixture
async def small_server(data_dir: Path) -> AsyncIterator[str]:
    async with running(allinone.create_server, make_config(data_dir, **{"server.max_message_bytes": MAX_BYTES})) as (
        _,
        address,
    ):
        yield address


async def assert_still_serving(channel: grpc.aio.Channel) -> None:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    keys = await identity_stub(channel).GetVerificationKeys(identity_pb2.GetVerificationKeysRequest())
    assert keys.keys


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x0a\x80", b"\x12\x05ab"])
async def test_malformed_bytes_are_invalid_argument(small_server: str, garbage: bytes) -> None:
    async with grpc.aio.insecure_channel(small_server) as channel:
        raw = channel.unary_unary("/parley.identity.v1.IdentityService/RegisterUser", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(garbage)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "MALFORMED_REQUEST"
        assert "not a valid protobuf message" in (caught.value.details() or "")
        await assert_still_serving(channel)


async def test_oversized_message_is_rejected(small_server: str) -> None:
    async with grpc.aio.insecure_channel(
        small_server, options=[("grpc.max_send_message_length", 4 * MAX_BYTES)]
    ) as channel:
        request = identity_pb2.RegisterUserRequest(username="big", user_signing_key=b"x" * (2 * MAX_BYTES))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity_stub(channel).RegisterUser(request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (caught.value.details() or "")
        await assert_still_serving(channel)


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        ("CreateLoginChallenge", identity_pb2.CreateLoginChallengeRequest(device_id="d1"), "username"),
        ("CreateLoginChallenge", identity_pb2.CreateLoginChallengeRequest(username="alice"), "device_id"),
        ("Login", identity_pb2.LoginRequest(signature=b"s" * 64), "challenge_id"),
        ("Login", identity_pb2.LoginRequest(challenge_id="c"), "signature"),
        ("RefreshToken", identity_pb2.RefreshTokenRequest(), "refresh_token"),
        ("RegisterUser", identity_pb2.RegisterUserRequest(username="alice"), "user_signing_key"),
        ("GetUser", identity_pb2.GetUserRequest(), "lookup"),
    ],
)
async def test_missing_fields_are_named(
    small_server: str, alice_token: str, method: str, request_message: object, field: str
) -> None:
    async with grpc.aio.insecure_channel(small_server) as channel:
        call = getattr(identity_stub(channel), method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request_message, metadata=(("authorization", f"Bearer {alice_token}"),))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "VALIDATION_FAILED"
        assert (caught.value.details() or "").startswith(f"{field}:")
        await assert_still_serving(channel)


@pytest.fixture
async def alice_token(small_server: str, tmp_path: Path) -> str:
    from parley.client import Client

    async with Client(small_server, username="alice", key_file=tmp_path / "alice.json") as alice:
        return await alice.access_token()


async def test_bad_authorization_header_is_unauthenticated(small_server: str) -> None:
    async with grpc.aio.insecure_channel(small_server) as channel:
        for metadata in [(), (("authorization", "Basic abc"),), (("authorization", "Bearer not-a-jwt"),)]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_reason(caught.value) in {"TOKEN_MISSING", "TOKEN_INVALID"}
        await assert_still_serving(channel)
