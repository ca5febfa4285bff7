"""The SDK's tokens: a logout stays a logout, and a rotated refresh token is never lost.

The server rotates a refresh token when it answers RefreshToken and treats a
second use of the old one as theft (the whole session is revoked). These tests
hold the server's answer back after it has rotated the token, then cancel
whoever was waiting for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parley import Client
from services import allinone
from services.identity.sessions import IssuedSession, SessionIssuer
from services.runtime.errors import ServiceError
from tests.support import make_config, running

pytestmark = pytest.mark.timeout(60)
# Shorter than the SDK's refresh margin: every access_token() refreshes, and the stream's
# token keeper refreshes about a second after the stream opens.
SHORT_TOKENS = {"auth.access_token_ttl_seconds": 2, "auth.clock_skew_seconds": 0.0}


@dataclass
class SessionLog:
    """What the identity service was asked: logins, and refreshes that failed."""

    logins: int = 0
    failed_refreshes: list[str] = field(default_factory=list)
    # While set, a refresh rotates the token and then waits for `release` before answering.
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    rotated: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> SessionLog:
    log = SessionLog()
    login, refresh = SessionIssuer.login, SessionIssuer.refresh

    async def counted_login(self: SessionIssuer, challenge_id: str, signature: bytes) -> object:
        log.logins += 1
        return await login(self, challenge_id, signature)

    async def held_refresh(self: SessionIssuer, refresh_token: str) -> IssuedSession:
        try:
            session = await refresh(self, refresh_token)
        except ServiceError as exc:
            log.failed_refreshes.append(exc.reason)
            raise
        if log.holding.is_set():
            log.rotated.set()
            await log.release.wait()
        return session

    monkeypatch.setattr(SessionIssuer, "login", counted_login)
    monkeypatch.setattr(SessionIssuer, "refresh", held_refresh)
    return log


@pytest.fixture
async def address(data_dir: Path) -> AsyncIterator[str]:
    async with running(allinone.create_server, make_config(data_dir, **SHORT_TOKENS)) as (_, address):
        yield address


async def test_logout_ends_the_stream_and_nothing_logs_in_again(
    address: str, sessions: SessionLog, tmp_path: Path
) -> None:
    async with Client(address, username="ann", key_file=tmp_path / "ann.json") as ann:
        endings: list[object] = []
        ann.on_disconnect(endings.append)
        await ann.create_room("lobby")
        await ann.join("lobby")
        logins = sessions.logins
        assert await ann.logout() >= 1
        await asyncio.sleep(2.5)  # past the token keeper's next turn and the stream token's expiry
        assert sessions.logins == logins
        assert endings == [None]


async def test_a_cancelled_access_token_call_keeps_the_rotated_token(
    address: str, sessions: SessionLog, tmp_path: Path
) -> None:
    async with Client(address, username="ann", key_file=tmp_path / "ann.json") as ann:
        sessions.holding.set()
        waiting = asyncio.create_task(ann.access_token())
        await asyncio.wait_for(sessions.rotated.wait(), 10)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        sessions.release.set()
        for _ in range(3):  # each refreshes with the token the one before received
            await ann.access_token()
        assert (await ann.whoami()).user_id == ann.user_id
        assert sessions.failed_refreshes == []
        assert sessions.logins == 1


async def test_closing_while_the_token_keeper_refreshes_keeps_the_rotated_token(
    address: str, sessions: SessionLog, tmp_path: Path
) -> None:
    ann = Client(address, username="ann", key_file=tmp_path / "ann.json")
    await ann.connect()
    try:
        await ann.create_room("lobby")
        await ann.join("lobby")
        sessions.holding.set()
        await asyncio.wait_for(sessions.rotated.wait(), 10)  # the keeper's refresh, about a second in
        closing = asyncio.create_task(ann.close())
        await asyncio.sleep(0.2)
        sessions.release.set()
        await asyncio.wait_for(closing, 10)
        for _ in range(3):
            await ann.access_token()
        assert sessions.failed_refreshes == []
        assert sessions.logins == 1
    finally:
        await ann.close()
