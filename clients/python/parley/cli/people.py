"""Users and devices as the CLI shows them: keys in base64, times in ISO 8601, usernames beside user ids."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

from parley.accounts import Device, User
from parley.client import Client
from parley.crypto.encoding import b64
from parley.errors import ParleyError

USER_ID = re.compile(r"u[0-9a-f]{24}")


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    device_id: str
    name: str
    signing_key: str  # base64, Ed25519
    dh_key: str  # base64, X25519
    created: str  # ISO 8601, UTC
    revoked: str | None = None

    @classmethod
    def of(cls, device: Device) -> DeviceProfile:
        return cls(
            device_id=device.device_id,
            name=device.display_name,
            signing_key=b64(device.signing_key),
            dh_key=b64(device.dh_key),
            created=_when(device.created_at),
            revoked=_when(device.revoked_at) if device.revoked_at is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class UserProfile:
    username: str
    user_id: str
    signing_key: str  # base64, Ed25519: certifies the devices
    created: str
    devices: list[DeviceProfile]

    @classmethod
    def of(cls, user: User) -> UserProfile:
        return cls(
            username=user.username,
            user_id=user.user_id,
            signing_key=b64(user.signing_key),
            created=_when(user.created_at),
            devices=[DeviceProfile.of(d) for d in user.devices],
        )


async def look_up(client: Client, who: str) -> UserProfile:
    """A user by username, or by user id when no user has that name."""
    try:
        return UserProfile.of(await client.get_user(who))
    except ParleyError:
        if not USER_ID.fullmatch(who):
            raise
    return UserProfile.of(await client.get_user_by_id(who))


def profile_lines(profile: UserProfile, this_device: str = "") -> list[str]:
    lines = [
        f"{profile.username}  (user {profile.user_id})",
        f"  user key   {profile.signing_key}  (Ed25519)",
        f"  since      {profile.created}",
        f"  devices    {len(profile.devices)}",
    ]
    for device in profile.devices:
        lines.extend(device_lines(device, this_device))
    return lines


def device_lines(device: DeviceProfile, this_device: str = "") -> list[str]:
    mine = " (this device)" if device.device_id == this_device else ""
    state = f", revoked {device.revoked}" if device.revoked else ""
    return [
        f"    {device.name or '-'}  {device.device_id}{mine}",
        f"      signing key  {device.signing_key}  (Ed25519)",
        f"      dh key       {device.dh_key}  (X25519)",
        f"      since        {device.created}{state}",
    ]


class UserNames:
    """Usernames by user id, one lookup per user for the life of a command."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._names: dict[str, str | None] = {}

    async def of(self, user_id: str) -> str | None:
        """The username, or None for a sender that is no user (a service, the server)."""
        if user_id not in self._names:
            try:
                self._names[user_id] = (await self._client.get_user_by_id(user_id)).username
            except ParleyError as exc:
                if exc.retryable:
                    return None  # the next event from this sender tries again
                self._names[user_id] = None
        return self._names[user_id]

    async def label(self, user_id: str) -> str:
        """ "alice (u…)" for a user, the id alone otherwise."""
        name = await self.of(user_id)
        return f"{name} ({user_id})" if name else user_id


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"
