"""`parley`: run the servers and talk to them.

Everything read from the environment is read here (PARLEY_ADDR,
PARLEY_KEY_FILE, and PARLEY_* settings for `serve`) and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, message

from parley.cli import realtime
from parley.cli.realtime import parse_json
from parley.client import DEFAULT_ADDRESS, Client
from parley.device_identity import DeviceIdentity
from parley.errors import ParleyError

DEFAULT_KEY_FILE = Path("~/.config/parley/identity.json")
SERVE_TARGETS = ("all", "identity", "room", "history", "file", "gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley",
        description="Parley realtime messaging: run the servers, manage users and devices.",
    )
    parser.add_argument(
        "--addr",
        default=os.environ.get("PARLEY_ADDR", DEFAULT_ADDRESS),
        help="server address host:port (env PARLEY_ADDR; default %(default)s)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=Path(os.environ.get("PARLEY_KEY_FILE", str(DEFAULT_KEY_FILE))).expanduser(),
        help="this device's key file (env PARLEY_KEY_FILE; default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run Parley (all services in one process, or one service)",
        description="Run all services on one port (default), or one service per process in split mode. "
        "Settings come from --config, then PARLEY_<SECTION>_<KEY> variables, then these flags.",
    )
    serve.add_argument("service", nargs="?", default="all", choices=SERVE_TARGETS, help="what to run (default: all)")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 50051)")
    serve.add_argument("--data-dir", type=Path, help="where SQLite files live (default ./data)")
    serve.add_argument(
        "--gateway-processes",
        type=int,
        metavar="K",
        help="run K gateway processes sharing --port (SO_REUSEPORT, Linux; needs a NATS bus.url): with `serve` the "
        "other services stay in this process, with `serve gateway` only gateways run "
        "(default 1: one process; env PARLEY_SERVER_GATEWAY_PROCESSES)",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        default=None,
        help="let other servers of this user listen on the same --port (SO_REUSEPORT, Linux; "
        "env PARLEY_SERVER_REUSE_PORT)",
    )

    health = commands.add_parser(
        "health",
        help="exit 0 only when a server reports SERVING",
        description="Ask grpc.health.v1 for a status; exit 0 when SERVING, 1 otherwise. "
        "Use it as a container health check.",
    )
    health.add_argument("--service", default="", help="service name, e.g. parley.identity.v1.IdentityService")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default %(default)s)")

    user = commands.add_parser("user", help="register or log in a user", description="Manage your account.")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    register = user_commands.add_parser(
        "register",
        help="create keys, register USERNAME and log in",
        description="Create a user key and a device key, save them to the key file (mode 0600), "
        "register the user with this device, and log in.",
    )
    register.add_argument("username", help="3–32 characters of a-z 0-9 _ . -")
    register.add_argument("--device-name", default="", help="a label for this device")
    user_commands.add_parser(
        "login",
        help="log in with the key file's device",
        description="Sign a login challenge with this device's key and print the session.",
    )

    commands.add_parser("whoami", help="show who the server thinks you are", description="Log in and call WhoAmI.")

    devices = commands.add_parser(
        "devices", help="list or add your devices", description="List your devices, or add one."
    )
    devices.add_argument("--all", action="store_true", help="include revoked devices")
    device_commands = devices.add_subparsers(dest="devices_command", metavar="ACTION")
    add = device_commands.add_parser(
        "add",
        help="create keys for another device and register it",
        description="Create another device of your user, certified by your user key, "
        "and write its key file to OUT (give OUT to the other device as its --key-file).",
    )
    add.add_argument("out", type=Path, help="key file to write for the new device")
    add.add_argument("--name", default="", help="a label for the new device")
    revoke = device_commands.add_parser(
        "revoke", help="revoke a device", description="Revoke one of your devices and end its sessions."
    )
    revoke.add_argument("device_id")

    rooms = commands.add_parser("rooms", help="list, create or delete rooms", description="Manage rooms.")
    room_commands = rooms.add_subparsers(dest="rooms_command", required=True, metavar="ACTION")
    room_commands.add_parser("list", help="list public rooms", description="List public rooms with their sizes.")
    create = room_commands.add_parser(
        "create", help="create a room", description="Create a room at run time; you become its creator."
    )
    create.add_argument("room_id", help="1–64 characters of a-z 0-9 _ . : -")
    create.add_argument("--name", default="", help="display name")
    create.add_argument("--description", default="", help="what the room is for")
    create.add_argument("--max-size", type=int, default=0, help="most participants (0: unbounded)")
    create.add_argument("--events", default="", help="comma-separated events accepted (default: any)")
    create.add_argument("--read-only", action="store_true", help="clients cannot publish; services can")
    create.add_argument("--unlisted", action="store_true", help="reachable by id, not listed")
    delete = room_commands.add_parser("delete", help="delete a room you created", description="Delete a room.")
    delete.add_argument("room_id")

    listen = commands.add_parser(
        "listen",
        help="print a room's events as JSON lines",
        description="Join ROOM and print each event as a JSON line.",
    )
    listen.add_argument("room_id", metavar="ROOM")
    listen.add_argument("--event", action="append", default=[], help="only this event (repeatable)")

    send = commands.add_parser(
        "send", help="publish one event", description="Join ROOM and publish EVENT with a JSON payload."
    )
    send.add_argument("room_id", metavar="ROOM")
    send.add_argument("event", metavar="EVENT")
    send.add_argument("data", metavar="JSON", help='the payload, e.g. \'{"text": "hi"}\'')

    history = commands.add_parser(
        "history",
        help="print a room's kept events as JSON lines",
        description="Print ROOM's kept events, newest first, one JSON line each (no need to join).",
    )
    history.add_argument("room_id", metavar="ROOM")
    history.add_argument("--event", default="", help="only this event")
    history.add_argument("--limit", type=_not_negative, default=50, help="at most this many (default: 50)")
    history.add_argument("--before", type=_not_negative, default=0, help="only events with a smaller sequence")

    edit = commands.add_parser(
        "edit",
        help="replace the payload of an event you sent",
        description="Join ROOM and replace the payload of the kept event HANDLE (yours) with JSON.",
    )
    edit.add_argument("room_id", metavar="ROOM")
    edit.add_argument("handle", metavar="HANDLE", help="the event's handle (from send or history)")
    edit.add_argument("data", metavar="JSON", help="the new payload")

    delete = commands.add_parser(
        "delete",
        help="delete an event you sent",
        description="Join ROOM and delete the kept event HANDLE (yours); the log keeps a tombstone.",
    )
    delete.add_argument("room_id", metavar="ROOM")
    delete.add_argument("handle", metavar="HANDLE", help="the event's handle (from send or history)")

    chat = commands.add_parser(
        "chat",
        help="chat in a room from the terminal",
        description='Join ROOM; each line you type is sent as {"text": line}; messages print as they arrive.',
    )
    chat.add_argument("room_id", metavar="ROOM")
    chat.add_argument("--event", default="message", help="the event name to send and show (default: message)")

    pub = commands.add_parser(
        "pub", help="publish to a subject", description="Publish a JSON value to a pub/sub SUBJECT."
    )
    pub.add_argument("subject", metavar="SUBJECT")
    pub.add_argument("data", metavar="JSON")

    sub = commands.add_parser(
        "sub",
        help="print a subject's messages as JSON lines",
        description='Subscribe to SUBJECT (a prefix when it ends in "*") and print each message.',
    )
    sub.add_argument("subject", metavar="SUBJECT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_dispatch(args))
    except ParleyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return await _serve(args)
    if args.command == "health":
        from parley.cli.health import check_health

        serving, status = await check_health(args.addr, args.service, args.timeout)
        print(status)
        return 0 if serving else 1
    if args.command == "user" and args.user_command == "register":
        if args.key_file.exists() and DeviceIdentity.load(args.key_file).registered:
            print(
                f"error: {args.key_file} already holds a registered identity; choose another --key-file",
                file=sys.stderr,
            )
            return 1
        async with Client(args.addr, username=args.username, key_file=args.key_file, device_name=args.device_name) as c:
            me = await c.whoami()
            print(f"registered {me.username} ({me.user_id}), device {me.device_id}; keys in {args.key_file}")
        return 0
    data = parse_json(args.data, "JSON") if args.command in ("send", "pub", "edit") else None
    client = Client(args.addr, key_file=_existing_key_file(args.key_file))
    async with client:
        if args.command == "user":
            _print(await client.login())
        elif args.command == "whoami":
            _print(await client.whoami())
        elif args.command == "devices":
            await _devices(client, args)
        elif args.command == "rooms":
            await _rooms(client, args)
        elif args.command == "listen":
            await realtime.listen(client, args.room_id, args.event)
        elif args.command == "send":
            await realtime.send(client, args.room_id, args.event, data)
        elif args.command == "history":
            for event in await client.history(args.room_id, limit=args.limit, before=args.before, event=args.event):
                print(realtime.event_line(event))
        elif args.command in ("edit", "delete"):
            await realtime.change(client, args.room_id, args.handle, data, delete=args.command == "delete")
        elif args.command == "chat":
            await realtime.chat(client, args.room_id, args.event)
        elif args.command == "pub":
            await client.message.publish(args.subject, data)
        elif args.command == "sub":
            await realtime.subscribe_subject(client, args.subject)
    return 0


async def _rooms(client: Client, args: argparse.Namespace) -> None:
    if args.rooms_command == "list":
        await realtime.rooms_list(client)
    elif args.rooms_command == "create":
        await realtime.rooms_create(client, args)
    else:
        await client.delete_room(args.room_id)
        print(f"deleted room {args.room_id}")


async def _serve(args: argparse.Namespace) -> int:
    from services.launcher import serve
    from services.runtime.config import ConfigError, load_config

    overrides = {
        "server.host": args.host,
        "server.port": args.port,
        "server.data_dir": args.data_dir,
        "server.gateway_processes": args.gateway_processes,
        "server.reuse_port": args.reuse_port,
    }
    try:
        config = load_config(args.config, os.environ, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        await serve(config, args.service)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _devices(client: Client, args: argparse.Namespace) -> None:
    if args.devices_command == "add":
        if args.out.exists():
            raise SystemExit(f"error: {args.out} already exists; choose another file for the new device's keys")
        added = await client.add_device(args.name)
        added.save(args.out, overwrite=False)
        print(f"added device {added.device_id}; its key file is {args.out}")
    elif args.devices_command == "revoke":
        _print(await client.revoke_device(args.device_id))
    else:
        for device in await client.devices(show_revoked=args.all):
            state = "revoked" if device.HasField("revoke_time") else "active"
            mine = " (this device)" if device.device_id == client.device_id else ""
            print(f"{device.device_id}  {state:7}  {device.display_name or '-'}{mine}")


def _not_negative(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return number


def _existing_key_file(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: no key file at {path}; run `parley user register USERNAME` first")
    return path


def _print(response: message.Message) -> None:
    document: dict[str, Any] = json_format.MessageToDict(response)
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    sys.exit(main())
