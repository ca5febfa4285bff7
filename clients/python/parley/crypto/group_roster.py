"""Who is in a group channel: members (user key, role) and their certified devices.

A roster has one canonical encoding (members sorted by user id, each
member's devices by device id), so every device computes the same
`roster_hash`. A device id is derived from the device's signing key
(`identity.device_id_for`) and no device id appears twice in a roster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled
from parley.crypto.errors import MalformedInputError
from parley.crypto.group_encoding import labelled_list, read_labelled_list, read_text, text
from parley.crypto.group_errors import InvalidRosterError
from parley.crypto.primitives import blake2b_256

ADMIN = "admin"
MEMBER = "member"
ROLES = frozenset({ADMIN, MEMBER})


@dataclass(frozen=True)
class MemberDevice:
    """One device of a member: its Ed25519 and X25519 keys and its user's certificate over them."""

    device_id: str
    signing_key: bytes
    dh_key: bytes
    certificate: bytes

    def to_bytes(self) -> bytes:
        return labelled("group-member-device", text(self.device_id), self.signing_key, self.dh_key, self.certificate)

    @classmethod
    def from_bytes(cls, data: bytes) -> MemberDevice:
        device_id, signing_key, dh_key, certificate = read_labelled("group-member-device", data, 4)
        return cls(read_text(device_id), signing_key, dh_key, certificate)

    def verify(self, user_signing_key: bytes) -> None:
        """`InvalidRosterError` unless the id is derived from the signing key, the X25519 key is usable
        and `user_signing_key` certified exactly these keys."""
        if self.device_id != identity.device_id_for(self.signing_key):
            raise InvalidRosterError(f"device id {self.device_id!r} is not derived from its signing key")
        if not identity.is_valid_dh_key(self.dh_key):
            raise InvalidRosterError(f"device {self.device_id!r} has no usable X25519 key")
        message = identity.device_certificate_bytes(user_signing_key, self.signing_key, self.dh_key)
        if not identity.verify_signature(user_signing_key, message, self.certificate):
            raise InvalidRosterError(f"the certificate of device {self.device_id!r} does not verify under its user key")


@dataclass(frozen=True)
class Member:
    """A user in the roster, with a role ("admin" or "member") and devices (kept sorted by id)."""

    user_id: str
    user_signing_key: bytes
    role: str
    devices: tuple[MemberDevice, ...]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRosterError(f"member {self.user_id!r} has unknown role {self.role!r}")
        object.__setattr__(self, "devices", tuple(sorted(self.devices, key=lambda device: device.device_id)))

    def to_bytes(self) -> bytes:
        devices = labelled_list("group-member-devices", [device.to_bytes() for device in self.devices])
        return labelled("group-member", text(self.user_id), self.user_signing_key, text(self.role), devices)

    @classmethod
    def from_bytes(cls, data: bytes) -> Member:
        user_id, user_key, role, devices = read_labelled("group-member", data, 4)
        return cls(
            read_text(user_id),
            user_key,
            read_text(role),
            tuple(MemberDevice.from_bytes(d) for d in read_labelled_list("group-member-devices", devices)),
        )

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


@dataclass(frozen=True)
class Roster:
    """The members of one epoch (kept sorted by user id); a user id and a device id appear at most once."""

    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        members = tuple(sorted(self.members, key=lambda member: member.user_id))
        object.__setattr__(self, "members", members)
        user_ids = [member.user_id for member in members]
        if len(set(user_ids)) != len(user_ids):
            raise InvalidRosterError("a user appears twice in the roster")
        device_ids = [device.device_id for member in members for device in member.devices]
        if len(set(device_ids)) != len(device_ids):
            raise InvalidRosterError("a device appears twice in the roster")

    def to_bytes(self) -> bytes:
        return labelled_list("group-roster", [member.to_bytes() for member in self.members])

    @classmethod
    def from_bytes(cls, data: bytes) -> Roster:
        """The roster, only from its canonical encoding (so a roster has one hash)."""
        roster = cls(tuple(Member.from_bytes(m) for m in read_labelled_list("group-roster", data)))
        if roster.to_bytes() != data:
            raise MalformedInputError("roster bytes are not in canonical order")
        return roster

    def roster_hash(self) -> bytes:
        """BLAKE2b-256 of the canonical bytes."""
        return blake2b_256(self.to_bytes())

    def member(self, user_id: str) -> Member | None:
        return self._members_by_user.get(user_id)

    def device(self, device_id: str) -> MemberDevice | None:
        found = self._owners.get(device_id)
        return found[1] if found else None

    def member_of(self, device_id: str) -> Member | None:
        """The member whose device `device_id` is, or None."""
        found = self._owners.get(device_id)
        return found[0] if found else None

    def is_admin(self, device_id: str) -> bool:
        """Whether `device_id` is a device of an admin."""
        owner = self.member_of(device_id)
        return owner is not None and owner.is_admin

    def devices(self) -> tuple[MemberDevice, ...]:
        """Every device of every member, in canonical order."""
        return tuple(device for member in self.members for device in member.devices)

    def device_ids(self) -> frozenset[str]:
        return frozenset(self._owners)

    def admins(self) -> tuple[Member, ...]:
        return tuple(member for member in self.members if member.is_admin)

    def verify_devices(self) -> None:
        """`InvalidRosterError` unless its member's user key certified every device (`MemberDevice.verify`)."""
        for member in self.members:
            for device in member.devices:
                device.verify(member.user_signing_key)

    @cached_property
    def _members_by_user(self) -> dict[str, Member]:
        return {member.user_id: member for member in self.members}

    @cached_property
    def _owners(self) -> dict[str, tuple[Member, MemberDevice]]:
        return {device.device_id: (member, device) for member in self.members for device in member.devices}
