"""Identity's rules hold under concurrency, with two identity storages on one database (or one SQLite file),
as two processes would be: a login challenge is used once, a refresh token rotates once (a second use
revokes its session), a logout or a revocation leaves no token of the session alive, limits hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parley.device_identity import DeviceIdentity
from services.identity.accounts import Accounts
from services.identity.sessions import IssuedSession, SessionIssuer
from services.identity.storage import DeviceRow, IdentityStorage, UserRow, open_identity_storage
from services.identity.token_signing import TokenSigner
from services.runtime.config import AuthConfig
from services.runtime.errors import ServiceError
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]

AUTH = AuthConfig(challenges_per_minute=10_000)


@dataclass
class Process:
    """What one identity process holds: its storage, and the domain objects over it."""

    storage: IdentityStorage
    accounts: Accounts
    sessions: SessionIssuer


@pytest.fixture
async def processes(storage_url: str, tmp_path: Path) -> AsyncIterator[list[Process]]:
    opened = []
    try:
        for _ in range(2):
            storage = await open_identity_storage(storage_config(tmp_path, storage_url))
            signer = TokenSigner(storage, AUTH)
            await signer.load()
            opened.append(Process(storage, Accounts(storage), SessionIssuer(storage, signer, AUTH)))
        yield opened
    finally:
        for process in opened:
            await process.storage.close()


async def register(process: Process, name: str) -> tuple[DeviceIdentity, UserRow, DeviceRow]:
    identity = DeviceIdentity.generate(name)
    user, device = await process.accounts.register(name, identity.user_public_key, identity.certify(identity))
    identity.user_id = user.user_id
    return identity, user, device


async def log_in(process: Process, identity: DeviceIdentity) -> IssuedSession:
    challenge = await process.sessions.create_challenge(identity.username, identity.device_id, "test")
    signature = identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
    _, session = await process.sessions.login(challenge.challenge_id, signature)
    return session


async def outcomes(calls: list[Awaitable[Any]]) -> tuple[list[Any], list[str]]:
    """The results of calls made at once, and the reasons of those refused."""
    done = await asyncio.gather(*calls, return_exceptions=True)
    for each in done:
        if isinstance(each, BaseException) and not isinstance(each, ServiceError):
            raise each
    return [r for r in done if not isinstance(r, ServiceError)], [r.reason for r in done if isinstance(r, ServiceError)]


def spread(processes: list[Process], count: int, call: Callable[[Process], Awaitable[Any]]) -> list[Awaitable[Any]]:
    return [call(processes[n % len(processes)]) for n in range(count)]


async def test_a_login_challenge_is_used_once_however_many_present_it(processes: list[Process]) -> None:
    identity, _, _ = await register(processes[0], "ann")
    challenge = await processes[0].sessions.create_challenge("ann", identity.device_id, "test")
    signature = identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)

    logged_in, refused = await outcomes(
        spread(processes, 12, lambda p: p.sessions.login(challenge.challenge_id, signature))
    )
    assert len(logged_in) == 1
    assert refused == ["CHALLENGE_INVALID"] * 11


async def test_a_refresh_token_rotates_once_and_a_second_use_ends_the_session(processes: list[Process]) -> None:
    identity, _, _ = await register(processes[0], "bob")
    session = await log_in(processes[1], identity)

    rotated, refused = await outcomes(spread(processes, 10, lambda p: p.sessions.refresh(session.refresh_token)))
    assert len(rotated) == 1
    assert "REFRESH_TOKEN_REUSED" in refused
    assert set(refused) <= {"REFRESH_TOKEN_REUSED", "REFRESH_TOKEN_INVALID"}
    # The reuse revoked the whole session: the one successor is dead too.
    with pytest.raises(ServiceError) as successor:
        await processes[0].sessions.refresh(rotated[0].refresh_token)
    assert successor.value.reason == "REFRESH_TOKEN_INVALID"


async def test_a_logout_racing_a_refresh_leaves_no_token_of_the_session_alive(processes: list[Process]) -> None:
    identity, user, device = await register(processes[0], "cyd")
    for _ in range(15):
        session = await log_in(processes[0], identity)
        refreshed, _ = await outcomes(
            [
                processes[0].sessions.refresh(session.refresh_token),
                processes[1].sessions.logout(user.user_id, device.device_id, session.refresh_token),
            ]
        )
        for successor in (r for r in refreshed if isinstance(r, IssuedSession)):
            with pytest.raises(ServiceError) as dead:
                await processes[1].sessions.refresh(successor.refresh_token)
            assert dead.value.reason == "REFRESH_TOKEN_INVALID"


async def test_a_revoked_device_keeps_no_session_even_one_rotating_meanwhile(processes: list[Process]) -> None:
    owner, user, first = await register(processes[0], "dee")
    phone = owner.new_device("phone")
    added = await processes[0].accounts.add_device(user.user_id, first.device_id, owner.certify(phone), 10, _free)
    phone.user_id = user.user_id
    sessions = [await log_in(processes[n % 2], phone) for n in range(6)]

    refreshed, _ = await outcomes(
        [processes[n % 2].sessions.refresh(s.refresh_token) for n, s in enumerate(sessions)]
        + [processes[1].accounts.revoke_device(user.user_id, first.device_id, added.device_id)]
    )
    for successor in (r for r in refreshed if isinstance(r, IssuedSession)):
        with pytest.raises(ServiceError) as dead:
            await processes[0].sessions.refresh(successor.refresh_token)
        assert dead.value.reason in {"REFRESH_TOKEN_INVALID", "DEVICE_REVOKED"}


async def test_devices_added_at_once_stay_within_the_limit(processes: list[Process]) -> None:
    owner, user, first = await register(processes[0], "eve")
    new = [owner.certify(owner.new_device(f"d{n}")) for n in range(8)]

    added, refused = await outcomes(
        [
            processes[n % 2].accounts.add_device(user.user_id, first.device_id, keys, 3, _free)
            for n, keys in enumerate(new)
        ]
    )
    assert len(added) == 2  # 3 in all, with the first
    assert refused == ["QUOTA_EXCEEDED"] * 6
    assert len(await processes[1].accounts.devices(user.user_id, include_revoked=False)) == 3


async def test_one_of_several_registrations_of_a_name_wins(processes: list[Process]) -> None:
    identities = [DeviceIdentity.generate("fay") for _ in range(6)]
    registered, refused = await outcomes(
        [processes[n % 2].accounts.register("fay", i.user_public_key, i.certify(i)) for n, i in enumerate(identities)]
    )
    assert len(registered) == 1
    assert refused == ["USERNAME_TAKEN"] * 5


async def test_signing_keys_rotated_at_once_leave_one_current_key(processes: list[Process]) -> None:
    signers = [TokenSigner(p.storage, AUTH) for p in processes]
    await asyncio.gather(*(signer.rotate() for signer in signers for _ in range(3)))
    async with processes[0].storage.transaction() as tx:
        keys = await tx.signing_keys()
    assert len([key for key in keys if key.retired_at is None]) == 1


def _free(user_id: str) -> None:
    """A device addition that costs nothing."""


async def test_a_transaction_cancelled_at_any_step_writes_nothing_and_the_next_one_works(
    identity_storage: IdentityStorage,
) -> None:
    async def register_slowly(n: int) -> None:
        async with identity_storage.transaction() as tx:
            await tx.insert_user(UserRow(f"u{n}", f"name{n}", bytes(32), 1.0))
            await tx.user_by_name(f"name{n}")
            await asyncio.sleep(10)  # still open when its caller goes away

    for steps in range(8):  # the cancellation lands at each step in turn
        task = asyncio.ensure_future(register_slowly(steps))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with identity_storage.transaction() as tx:
            assert await tx.user_by_name(f"name{steps}") is None
            assert await tx.insert_user(UserRow(f"v{steps}", f"kept{steps}", bytes(32), 1.0))
        async with identity_storage.transaction() as tx:
            assert await tx.user_by_name(f"kept{steps}") is not None
