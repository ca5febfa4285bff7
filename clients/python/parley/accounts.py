"""Users and devices as plain Python objects, and the IdentityService calls that return them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from parley.auth import Auth
from parley.device_identity import DeviceIdentity
from parley.identity.v1 import identity_pb2


def _time(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """A protobuf timestamp as an aware datetime; None when unset."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


@dataclasses.dataclass(frozen=True)
class Me:
    """Who the server thinks the caller is (`client.whoami()`)."""

    user_id: str
    username: str
    device_id: str
    issuer: str
    service_name: str
    expires_at: datetime | None

    @classmethod
    def from_proto(cls, response: identity_pb2.WhoAmIResponse) -> Me:
        return cls(
            user_id=response.user_id,
            username=response.username,
            device_id=response.device_id,
            issuer=response.issuer,
            service_name=response.service_name,
            expires_at=_time(response.expire_time),
        )


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's public half: its keys (raw bytes), its certificate and name."""

    device_id: str
    user_id: str
    display_name: str
    signing_key: bytes
    dh_key: bytes
    certificate: bytes
    created_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def from_proto(cls, device: identity_pb2.Device) -> Device:
        return cls(
            device_id=device.device_id,
            user_id=device.user_id,
            display_name=device.display_name,
            signing_key=device.signing_key,
            dh_key=device.dh_key,
            certificate=device.certificate,
            created_at=_time(device.create_time),
            revoked_at=_time(device.revoke_time),
        )


@dataclasses.dataclass(frozen=True)
class User:
    """A user's name, public signing key and active devices (`client.get_user(...)`)."""

    user_id: str
    username: str
    signing_key: bytes
    created_at: datetime | None
    devices: tuple[Device, ...]

    @classmethod
    def from_proto(cls, response: identity_pb2.GetUserResponse) -> User:
        return cls(
            user_id=response.user.user_id,
            username=response.user.username,
            signing_key=response.user.signing_key,
            created_at=_time(response.user.create_time),
            devices=tuple(Device.from_proto(d) for d in response.devices),
        )


class Accounts:
    """IdentityService calls about users and devices."""

    def __init__(self, auth: Auth) -> None:
        self._auth = auth

    async def whoami(self) -> Me:
        return Me.from_proto(await self._auth.call(self._auth.identity_stub.WhoAmI, identity_pb2.WhoAmIRequest()))

    async def devices(self, user_id: str = "", *, show_revoked: bool = False) -> list[Device]:
        response = await self._auth.call(
            self._auth.identity_stub.ListDevices,
            identity_pb2.ListDevicesRequest(user_id=user_id, show_revoked=show_revoked),
        )
        return [Device.from_proto(d) for d in response.devices]

    async def add_device(self, display_name: str) -> DeviceIdentity:
        identity = self._auth.identity
        device = identity.new_device(display_name)
        await self._auth.call(
            self._auth.identity_stub.AddDevice, identity_pb2.AddDeviceRequest(device=identity.certify(device))
        )
        device.registered = True
        return device

    async def revoke_device(self, device_id: str) -> Device:
        response = await self._auth.call(
            self._auth.identity_stub.RevokeDevice, identity_pb2.RevokeDeviceRequest(device_id=device_id)
        )
        return Device.from_proto(response.device)

    async def get_user(self, username: str = "", *, user_id: str = "") -> User:
        if user_id:
            request = identity_pb2.GetUserRequest(user_id=user_id)
        else:
            request = identity_pb2.GetUserRequest(username=username)
        return User.from_proto(await self._auth.call(self._auth.identity_stub.GetUser, request))
