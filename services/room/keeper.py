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
from parley.crypto import group
from parley.crypto import identity as proofs
from parley.crypto.errors import CryptoError
from parley.crypto.x3dh import DeviceKeys
from parley.errors import NotFoundError
from parley.identity.v1 import identity_pb2
from parley.private_files import open_private

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
        return _member_device(keys)

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
        """A user as a plain member, with every device their user key certifies and their signed device list
        names (the identity service's word on who the user is: the keeper is the operator's)."""
        auth = await self._signed_in()
        user = await auth.call(auth.identity_stub.GetUser, identity_pb2.GetUserRequest(user_id=user_id))
        listed = await self._listed(auth, user_id, user.user.signing_key)
        devices = []
        for device in user.devices:
            keys = DeviceKeys(user.user.signing_key, device.signing_key, device.dh_key, device.certificate)
            try:
                keys.verify()
            except (CryptoError, ValueError):
                continue
            if keys.device_id == device.device_id and (listed is None or keys.device_id in listed):
                devices.append(_member_device(keys))
        devices.sort(key=lambda d: d.device_id)
        return group.Member(user_id, user.user.signing_key, group.MEMBER, tuple(devices))

    async def close(self) -> None:
        if self._auth is not None:
            await self._auth.close_channel()

    @staticmethod
    async def _listed(auth: Auth, user_id: str, user_key: bytes) -> set[str] | None:
        try:
            response = await auth.call(
                auth.identity_stub.GetDeviceList, identity_pb2.GetDeviceListRequest(user_id=user_id)
            )
        except NotFoundError:
            return None
        signed = response.device_list
        if not proofs.verify_signature(user_key, proofs.device_list_bytes(signed.list), signed.signature):
            return None
        return set(identity_pb2.DeviceListContent.FromString(signed.list).device_ids)


def _member_device(keys: DeviceKeys) -> group.MemberDevice:
    return group.MemberDevice(keys.device_id, keys.device_signing_key, keys.device_dh_key, keys.certificate)
