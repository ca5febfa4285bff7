"""TokenVerifier: Parley JWTs, key refetching, service credentials, app JWTs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley.hooks import Identity
from services.runtime.config import AuthConfig, ExternalJwtConfig
from services.runtime.errors import ServiceError, unavailable
from services.runtime.principal import Principal
from services.runtime.revocations import RevokedDevices
from services.runtime.tokens import PublishedKey, TokenVerifier, service_token
from tests.support import FakeClock

REFRESH = 5.0
APP_SECRET = "an-app-shared-secret-of-at-least-32-bytes!"


class FakeKeySource:
    """The identity service's published keys; counts fetches."""

    def __init__(self, keys: Mapping[str, bytes | PublishedKey]) -> None:
        self.keys = dict(keys)
        self.fetches = 0
        self.failing = False

    async def fetch(self) -> Mapping[str, PublishedKey]:
        self.fetches += 1
        await asyncio.sleep(0)  # let concurrent callers pile up behind the lock
        if self.failing:
            raise unavailable("identity service down")
        return {k: v if isinstance(v, PublishedKey) else PublishedKey(v) for k, v in self.keys.items()}


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": "parley",
        "sub": "u-alice",
        "dev": "d" + "0" * 32,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def mint(key: Ed25519PrivateKey, kid: str = "k1", **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="EdDSA", headers={"kid": kid})


