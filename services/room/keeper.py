"""The app's keeper: a service identity that is an admin of keeper channels and admits whoever asks to join.

It is a registered user with one device, like any member, whose keys live
in the room service's data directory (`keeper.json`, mode 0600). It signs
the commits that add users who ask to join, so joins work with nobody
online; being a member device, it also gets every epoch secret of those
channels wrapped for it, which makes keeper channels NOT end to end against
whoever runs the room service. It signs in to the identity service as a
user, through the Python SDK's own auth code, the first time it is needed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

from parley.auth import Auth
from parley.channel_keys import member_device
from parley.crypto import group
from parley.crypto.x3dh import DeviceKeys
from parley.e2e_state import E2eState
from parley.keystore import KeyStore
from parley.private_files import open_private
from parley.trust import Trust

USERNAME_PREFIX = "parley-keeper-"
TIMEOUT_SECONDS = 10.0


class Keeper:
    def __init__(self, key_file: Path) -> None:
        self.address = ""
        """The identity service (set by the server: its own address when the identity service is on it)."""
        self._key_file = key_file
        self._auth: Auth | None = None
        self._starting = asyncio.Lock()

    async def _signed_in(self) -> Auth:
        async with self._starting:
            if self._auth is None:
                username = None
                if not self._key_file.exists():
                    username = USERNAME_PREFIX + secrets.token_hex(6)
                elif not json.loads(open_private(self._key_file)).get("registered"):
                    username = json.loads(open_private(self._key_file))["username"]
                auth = Auth(
                    self.address,
                    username=username,
                    key_file=self._key_file,
                    identity=None,
                    device_name="keeper",
                    timeout=TIMEOUT_SECONDS,
                )
                await auth.ensure_registered()
                await auth.login()
                self._auth = auth
            return self._auth

    async def user_id(self) -> str:
        return (await self._signed_in()).identity.user_id

    async def device(self) -> group.MemberDevice:
        """The keeper's own device as a roster lists it."""
        auth = await self._signed_in()
        own = auth.identity
        keys = DeviceKeys(
            own.user_public_key,
            own.device_signing_key.verify_key.encode(),
            own.device_dh_key.public_key.encode(),
            own.certify(own).certificate,
        )
        return member_device(keys)

    async def commit(self, previous: group.ChannelState, roster: group.Roster) -> group.CommittedEpoch:
        """The keeper's commit moving `previous` to `roster` (it must be an admin of `previous`)."""
        auth = await self._signed_in()
        device = await self.device()
        return group.commit_epoch(
            previous,
            roster,
            channel_id=previous.channel_id,
            committer_device_id=device.device_id,
            signing_key=auth.identity.device_signing_key,
            admission="keeper",
            history_policy=previous.history_policy,
        )

    async def member(self, user_id: str) -> group.Member:
        """A user as a plain member, with the devices their user key vouches for (certified, and named by their
        signed device list): the SDK's own rules, on the identity service's word for the user's key (the keeper
        is the operator's)."""
        auth = await self._signed_in()
        peer = await Trust(auth, E2eState(KeyStore.in_memory())).peer(user_id)
        devices = sorted((member_device(d) for d in peer.devices), key=lambda d: d.device_id)
        return group.Member(user_id, peer.user_signing_key, group.MEMBER, tuple(devices))

    async def close(self) -> None:
        if self._auth is not None:
            await self._auth.close_channel()
