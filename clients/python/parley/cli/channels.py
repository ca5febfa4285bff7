"""CLI commands for sealed group channels: `parley channel create|join|list|invite|accept|send|read|members|add|remove`.

Each command opens the channel afresh: it verifies the chain of member
commits and takes the epoch keys sealed for this device, which the key
store beside the key file keeps.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from parley.cli.chat_lines import clock, from_ms, message_line, notice_line
from parley.cli.people import UserNames, look_up
from parley.client import Client
from parley.connection import ConnectionState
from parley.crypto import group
from parley.errors import AlreadyExistsError, ParleyError, PermissionDeniedError
from parley.spaces import ChannelMessage, Space

NOT_A_MEMBER = "NOT_A_MEMBER"
INVITATION_INVALID = "INVITATION_INVALID"


async def opened(client: Client, channel: str) -> Space:
    """The channel by name or space id; a clear error when you are not one of its members."""
    try:
        return await client.space.join_channel(channel)
    except PermissionDeniedError as error:
        if error.reason != NOT_A_MEMBER:
            raise
    raise SystemExit(
        f"error: {NOT_A_MEMBER}: you are not a member of channel {channel!r}; ask one of its admins for an "
        "invitation (then run `parley channel accept CODE AUTH_CODE`) or to add you"
    )


def label(space: Space) -> str:
    return space.name or space.space_id


async def create(client: Client, name: str, *, exist_ok: bool, keeper: bool = False) -> None:
    """`parley channel create NAME [--keeper]`: prints the new channel's space id."""
    try:
        space = await client.space.create_channel(name, keeper=keeper)
    except AlreadyExistsError:
        if not exist_ok:
            raise
        space = await opened(client, name)
    print(space.space_id)


async def join(client: Client, channel: str) -> None:
    """`parley channel join NAME_OR_SPACE_ID`: opens it and says its epoch and size."""
    space = await opened(client, channel)
    members = await space.members()
    kind = "end-to-end" if space.end_to_end else "keeper (not end-to-end)"
    print(f"{label(space)} ({space.space_id}): {kind}, epoch {space.epoch}, {_count(len(members), 'member')}")


async def list_channels(client: Client) -> None:
    """`parley channel list`: one line per channel or space you are a member of."""
    channels = await client.space.list_channels()
    if not channels:
        print("no channels")
    for channel in channels:
        kind = "end-to-end" if channel.end_to_end else "keeper (not end-to-end)"
        print(f"{channel.name or '(space)':20} {channel.space_id}  {kind:23}  epoch {channel.epoch}")


async def invite(client: Client, name: str, *, uses: int, expires: float) -> None:
    """`parley channel invite NAME`: the code and the auth code, each on its own line, then how to hand them over."""
    space = await opened(client, name)
    await _as_admin(client, space, "invites")
    invitation = await space.create_invitation(uses=uses, expires_in=expires)
    until = datetime.now().astimezone() + timedelta(seconds=expires)
    print(f"code       {invitation.code}")
    print(f"auth code  {invitation.auth_code}")
    print(
        "give the guest the code and the auth code by different channels (say, the code in an email and the auth "
        "code read out on a call): the code alone admits nobody, and three wrong auth codes burn the invitation; "
        f"it admits {_count(uses, 'guest')} until {until:%Y-%m-%d %H:%M:%S}, each with "
        "`parley channel accept CODE AUTH_CODE`"
    )


async def accept(client: Client, code: str, auth_code: str) -> None:
    """`parley channel accept CODE AUTH_CODE`: joins the channel and prints its name."""
    channel_id = group.Invitation.from_text(code).channel_id
    mine = {channel.space_id: channel for channel in await client.space.list_channels()}
    if channel_id in mine:
        raise SystemExit(
            f"error: you are a member of {mine[channel_id].name or channel_id} already; the invitation is left unused"
        )
    try:
        space = await client.space.accept_invitation(code, auth_code)
    except PermissionDeniedError as error:
        if error.reason != INVITATION_INVALID:
            raise
        raise SystemExit(
            f"error: {INVITATION_INVALID}: not admitted: {error.message}; check the auth code with whoever "
            "invited you, or ask them for a new invitation"
        ) from None
    print(label(space))