def auth_config(**changes: Any) -> AuthConfig:
    values: dict[str, Any] = {
        "key_refresh_interval_seconds": REFRESH,
        "service_credentials": {"backend": "s3cret", "colon": "a:b:c"},
    }
    values.update(changes)
    return AuthConfig(**values)


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def source(signing_key: Ed25519PrivateKey) -> FakeKeySource:
    return FakeKeySource({"k1": raw_public(signing_key)})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(source: FakeKeySource, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(auth_config(), source, clock=clock)


async def rejected(verifier: TokenVerifier, token: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        await verifier.verify(token)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    return caught.value


# --- Parley tokens -------------------------------------------------------------------


async def test_valid_token_gives_principal(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    token_claims = claims(sub="u-1", dev="d-1", jti="j-1")
    token = jwt.encode(token_claims, signing_key, algorithm="EdDSA", headers={"kid": "k1"})
    principal = await verifier.verify(token)
    assert principal == Principal(
        user_id="u-1", device_id="d-1", issuer="parley", token_id="j-1", expires_at=float(token_claims["exp"])
    )
    assert principal.is_service is False


async def test_known_key_is_cached(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, source: FakeKeySource, clock: FakeClock
) -> None:
    await verifier.verify(mint(signing_key))
    assert source.fetches == 1
    await verifier.verify(mint(signing_key))
    clock.advance(REFRESH * 10)  # a cached key is used however old the cache is
    await verifier.verify(mint(signing_key))
    assert source.fetches == 1


async def test_unknown_kid_refetches_at_most_once_per_interval(
    verifier: TokenVerifier, source: FakeKeySource, clock: FakeClock
) -> None:
    other = Ed25519PrivateKey.generate()
    token = mint(other, kid="k2")
    error = await rejected(verifier, token)
    assert error.reason == "TOKEN_INVALID"
    assert "k2" in error.message
    assert source.fetches == 1

    for _ in range(5):
        await rejected(verifier, token)
    clock.advance(REFRESH - 0.01)
    await rejected(verifier, token)
    assert source.fetches == 1  # still inside the interval: no refetch

    clock.advance(0.01)
    await rejected(verifier, token)
    assert source.fetches == 2  # interval elapsed: exactly one more fetch
    await rejected(verifier, token)
    assert source.fetches == 2


async def test_rotated_key_is_picked_up_after_the_interval(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, source: FakeKeySource, clock: FakeClock
) -> None:
    await verifier.verify(mint(signing_key))  # initial fetch, k1 only
    new_key = Ed25519PrivateKey.generate()
    source.keys["k2"] = raw_public(new_key)
    token = mint(new_key, kid="k2", sub="u-bob")

    # Just after the first fetch the verifier may not ask again.
    assert (await rejected(verifier, token)).reason == "TOKEN_INVALID"
    assert source.fetches == 1

    clock.advance(REFRESH)
    assert (await verifier.verify(token)).user_id == "u-bob"
    assert source.fetches == 2
    # Both keys are now cached.
    await verifier.verify(mint(signing_key))
    await verifier.verify(token)
    assert source.fetches == 2


async def test_key_no_longer_published_is_dropped_on_refetch(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, source: FakeKeySource, clock: FakeClock
) -> None:
    await verifier.verify(mint(signing_key))
    new_key = Ed25519PrivateKey.generate()
    source.keys = {"k2": raw_public(new_key)}
    clock.advance(REFRESH)
    await verifier.verify(mint(new_key, kid="k2"))
    assert source.fetches == 2
    assert (await rejected(verifier, mint(signing_key))).reason == "TOKEN_INVALID"


async def test_cache_is_refreshed_after_key_cache_seconds(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, source: FakeKeySource, clock: FakeClock
) -> None:
    await verifier.verify(mint(signing_key))
    source.keys = {}  # the key was withdrawn
    clock.advance(AuthConfig().key_cache_seconds)
    assert (await rejected(verifier, mint(signing_key))).reason == "TOKEN_INVALID"
    assert source.fetches == 2


async def test_failed_refresh_keeps_the_cached_keys_and_backs_off(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, source: FakeKeySource, clock: FakeClock
) -> None:
    await verifier.verify(mint(signing_key))
    source.failing = True
    clock.advance(AuthConfig().key_cache_seconds)
    assert (await verifier.verify(mint(signing_key))).user_id == "u-alice"  # stale but usable
    unknown = mint(Ed25519PrivateKey.generate(), kid="k9")
    for _ in range(5):
        assert (await rejected(verifier, unknown)).reason == "TOKEN_INVALID"
    assert source.fetches == 2  # the failed fetch started the back-off window
    clock.advance(REFRESH)
    with pytest.raises(ServiceError) as caught:  # an unknown key id with nobody to ask
        await verifier.verify(unknown)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == "SERVICE_UNAVAILABLE"
    assert source.fetches == 3


async def test_retired_key_only_verifies_tokens_that_expire_before_it(
    signing_key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    now = time.time()
    source = FakeKeySource({"k1": PublishedKey(raw_public(signing_key), expires_at=now + 60)})
    verifier = TokenVerifier(auth_config(), source, clock=clock)
    assert (await verifier.verify(mint(signing_key, exp=int(now + 30)))).user_id == "u-alice"
    late = await rejected(verifier, mint(signing_key, exp=int(now + 3600)))
    assert late.reason == "TOKEN_INVALID"
    assert "outlives" in late.message


async def test_concurrent_unknown_kids_share_one_fetch(verifier: TokenVerifier, source: FakeKeySource) -> None:
    other = Ed25519PrivateKey.generate()
    tokens = [mint(other, kid=f"unknown-{i}") for i in range(10)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, ServiceError) and r.reason == "TOKEN_INVALID" for r in results)
    assert source.fetches == 1


async def test_concurrent_first_use_fetches_once(signing_key: Ed25519PrivateKey) -> None:
    source = FakeKeySource({"k1": raw_public(signing_key)})
    fresh = TokenVerifier(auth_config(), source, clock=FakeClock())
    principals = await asyncio.gather(*(fresh.verify(mint(signing_key, sub=f"u{i}")) for i in range(10)))
    assert [p.user_id for p in principals] == [f"u{i}" for i in range(10)]
    assert source.fetches == 1


async def test_missing_kid_is_rejected(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    token = jwt.encode(claims(), signing_key, algorithm="EdDSA")
    assert (await rejected(verifier, token)).reason == "TOKEN_INVALID"


async def test_forged_signature_is_rejected(verifier: TokenVerifier) -> None:
    mallory = Ed25519PrivateKey.generate()
    error = await rejected(verifier, mint(mallory, kid="k1"))
    assert error.reason == "TOKEN_INVALID"


async def test_tampered_payload_is_rejected(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    header, _, signature = mint(signing_key, sub="u-alice").split(".")
    other_payload = mint(signing_key, sub="u-admin").split(".")[1]
    error = await rejected(verifier, f"{header}.{other_payload}.{signature}")
    assert error.reason == "TOKEN_INVALID"


async def test_expired_token(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    error = await rejected(verifier, mint(signing_key, iat=now - 600, exp=now - 60))
    assert error.reason == "TOKEN_EXPIRED"


async def test_expiry_allows_clock_skew(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    # Default skew tolerance is 5 s: a token 2 s past expiry still passes.
    principal = await verifier.verify(mint(signing_key, iat=now - 300, exp=now - 2))
    assert principal.expires_at == now - 2


async def test_token_issued_in_the_future_is_rejected(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    error = await rejected(verifier, mint(signing_key, iat=now + 3600, exp=now + 7200))
    assert error.reason == "TOKEN_INVALID"


async def test_wrong_issuer_is_rejected_without_fetching(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, source: FakeKeySource
) -> None:
    error = await rejected(verifier, mint(signing_key, iss="evil"))
    assert error.reason == "TOKEN_INVALID"
    assert "evil" in error.message
    assert source.fetches == 0


async def test_missing_issuer_is_rejected(verifier: TokenVerifier, signing_key: Ed25519PrivateKey) -> None:
    assert (await rejected(verifier, mint(signing_key, iss=None))).reason == "TOKEN_INVALID"


@pytest.mark.parametrize("claim", ["sub", "dev", "iat", "exp", "jti"])
async def test_missing_required_claim(verifier: TokenVerifier, signing_key: Ed25519PrivateKey, claim: str) -> None:
    token = jwt.encode(claims(**{claim: None}), signing_key, algorithm="EdDSA", headers={"kid": "k1"})
    assert claim not in jwt.decode(token, options={"verify_signature": False})
    error = await rejected(verifier, token)
    assert error.reason == "TOKEN_INVALID"


async def test_hs256_with_public_key_as_secret_is_rejected(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey
) -> None:
    # Algorithm confusion: only EdDSA is accepted for Parley tokens.
    secret = raw_public(signing_key) * 2
    token = jwt.encode(claims(), secret, algorithm="HS256", headers={"kid": "k1"})
    assert (await rejected(verifier, token)).reason == "TOKEN_INVALID"


async def test_unsigned_token_is_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": "k1"})
    assert (await rejected(verifier, token)).reason == "TOKEN_INVALID"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9..", "Bearer x"])
async def test_malformed_tokens(verifier: TokenVerifier, token: str) -> None:
    assert (await rejected(verifier, token)).reason == "TOKEN_INVALID"


async def test_custom_issuer(source: FakeKeySource, clock: FakeClock, signing_key: Ed25519PrivateKey) -> None:
    verifier = TokenVerifier(auth_config(issuer="parley-eu"), source, clock=clock)
    assert (await verifier.verify(mint(signing_key, iss="parley-eu"))).issuer == "parley-eu"
    assert (await rejected(verifier, mint(signing_key, iss="parley"))).reason == "TOKEN_INVALID"


# --- service credentials --------------------------------------------------------


async def test_service_credentials_accepted(verifier: TokenVerifier, source: FakeKeySource) -> None:
    principal = await verifier.verify(service_token("backend", "s3cret"))
    assert principal == Principal(service_name="backend", issuer="service")
    assert principal.is_service is True
    assert principal.user_id == ""
    assert source.fetches == 0


def test_service_token_format() -> None:
    assert service_token("backend", "s3cret") == "svc:backend:s3cret"


async def test_service_secret_may_contain_colons(verifier: TokenVerifier) -> None:
    assert (await verifier.verify("svc:colon:a:b:c")).service_name == "colon"


@pytest.mark.parametrize(
    "token",
    [
        "svc:backend:wrong",
        "svc:backend:s3cret ",
        "svc:backend:S3CRET",
        "svc:backend:",
        "svc:backend",
        "svc:nobody:s3cret",
        "svc:nobody:",  # unknown name and empty secret: "" == "" must not pass
        "svc::",
        "svc:",
        "svc:colon:a:b",
    ],
)
async def test_bad_service_credentials(verifier: TokenVerifier, token: str) -> None:
    error = await rejected(verifier, token)
    assert error.reason == "TOKEN_INVALID"
    assert "s3cret" not in error.message


async def test_no_service_credentials_configured(source: FakeKeySource, clock: FakeClock) -> None:
    verifier = TokenVerifier(AuthConfig(), source, clock=clock)
    assert (await rejected(verifier, "svc:backend:s3cret")).reason == "TOKEN_INVALID"


# --- app (external) JWTs ----------------------------------------------------------


def app_token(**changes: Any) -> str:
    now = int(time.time())
    values: dict[str, Any] = {"iss": "https://app.example", "aud": "parley", "sub": "app-user-7", "exp": now + 300}
    values.update(changes)
    payload = {k: v for k, v in values.items() if v is not None}
    return jwt.encode(payload, APP_SECRET, algorithm="HS256")


def external_config(**changes: Any) -> AuthConfig:
    values: dict[str, Any] = {
        "issuer": "https://app.example",
        "audience": "parley",
        "key": APP_SECRET,
        "algorithms": ["HS256"],
    }
    values.update(changes)
    return auth_config(external_jwt=ExternalJwtConfig(**values))


async def test_external_jwt_accepted(source: FakeKeySource, clock: FakeClock) -> None:
    verifier = TokenVerifier(external_config(), source, clock=clock)
    principal = await verifier.verify(app_token())
    assert principal.user_id == "app-user-7"
    assert principal.issuer == "https://app.example"
    assert principal.device_id == ""
    assert source.fetches == 0


async def test_external_jwt_key_file(source: FakeKeySource, clock: FakeClock, tmp_path: Path) -> None:
    key_file = tmp_path / "app.key"
    key_file.write_text(APP_SECRET)
    verifier = TokenVerifier(external_config(key="", key_file=str(key_file)), source, clock=clock)
    assert (await verifier.verify(app_token())).user_id == "app-user-7"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "someone-else"}, "TOKEN_INVALID"),
        ({"aud": None}, "TOKEN_INVALID"),
        ({"sub": None}, "TOKEN_INVALID"),
        ({"exp": None}, "TOKEN_INVALID"),
        ({"exp": 1_000_000}, "TOKEN_EXPIRED"),
    ],
)
async def test_external_jwt_rejections(
    source: FakeKeySource, clock: FakeClock, changes: dict[str, Any], reason: str
) -> None:
    verifier = TokenVerifier(external_config(), source, clock=clock)
    assert (await rejected(verifier, app_token(**changes))).reason == reason


async def test_external_jwt_wrong_secret(source: FakeKeySource, clock: FakeClock) -> None:
    verifier = TokenVerifier(external_config(key="a-different-secret-that-is-long-enough!!"), source, clock=clock)
    assert (await rejected(verifier, app_token())).reason == "TOKEN_INVALID"


async def test_external_jwt_algorithm_not_allowed(source: FakeKeySource, clock: FakeClock) -> None:
    verifier = TokenVerifier(external_config(algorithms=["RS256"]), source, clock=clock)
    assert (await rejected(verifier, app_token())).reason == "TOKEN_INVALID"


async def test_external_issuer_ignored_when_disabled(verifier: TokenVerifier) -> None:
    error = await rejected(verifier, app_token())
    assert error.reason == "TOKEN_INVALID"
    assert "not trusted" in error.message


async def test_authenticate_hook_cannot_name_an_empty_user(source: FakeKeySource) -> None:
    async def hook(token: str) -> Identity:
        return Identity(user_id="")

    verifier = TokenVerifier(auth_config(), source, authenticate=hook)
    with pytest.raises(ServiceError) as refused:
        await verifier.verify("whatever")
    assert refused.value.reason == "TOKEN_INVALID"


# --- Revoked devices ---------------------------------------------------------------


async def test_tokens_of_a_revoked_device_are_refused(
    verifier: TokenVerifier, signing_key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    token = mint(signing_key, dev="d-stolen")
    assert (await verifier.verify(token)).device_id == "d-stolen"
    assert verifier.revoked_devices.add("d-stolen")
    assert not verifier.revoked_devices.add("d-stolen")  # known already
    error = await rejected(verifier, token)
    assert error.reason == "DEVICE_REVOKED"
    assert (await verifier.verify(mint(signing_key, dev="d-other"))).device_id == "d-other"


def test_revoked_devices_are_forgotten_once_their_tokens_must_have_expired() -> None:
    clock = FakeClock()
    revoked = RevokedDevices(keep_seconds=600, clock=clock)
    revoked.add("d-old")
    clock.advance(599)
    revoked.add("d-new")
    assert "d-old" in revoked
    clock.advance(2)
    revoked.add("d-newer")
    assert "d-old" not in revoked
    assert len(revoked) == 2


def test_many_revocations_are_recorded_in_linear_time() -> None:
    clock = FakeClock()
    revoked = RevokedDevices(keep_seconds=600, clock=clock)
    for n in range(50_000):
        revoked.add(f"d{n}")
        clock.advance(0.024)  # 50,000 over 1,200 s: the older half has aged out
    assert 24_000 <= len(revoked) <= 26_000
    assert "d49999" in revoked
    assert "d0" not in revoked
