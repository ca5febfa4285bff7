"""The client's typed exceptions, one per kind of error, from a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley import (
    AlreadyExistsError,
    Client,
    NotFoundError,
    ParleyError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from parley.identity.v1 import identity_pb2
from services import allinone
from tests.support import make_config, running


async def test_validation_error_names_the_field(server_address: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        await Client(server_address, username="X!", key_file=tmp_path / "x.json").connect()
    assert caught.value.reason == "VALIDATION_FAILED"
    assert caught.value.field == "username"
    assert not caught.value.retryable


async def test_not_found_error(alice: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        await alice.get_user("nobody")
    assert caught.value.reason == "USER_NOT_FOUND"


async def test_already_exists_error(alice: Client, server_address: str, tmp_path: Path) -> None:
    with pytest.raises(AlreadyExistsError) as caught:
        await Client(server_address, username="alice", key_file=tmp_path / "other.json").connect()
    assert caught.value.reason == "USERNAME_TAKEN"


async def test_permission_denied_error(alice: Client) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        await alice._auth.call(alice.identity_stub.RotateSigningKey, identity_pb2.RotateSigningKeyRequest())
    assert caught.value.reason == "SERVICE_ONLY"


async def test_unauthenticated_error(alice: Client, server_address: str) -> None:
    phone = await alice.add_device("phone")
    await alice.revoke_device(phone.device_id)
    with pytest.raises(UnauthenticatedError) as caught:
        await Client(server_address, identity=phone).connect()
    assert caught.value.reason == "DEVICE_REVOKED"


async def test_rate_limited_error(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, **{"auth.challenges_per_minute": 1})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="hank", key_file=tmp_path / "hank.json") as hank:
            with pytest.raises(RateLimitedError) as caught:
                await hank.login()
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retryable
    assert caught.value.retry_after > 0


async def test_unavailable_error_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError) as caught:
        await Client("127.0.0.1:1", username="ivy", key_file=tmp_path / "ivy.json", timeout=2).connect()
    assert caught.value.retryable
    assert isinstance(caught.value, ParleyError)
