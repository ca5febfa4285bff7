"""CLI commands for rooms, events and subjects."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from parley.client import Client
from parley.errors import ParleyError
from parley.rooms import RoomEvent


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {what} is not JSON: {exc}") from None


def event_line(event: RoomEvent) -> str:
    return json.dumps(
        {
            "room": event.room_id,
            "event": event.event,
            "data": event.data,
            "sender": event.sender,
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
    for room in rooms:
        size = f"{room.size}/{room.max_size}" if room.max_size else str(room.size)
        creator = room.creator or "config"
        print(f"{room.room_id:20} {size:>7}  {room.name:20} {creator:28} {room.description}")


async def rooms_create(client: Client, args: Any) -> None:
    events = [e for e in args.events.split(",") if e] if args.events else None
    room = await client.create_room(
        args.room_id,
        name=args.name,
        description=args.description,
        max_size=args.max_size,
        events=events,
        read_only=args.read_only,
        unlisted=args.unlisted,
    )
    print(f"created room {room.room_id}")


async def listen(client: Client, room_id: str, events: list[str]) -> None:
    """Prints each event as a JSON line until interrupted."""
    room = await client.join(room_id)
    if events:
        await room.unsubscribe()
        await room.subscribe(*events)
    print(json.dumps({"listening": room_id, "subscriptions": room.subscriptions}), flush=True)
    wanted = set(events)
    async for event in room.events():
        # Events that arrived before the subscription changed are filtered here.
        if not wanted or event.event in wanted:
            print(event_line(event), flush=True)
    raise SystemExit("error: the stream ended")


async def send(client: Client, room_id: str, event: str, data: Any) -> None:
    room = await client.join(room_id)
    published = await room.trigger(event, data, echo=False)
    print(json.dumps({"seq": published.seq, "handle": published.handle}))


async def change(client: Client, room_id: str, handle: str, data: Any, *, delete: bool) -> None:
    room = await client.join(room_id)
    changed = await room.delete(handle) if delete else await room.edit(handle, data)
    print(json.dumps({"seq": changed.seq, "handle": changed.handle, "deleted": changed.deleted, "data": changed.data}))


async def chat(client: Client, room_id: str, event: str) -> None:
    """Type a line to send it as {"text": line}; incoming messages print as they come."""
    room = await client.join(room_id)
    names: dict[str, str] = {}

    async def name_of(user_id: str) -> str:
        if user_id not in names:
            try:
                names[user_id] = (await client.get_user_by_id(user_id)).user.username
            except ParleyError:
                names[user_id] = user_id  # a system or named sender
        return names[user_id]

    async def show_in_order() -> None:
        async for incoming in room.events():
            if incoming.event != event:
                continue
            text = incoming.data.get("text") if isinstance(incoming.data, dict) else incoming.data
            print(f"[{await name_of(incoming.sender)}] {text}", flush=True)

    printer = asyncio.create_task(show_in_order())
    print(f"in {room_id} as {client.identity.username}; type to talk, Ctrl-D to leave", flush=True)
    try:
        while (line := await asyncio.to_thread(sys.stdin.readline)) != "":
            if line.strip():
                await room.trigger(event, {"text": line.rstrip("\n")}, echo=False)
    finally:
        printer.cancel()
        await asyncio.gather(printer, return_exceptions=True)
    await room.leave()


async def subscribe_subject(client: Client, subject: str) -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    client.on_disconnect(lambda error: queue.put_nowait(None))
    await client.message.subscribe(
        subject, lambda m: queue.put_nowait(json.dumps({"subject": m.subject, "sender": m.sender, "data": m.data}))
    )
    print(json.dumps({"subscribed": subject}), flush=True)
    while (line := await queue.get()) is not None:
        print(line, flush=True)
    raise SystemExit("error: the stream ended")