async def send(client: Client, name: str, text: str) -> None:
    """`parley channel send NAME TEXT`: seals {"text": TEXT} for the members."""
    space = await opened(client, name)
    await space.send_message({"text": text})
    print(f"sent to {label(space)} (epoch {space.epoch})")


async def read(client: Client, name: str, *, limit: int, follow: bool) -> None:
    """`parley channel read NAME`: kept messages oldest first, then with `follow` those that arrive."""
    space = await opened(client, name)
    printer = MessagePrinter(client)
    arrivals: asyncio.Queue[ChannelMessage | BaseException] = asyncio.Queue()
    if follow:

        def failed(state: ConnectionState, error: ParleyError | None) -> None:
            if state is ConnectionState.FAILED:
                arrivals.put_nowait(error or SystemExit("error: the connection to the server failed"))

        space.on_message(arrivals.put_nowait)
        client.on_state(failed)
    kept = await space.history(limit=limit) if limit else []
    if space.rejected:
        print(
            notice_line(
                printer.when(),
                f"{_count(len(space.rejected), 'kept message')} this device cannot open left out "
                "(sent before it joined the channel, or not verifying)",
            )
        )
    for message in reversed(kept):
        await printer.show(message)
    if not follow:
        if not kept:
            print("no messages")
        return
    while True:
        arrival = await arrivals.get()
        if isinstance(arrival, BaseException):
            raise arrival
        await printer.show(arrival)


class MessagePrinter:
    """Prints channel messages as `[time] username: text`, each once (history and live ones overlap)."""

    def __init__(self, client: Client) -> None:
        self._names = UserNames(client)
        self._last_seq = 0

    async def show(self, message: ChannelMessage) -> None:
        if message.seq <= self._last_seq:
            return
        self._last_seq = message.seq
        sender = await self._names.of(message.sender_user_id) or message.sender_user_id
        print(message_line(self.when(message.time_ms), sender, message.body), flush=True)

    @staticmethod
    def when(time_ms: int | None = None) -> str:
        now = datetime.now().astimezone()
        return f"[{clock(from_ms(time_ms) if time_ms is not None else now, now)}]"


async def members(client: Client, name: str) -> None:
    """`parley channel members NAME`: username, role and devices of each member."""
    space = await opened(client, name)
    names = UserNames(client)
    for member in await space.members():
        who = await names.of(member.user_id) or member.user_id
        you = " (you)" if member.user_id == client.user_id else ""
        print(f"{who + you:26} {member.role:6}  {_count(len(member.devices), 'device')}")


async def add(client: Client, name: str, who: str, *, admin: bool) -> None:
    """`parley channel add NAME USER`: adds USER in a new epoch."""
    space = await opened(client, name)
    roster = await _as_admin(client, space, "add members")
    peer = await look_up(client, who)
    if any(member.user_id == peer.user_id for member in roster):
        raise SystemExit(f"error: {peer.username} is a member of {label(space)} already")
    await space.add_member(peer.user_id, admin=admin)
    role = group.ADMIN if admin else group.MEMBER
    print(f"added {peer.username} to {label(space)} as {role}; epoch {space.epoch}: they read what is sent from now on")


async def remove(client: Client, name: str, who: str) -> None:
    """`parley channel remove NAME USER`: removes USER in a new epoch they get no key for."""
    space = await opened(client, name)
    roster = await _as_admin(client, space, "remove members")
    peer = await look_up(client, who)
    if not any(member.user_id == peer.user_id for member in roster):
        raise SystemExit(f"error: {peer.username} is not a member of {label(space)}")
    await space.remove_member(peer.user_id)
    print(
        f"removed {peer.username} from {label(space)}; epoch {space.epoch}: they cannot read what is sent from now on"
    )


async def _as_admin(client: Client, space: Space, what: str) -> list[group.Member]:
    """The roster, if you are an admin of the channel; a clear error otherwise."""
    roster = await space.members()
    if not any(member.user_id == client.user_id and member.is_admin for member in roster):
        raise SystemExit(f"error: NOT_ADMIN: only admins of {label(space)} {what}; ask one of them")
    return roster


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
