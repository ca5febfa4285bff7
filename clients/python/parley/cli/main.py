"""`parley`: run the servers and talk to them.

The grammar (and the PARLEY_ADDR / PARLEY_KEY_FILE defaults) is in `parser`;
this module runs the chosen command and turns every failure into one line on
stderr and an exit code: 1 for a failed command, 2 for bad usage or config,
130 after Ctrl-C, 141 when stdout was closed early (`parley … | head`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from parley.cli import account, channels, chat, direct, files, realtime, registration
from parley.cli.failures import describe, output_closed
from parley.cli.parser import build_parser
from parley.cli.realtime import parse_json
from parley.client import Client
from parley.crypto.errors import CryptoError
from parley.errors import ParleyError, error_from_rpc
from parley.keystore import KeyStoreLockedError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = asyncio.run(_dispatch(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        return output_closed()
    except grpc.aio.AioRpcError as exc:
        print(describe(error_from_rpc(exc), args.addr), file=sys.stderr)
        return 1
    except ParleyError as exc:
        print(describe(exc, args.addr), file=sys.stderr)
        return 1
    except OSError as exc:  # a key file that cannot be read or written
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyStoreLockedError as exc:
        print(f"error: {exc} (PARLEY_KEYSTORE_PASSPHRASE holds the key store's passphrase)", file=sys.stderr)
        return 1
    except CryptoError as exc:  # keys the server presents that do not check out
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from parley.cli.serve import serve

        return await serve(args)
    if args.command == "health":
        return await _health(args)
    if args.command == "files":
        from parley.cli.files_admin import scrub

        return await scrub(args)
    if args.command == "user" and args.user_command == "register":
        await registration.register(args.addr, args.key_file, args.username, args.device_name, args.keystore_passphrase)
        return 0
    data = parse_json(args.data, "JSON") if args.command in ("send", "pub", "edit") else None
    key_file = _existing_key_file(args.key_file)
    async with Client(args.addr, key_file=key_file, keystore_passphrase=args.keystore_passphrase) as client:
        if args.command == "user":
            await _user(client, args)
        elif args.command == "whoami":
            await account.whoami(client, as_json=args.json)
        elif args.command == "devices":
            await _devices(client, args)
        elif args.command == "rooms":
            await _rooms(client, args)
        elif args.command == "listen":
            await realtime.listen(client, args.room_id, args.event)
        elif args.command == "send":
            await realtime.send(client, args.room_id, args.event, data)
        elif args.command == "history":
            await realtime.history(client, args.room_id, limit=args.limit, before=args.before, event=args.event)
        elif args.command in ("edit", "delete"):
            await realtime.change(client, args.room_id, args.handle, data, delete=args.command == "delete")
        elif args.command == "chat":
            await chat.chat(client, args.room_id, args.event)
        elif args.command == "pub":
            await realtime.publish_subject(client, args.subject, data)
        elif args.command == "sub":
            await realtime.subscribe_subject(client, args.subject)
        elif args.command == "dm":
            await direct.send_text(client, args.user, args.text)
        elif args.command == "inbox":
            await direct.inbox(client, wait=args.wait, follow=args.follow)
        elif args.command == "safety-number":
            await direct.show_safety_number(client, args.user)
        elif args.command == "trust":
            await direct.trust_user(client, args.user, args.number)
        elif args.command == "channel":
            await _channel(client, args)
        elif args.command == "file":
            await _file(client, args)
    return 0


async def _health(args: argparse.Namespace) -> int:
    from parley.cli.health import check_health

    try:
        serving, status = await check_health(args.addr, args.service, args.timeout)
    except ParleyError as exc:
        print(exc.code.name)  # the status word on stdout, as for an answer; why on stderr
        raise
    print(status)
    return 0 if serving else 1


async def _user(client: Client, args: argparse.Namespace) -> None:
    if args.user_command == "login":
        await account.login(client)
    else:
        await account.show_user(client, args.user, as_json=args.json)


async def _devices(client: Client, args: argparse.Namespace) -> None:
    if args.devices_command == "add":
        await account.add_device(client, args.key_file, args.device_name)
    elif args.devices_command == "revoke":
        await account.revoke_device(client, args.device_id)
    else:
        await account.list_devices(client, show_revoked=args.all)


async def _rooms(client: Client, args: argparse.Namespace) -> None:
    if args.rooms_command == "list":
        await realtime.rooms_list(client)
    elif args.rooms_command == "create":
        await realtime.rooms_create(client, args)
    else:
        await client.delete_room(args.room_id)
        print(f"deleted room {args.room_id}")


async def _channel(client: Client, args: argparse.Namespace) -> None:
    action = args.channel_command
    if action == "create":
        await channels.create(client, args.name, exist_ok=args.exist_ok, keeper=args.keeper)
    elif action == "join":
        await channels.join(client, args.channel)
    elif action == "list":
        await channels.list_channels(client)
    elif action == "invite":
        await channels.invite(client, args.name, uses=args.uses, expires=args.expires)
    elif action == "accept":
        await channels.accept(client, args.code, args.auth_code)
    elif action == "send":
        await channels.send(client, args.name, args.text)
    elif action == "read":
        await channels.read(client, args.name, limit=args.limit, follow=args.follow)
    elif action == "members":
        await channels.members(client, args.name)
    elif action == "add":
        await channels.add(client, args.name, args.user, admin=args.admin)
    else:
        await channels.remove(client, args.name, args.user)


async def _file(client: Client, args: argparse.Namespace) -> None:
    if args.file_command == "put":
        await files.put(client, args.name, args.path, media_type=args.media_type, caption=args.caption)
    else:
        await files.get(client, args.name, args.handle, output=args.output, force=args.force)


def _existing_key_file(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: no key file at {path}; run `parley user register USERNAME` first")
    return path


if __name__ == "__main__":
    sys.exit(main())
