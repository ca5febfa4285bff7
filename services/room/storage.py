"""Where the room service keeps run-time rooms: the protocol, and the implementation `storage.url` names.

Config rooms live in the config file; these are the rooms created at run
time, each stored as its `Room` definition, and the members of private rooms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from parley.room.v1 import room_pb2
from services.runtime.config import Config

# A channel's rows, deleted with its room (dependent tables first).
CHANNEL_TABLES = (
    "channel_join_requests",
    "channel_grants",
    "channel_invitations",
    "channel_wraps",
    "channel_commits",
    "channels",
)


class RoomStorage(Protocol):
    async def all_rooms(self) -> list[room_pb2.Room]:
        """Every stored room, in room id order."""

    async def insert_room(self, room: room_pb2.Room, now: float) -> bool:
        """Stores a new room; False (and nothing written) when its id is taken."""

    async def delete_room(self, room_id: str) -> None:
        """Deletes the room and its members."""

    async def all_members(self) -> list[MemberRow]:
        """Every member of every private room."""

    async def put_members(self, rows: Sequence[MemberRow]) -> None:
        """Adds members, or changes the role of those who are members already (their add time stays)."""

    async def remove_members(self, room_id: str, user_ids: Sequence[str]) -> None: ...

    async def insert_channel(self, channel: ChannelRow, commit: CommitRow, wraps: Sequence[WrapRow]) -> bool:
        """Stores a new channel with its first commit; False (nothing written) when its name is taken."""

    async def channel(self, space_id: str = "", name: str = "") -> ChannelRow | None: ...

    async def all_channels(self) -> list[ChannelRow]: ...

    async def commits(self, space_id: str, from_epoch: int) -> list[CommitRow]:
        """In epoch order."""

    async def append_commit(self, channel: ChannelRow, commit: CommitRow, wraps: Sequence[WrapRow]) -> bool:
        """Stores the commit after the channel's latest (`channel.epoch` is the new one); False when another
        commit took that epoch first."""

    async def wraps(self, space_id: str, from_epoch: int, device_id: str = "") -> list[WrapRow]:
        """Wraps from `from_epoch` on: the device's only, or every device's."""

    async def add_wraps(self, wraps: Sequence[WrapRow]) -> None:
        """Adds signed wraps (a wrap already held for that device and epoch is kept)."""

    async def insert_invitation(self, invitation: InvitationRow) -> bool:
        """False (nothing written) when the channel has an invitation with that id."""

    async def invitation(self, space_id: str, invite_id: str) -> InvitationRow | None: ...

    async def take_use(self, space_id: str, invite_id: str, user_id: str, now_ms: int) -> bool:
        """Takes one use of a live invitation (not burned, not expired, uses left) and grants `user_id` its
        admitting commit, in one step; False when there was none to take."""

    async def count_failure(self, space_id: str, invite_id: str, burn_at: int) -> None:
        """One more wrong auth code; the invitation burns at `burn_at` of them."""

    async def has_grant(self, space_id: str, user_id: str, invite_id: str = "", now_ms: int = 0) -> bool:
        """Whether the user redeemed an invitation to the channel (that one, if given), has not used it, and the
        invitation has not expired by `now_ms`."""

    async def use_grant(self, space_id: str, invite_id: str, user_id: str) -> bool: ...

    async def put_join_request(self, space_id: str, user_id: str, now_ms: int) -> None:
        """Records the request (a repeated one keeps its first time)."""

    async def join_requests(self, space_id: str) -> list[tuple[str, int]]:
        """(user id, requested at) in request order."""

    async def drop_join_requests(self, space_id: str, user_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class MemberRow:
    room_id: str
    user_id: str
    role: int
    """A `room_pb2.MemberRole` value."""
    added_ms: int


async def open_room_storage(config: Config) -> RoomStorage:
    """The room service's storage, opened and migrated: SQLite under the data directory, or PostgreSQL."""
    url = config.storage.url_of("room")
    storage: RoomStorage
    if url:
        # Imported here: psycopg is loaded only by processes that use PostgreSQL.
        from services.room.postgres_storage import PostgresRoomStorage

        storage = await PostgresRoomStorage.open(url, config.storage.max_connections)
    else:
        from services.room.sqlite_storage import SqliteRoomStorage

        storage = await SqliteRoomStorage.open(config.server.data_dir / "room.sqlite3")
    return storage


@dataclass(frozen=True)
class ChannelRow:
    space_id: str
    name: str
    kind: int
    """A `channel_pb2.ChannelKind` value."""
    creator: str
    created_ms: int
    epoch: int
    state: bytes
    """The latest epoch's `parley.crypto.group.ChannelState`."""


@dataclass(frozen=True)
class CommitRow:
    space_id: str
    epoch: int
    commit: bytes
    signature: bytes


@dataclass(frozen=True)
class WrapRow:
    space_id: str
    epoch: int
    device_id: str
    wrap: bytes
    signed: bool
    """A SignedWrap added after the commit (not one of the wraps the commit signed)."""


@dataclass(frozen=True)
class InvitationRow:
    space_id: str
    invite_id: str
    verifier: bytes
    package: bytes
    uses_left: int
    expires_ms: int
    failures: int
    burned: bool
    created_by: str
