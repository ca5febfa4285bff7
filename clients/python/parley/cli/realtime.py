"""CLI commands for rooms, events and subjects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from parley.cli.people import UserNames
from parley.client import Client
from parley.errors import AlreadyExistsError
from parley.messages import SubjectMessage
from parley.rooms import RoomEvent


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {what} is not JSON: {exc}") from None


async def event_line(event: RoomEvent, names: UserNames) -> str:
    return json.dumps(
        {
            "room": event.room_id,
            "event": event.event,
            "data": event.data,
            "sender": event.sender,
            "sender_username": await names.of(event.sender),
            "time_ms": event.time_ms,
            "seq": event.seq,
            "handle": event.handle,
            "meta": event.meta,
            **({"edit_time_ms": event.edit_time_ms} if event.edit_time_ms else {}),
            **({"deleted": True} if event.deleted else {}),
        }
    )


async def rooms_list(client: Client) -> None:
    rooms = await client.list_rooms()
    if not rooms:
        print("no rooms")
    names = UserNames(client)
    for room in rooms:
        size = f"{room.size}/{room.max_size}" if room.max_size else str(room.size)
        creator = await names.label(room.creator) if room.creator else "config"
        print(f"{room.room_id:20} {size:>7}  {room.name:20} {creator:28} {room.description}")


async def rooms_create(client: Client, args: Any) -> None:
    events = [e for e in args.events.split(",") if e] if args.events else None
    try:
        room = await client.create_room(
            args.room_id,
            name=args.name,
            description=args.description,
            max_size=args.max_size,
            events=events,
            read_only=args.read_only,
            unlisted=args.unlisted,
        )
    except AlreadyExistsError:
        if not args.exist_ok:
            raise
        print(f"room {args.room_id} already exists")
        return
    print(f"created room {room.room_id}")


async def listen(client: Client, room_id: str, events: list[str]) -> None:
    """Prints each event as a JSON line until interrupted."""
    room = await client.join(room_id)
    if events:
        await room.unsubscribe()
        await room.subscribe(*events)
    print(json.dumps({"listening": room_id, "subscriptions": room.subscriptions}), flush=True)
    wanted = set(events)
    names = UserNames(client)
    async for event in room.events():
        # Events that arrived before the subscription changed are filtered here.
        if not wanted or event.event in wanted:
            print(await event_line(event, names), flush=True)
    raise SystemExit("error: the stream ended")


async def send(client: Client, room_id: str, event: str, data: Any) -> None:
    room = await client.join(room_id)
    published = await room.trigger(event, data, echo=False)
    print(json.dumps({"room": room_id, "event": event, "seq": published.seq, "handle": published.handle}))


async def history(client: Client, room_id: str, *, limit: int, before: int, event: str) -> None:
    names = UserNames(client)
    for kept in await client.history(room_id, limit=limit, before=before, event=event):
        print(await event_line(kept, names))


async def change(client: Client, room_id: str, handle: str, data: Any, *, delete: bool) -> None:
    room = await client.join(room_id)
    changed = await room.delete(handle) if delete else await room.edit(handle, data)
    print(json.dumps({"seq": changed.seq, "handle": changed.handle, "deleted": changed.deleted, "data": changed.data}))


async def publish_subject(client: Client, subject: str, data: Any) -> None:
    await client.message.publish(subject, data)
    print(json.dumps({"published": subject}))


async def subscribe_subject(client: Client, subject: str) -> None:
    queue: asyncio.Queue[SubjectMessage | None] = asyncio.Queue()
    client.on_disconnect(lambda error: queue.put_nowait(None))
    await client.message.subscribe(subject, queue.put_nowait)
    print(json.dumps({"subscribed": subject}), flush=True)
    names = UserNames(client)
    while (message := await queue.get()) is not None:
        line = {
            "subject": message.subject,
            "sender": message.sender,
            "sender_username": await names.of(message.sender),
            "data": message.data,
        }
        print(json.dumps(line), flush=True)
    raise SystemExit("error: the stream ended")
