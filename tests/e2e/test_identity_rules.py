"""Identity rules through a real all-in-one server and the generated stubs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import jwt
import nacl.signing
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.identity.v1 import identity_pb2
from services import allinone
from tests.support import (
    SERVICE_SECRET,
    bearer,
    error_reason,
    identity_stub,
    make_config,
    running,
    user_on_server,
)


def register_request(identity: DeviceIdentity, username: str | None = None) -> identity_pb2.RegisterUserRequest:
    return identity_pb2.RegisterUserRequest(
        username=identity.username if username is None else username,
        user_signing_key=identity.user_public_key,
        device=identity.certify(identity),
    )


async def expect_error(call: object, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    assert error_reason(caught.value) == reason, caught.value.details()
    return caught.value


async def test_register_login_whoami(server_address: str) -> None:
    identity = DeviceIdentity.generate("carol", "laptop")
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        registered = await stub.RegisterUser(register_request(identity))
        assert registered.user.username == "carol"
        assert registered.device.device_id == identity.device_id
        assert registered.device.display_name == "laptop"
        challenge = await stub.CreateLoginChallenge(
            identity_pb2.CreateLoginChallengeRequest(username="carol", device_id=identity.device_id)
        )
        assert len(challenge.nonce) == 32
        login = await stub.Login(
            identity_pb2.LoginRequest(
                challenge_id=challenge.challenge_id,
                signature=identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id),
            )
        )
        me = await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(login.session.access_token))
    assert (me.user_id, me.username, me.device_id, me.issuer) == (
        registered.user.user_id,
        "carol",
        identity.device_id,
        "parley",
    )
    claims = jwt.decode(login.session.access_token, options={"verify_signature": False})
    assert set(claims) >= {"sub", "dev", "iat", "exp", "jti", "iss"}
    assert claims["sub"] == registered.user.user_id
    assert claims["dev"] == identity.device_id


async def test_duplicate_username_is_already_exists(alice: Client, server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        await expect_error(
            identity_stub(channel).RegisterUser(register_request(DeviceIdentity.generate("alice"))),
            grpc.StatusCode.ALREADY_EXISTS,
            "USERNAME_TAKEN",
        )


@pytest.mark.parametrize("username", ["ab", "x" * 33, "Alice", "al ice", "al!ce", ""])
async def test_bad_username_names_the_field(server_address: str, username: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        error = await expect_error(
            identity_stub(channel).RegisterUser(register_request(DeviceIdentity.generate("valid"), username)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALIDATION_FAILED",
        )
    assert error.details().startswith("username:")


async def test_certificate_from_another_user_key_is_rejected(server_address: str) -> None:
    identity = DeviceIdentity.generate("mallory")
    request = register_request(identity)
    request.user_signing_key = nacl.signing.SigningKey.generate().verify_key.encode()
    async with grpc.aio.insecure_channel(server_address) as channel:
        await expect_error(
            identity_stub(channel).RegisterUser(request), grpc.StatusCode.INVALID_ARGUMENT, "BAD_CERTIFICATE"
        )


async def test_low_order_dh_key_is_rejected(server_address: str) -> None:
    identity = DeviceIdentity.generate("lowkey")
    request = register_request(identity)
    request.device.dh_key = bytes(32)
    async with grpc.aio.insecure_channel(server_address) as channel:
        error = await expect_error(
            identity_stub(channel).RegisterUser(request), grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"
        )
    assert error.details().startswith("device.dh_key:")


async def _challenge(stub: object, identity: DeviceIdentity) -> identity_pb2.CreateLoginChallengeResponse:
    return await stub.CreateLoginChallenge(  # type: ignore[attr-defined,no-any-return]
        identity_pb2.CreateLoginChallengeRequest(username=identity.username, device_id=identity.device_id)
    )


async def test_wrong_signature_is_unauthenticated(alice: Client, server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        challenge = await _challenge(stub, alice.identity)
        other = DeviceIdentity.generate("alice")
        forged = other.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        await expect_error(
            stub.Login(identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=forged)),
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_SIGNATURE",
        )


async def test_nonce_is_single_use(alice: Client, server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        challenge = await _challenge(stub, alice.identity)
        signature = alice.identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        request = identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=signature)
        await stub.Login(request)
        await expect_error(stub.Login(request), grpc.StatusCode.UNAUTHENTICATED, "CHALLENGE_INVALID")


async def test_nonce_is_spent_by_a_failed_attempt(alice: Client, server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        challenge = await _challenge(stub, alice.identity)
        bad = identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=bytes(64))
        await expect_error(stub.Login(bad), grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
        good = alice.identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        await expect_error(
            stub.Login(identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=good)),
            grpc.StatusCode.UNAUTHENTICATED,
            "CHALLENGE_INVALID",
        )


async def test_expired_nonce_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    async with user_on_server(data_dir, tmp_path, "dora", **{"auth.challenge_ttl_seconds": 1}) as (dora, stub):
        challenge = await _challenge(stub, dora.identity)
        await asyncio.sleep(1.2)
        signature = dora.identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        await expect_error(
            stub.Login(identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=signature)),
            grpc.StatusCode.UNAUTHENTICATED,
            "CHALLENGE_EXPIRED",
        )


async def test_expired_token_is_rejected(data_dir: Path, tmp_path: Path) -> None:
    # Token times are whole seconds: a 3 s token lives at least 2 s, enough for the first call on a busy machine.
    settings = {"auth.access_token_ttl_seconds": 3, "auth.clock_skew_seconds": 0}
    async with user_on_server(data_dir, tmp_path, "erin", **settings) as (erin, stub):
        token = await erin.access_token()
        await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(token))
        await asyncio.sleep(4.1)
        await expect_error(
            stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(token)),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_EXPIRED",
        )
        # The client notices the expiry and refreshes by itself.
        assert (await erin.whoami()).username == "erin"


async def test_forged_token_is_rejected(alice: Client, server_address: str) -> None:
    genuine = jwt.decode(await alice.access_token(), options={"verify_signature": False})
    header = jwt.get_unverified_header(await alice.access_token())
    forged = jwt.encode(genuine, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": header["kid"]})
    async with grpc.aio.insecure_channel(server_address) as channel:
        await expect_error(
            identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(forged)),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )


async def test_tampered_token_is_rejected(alice: Client, server_address: str) -> None:
    header, payload, signature = (await alice.access_token()).split(".")
    claims = jwt.utils.base64url_decode(payload).replace(alice.user_id.encode(), b"u" + b"0" * 24)
    tampered = ".".join([header, jwt.utils.base64url_encode(claims).decode(), signature])
    async with grpc.aio.insecure_channel(server_address) as channel:
        await expect_error(
            identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(tampered)),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )


async def test_unsigned_token_is_rejected(alice: Client, server_address: str) -> None:
    claims = jwt.decode(await alice.access_token(), options={"verify_signature": False})
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    async with grpc.aio.insecure_channel(server_address) as channel:
        await expect_error(
            identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(unsigned)),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )


async def test_used_refresh_token_cannot_be_used_again(alice: Client, server_address: str) -> None:
    session = await alice.login()
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        rotated = await stub.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=session.refresh_token))
        assert rotated.session.refresh_token != session.refresh_token
        await expect_error(
            stub.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=session.refresh_token)),
            grpc.StatusCode.UNAUTHENTICATED,
            "REFRESH_TOKEN_REUSED",
        )
        # Reuse revokes the whole session, including the token it was rotated into.
        await expect_error(
            stub.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=rotated.session.refresh_token)),
            grpc.StatusCode.UNAUTHENTICATED,
            "REFRESH_TOKEN_INVALID",
        )


async def test_logout_revokes_refresh_tokens(alice: Client, server_address: str) -> None:
    session = await alice.login()
    assert await alice.logout() >= 1
    async with grpc.aio.insecure_channel(server_address) as channel:
        await expect_error(
            identity_stub(channel).RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=session.refresh_token)),
            grpc.StatusCode.UNAUTHENTICATED,
            "REFRESH_TOKEN_INVALID",
        )


async def test_devices_add_list_revoke(alice: Client, server_address: str, tmp_path: Path) -> None:
    phone = await alice.add_device("phone")
    phone.save(tmp_path / "phone.json")
    async with Client(server_address, key_file=tmp_path / "phone.json") as phone_client:
        assert (await phone_client.whoami()).device_id == phone.device_id
        listed = {d.device_id: d for d in await alice.devices()}
        assert set(listed) == {alice.device_id, phone.device_id}
        assert listed[phone.device_id].display_name == "phone"
        revoked = await alice.revoke_device(phone.device_id)
        assert revoked.revoked
        assert revoked.revoked_at is not None
        assert {d.device_id for d in await alice.devices()} == {alice.device_id}
        assert len(await alice.devices(show_revoked=True)) == 2
        async with grpc.aio.insecure_channel(server_address) as channel:
            await expect_error(
                _challenge(identity_stub(channel), phone),
                grpc.StatusCode.UNAUTHENTICATED,
                "DEVICE_REVOKED",
            )


async def test_lookup_user_public_keys(alice: Client, tmp_path: Path, server_address: str) -> None:
    async with Client(server_address, username="bob", key_file=tmp_path / "bob.json") as bob:
        found = await bob.get_user("alice")
    assert found.user_id == alice.user_id
    assert found.username == "alice"
    assert found.signing_key == alice.identity.user_public_key
    (device,) = found.devices
    assert device.dh_key == alice.identity.device_dh_key.public_key.encode()
    assert device.certificate == alice.identity.certify(alice.identity).certificate


async def test_users_devices_keys_and_sessions_survive_restart(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir)
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="frank", key_file=tmp_path / "frank.json") as frank:
            await frank.add_device("tablet")
            user_id = frank.user_id
            session = await frank.login()
    async with running(allinone.create_server, config) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = identity_stub(channel)
            # The token signed before the restart still verifies: signing keys persisted.
            me = await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(session.access_token))
            assert (me.user_id, me.username) == (user_id, "frank")
            # The refresh token issued before the restart still rotates.
            rotated = await stub.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=session.refresh_token))
            assert rotated.session.access_token
            new_token = bearer(rotated.session.access_token)
            devices = await stub.ListDevices(identity_pb2.ListDevicesRequest(), metadata=new_token)
            assert len(devices.devices) == 2


async def test_concurrent_logins_on_one_challenge_admit_exactly_one(alice: Client, server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        challenge = await _challenge(stub, alice.identity)
        signature = alice.identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        request = identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=signature)
        results = await asyncio.gather(*(stub.Login(request) for _ in range(8)), return_exceptions=True)
    successes = [r for r in results if isinstance(r, identity_pb2.LoginResponse)]
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(successes) == 1
    assert len(failures) == 7
    assert {error_reason(f) for f in failures} == {"CHALLENGE_INVALID"}


async def test_concurrent_refreshes_of_one_token_rotate_once_and_revoke(alice: Client, server_address: str) -> None:
    session = await alice.login()
    request = identity_pb2.RefreshTokenRequest(refresh_token=session.refresh_token)
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        results = await asyncio.gather(*(stub.RefreshToken(request) for _ in range(4)), return_exceptions=True)
        successes = [r for r in results if isinstance(r, identity_pb2.RefreshTokenResponse)]
        failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(successes) == 1
        # One spends it; the next is a reuse, which revokes the family; the rest
        # meet a revoked token.
        assert sorted(error_reason(f) for f in failures) == [
            "REFRESH_TOKEN_INVALID",
            "REFRESH_TOKEN_INVALID",
            "REFRESH_TOKEN_REUSED",
        ]
        # The reuse revoked the family, so the one rotated token is dead too.
        await expect_error(
            stub.RefreshToken(identity_pb2.RefreshTokenRequest(refresh_token=successes[0].session.refresh_token)),
            grpc.StatusCode.UNAUTHENTICATED,
            "REFRESH_TOKEN_INVALID",
        )


async def test_client_recovers_when_the_register_reply_was_lost(server_address: str, tmp_path: Path) -> None:
    identity = DeviceIdentity.generate("lostreply")
    async with grpc.aio.insecure_channel(server_address) as channel:
        await identity_stub(channel).RegisterUser(register_request(identity))  # the reply never reached the file
    assert not identity.registered
    async with Client(server_address, identity=identity) as client:
        assert (await client.whoami()).username == "lostreply"
    assert identity.registered


async def test_key_rotation_keeps_old_tokens_valid(alice: Client, server_address: str) -> None:
    old_token = await alice.access_token()
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        backend = bearer(f"svc:backend:{SERVICE_SECRET}")
        rotated = await stub.RotateSigningKey(identity_pb2.RotateSigningKeyRequest(), metadata=backend)
        keys = await stub.GetVerificationKeys(identity_pb2.GetVerificationKeysRequest())
        assert {k.key_id for k in keys.keys} >= {rotated.key.key_id, jwt.get_unverified_header(old_token)["kid"]}
        assert (await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(old_token))).user_id == alice.user_id
        new_session = await alice.login()
        assert jwt.get_unverified_header(new_session.access_token)["kid"] == rotated.key.key_id
        me = await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(new_session.access_token))
        assert me.user_id == alice.user_id


async def test_service_credentials(alice: Client, server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        stub = identity_stub(channel)
        me = await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(f"svc:backend:{SERVICE_SECRET}"))
        assert me.service_name == "backend"
        assert not me.user_id
        await expect_error(
            stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer("svc:backend:wrong")),
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
        )
        await expect_error(
            stub.RotateSigningKey(identity_pb2.RotateSigningKeyRequest(), metadata=bearer(await alice.access_token())),
            grpc.StatusCode.PERMISSION_DENIED,
            "SERVICE_ONLY",
        )
        await expect_error(
            stub.AddDevice(identity_pb2.AddDeviceRequest(), metadata=bearer(f"svc:backend:{SERVICE_SECRET}")),
            grpc.StatusCode.PERMISSION_DENIED,
            "USER_ONLY",
        )


async def test_app_jwt_issuer_is_accepted(data_dir: Path) -> None:
    app_key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    public_pem = (
        app_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    config = make_config(
        data_dir,
        **{
            "auth.external_jwt.issuer": "https://auth.example.app",
            "auth.external_jwt.audience": "parley",
            "auth.external_jwt.key": public_pem,
            "auth.external_jwt.algorithms": ["EdDSA"],
        },
    )
    now = int(time.time())
    claims = {"iss": "https://auth.example.app", "aud": "parley", "sub": "app-user-7", "iat": now, "exp": now + 60}
    good = jwt.encode(claims, app_key, algorithm="EdDSA")
    wrong_audience = jwt.encode({**claims, "aud": "other"}, app_key, algorithm="EdDSA")
    async with running(allinone.create_server, config) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = identity_stub(channel)
            me = await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(good))
            assert (me.user_id, me.issuer) == ("app-user-7", "https://auth.example.app")
            await expect_error(
                stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(wrong_audience)),
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_INVALID",
            )


async def test_login_challenges_are_rate_limited(data_dir: Path, tmp_path: Path) -> None:
    async with user_on_server(data_dir, tmp_path, "gina", **{"auth.challenges_per_minute": 3}) as (gina, stub):
        for _ in range(2):  # the client's own login took the first one
            await _challenge(stub, gina.identity)
        error = await expect_error(_challenge(stub, gina.identity), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert float(dict(error_metadata(error))["retry_after_seconds"]) > 0


async def test_spoofed_client_address_does_not_escape_the_limit(data_dir: Path, tmp_path: Path) -> None:
    async with user_on_server(data_dir, tmp_path, "ivan", **{"auth.challenges_per_minute": 2}) as (ivan, stub):
        request = identity_pb2.CreateLoginChallengeRequest(username="ivan", device_id=ivan.device_id)
        await stub.CreateLoginChallenge(request, metadata=(("x-parley-client-address", "10.0.0.1"),))
        await expect_error(
            stub.CreateLoginChallenge(request, metadata=(("x-parley-client-address", "10.0.0.2"),)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )


def error_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    from parley.errors import error_from_rpc

    return error_from_rpc(error).metadata
