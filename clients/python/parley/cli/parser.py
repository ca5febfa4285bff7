"""The `parley` command line's grammar: commands, their options, and the global options.

The global options (`--addr`, `--key-file`) are accepted before or after any
command and listed in every command's `--help`. Their defaults come from
PARLEY_ADDR and PARLEY_KEY_FILE, and the key store's passphrase from
PARLEY_KEYSTORE_PASSPHRASE (never a flag: other users see a command's
arguments), read here and nowhere else.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from parley.client import DEFAULT_ADDRESS

DEFAULT_KEY_FILE = Path("~/.config/parley/identity.json")
SERVE_TARGETS = ("all", "identity", "room", "history", "file", "gateway")
MAX_INVITATION_USES = 1000  # the channel service's limit
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", re.IGNORECASE)


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    address = environ.get("PARLEY_ADDR") or DEFAULT_ADDRESS
    key_file = _key_file(environ.get("PARLEY_KEY_FILE") or str(DEFAULT_KEY_FILE))
    parser = argparse.ArgumentParser(
        prog="parley",
        description="Parley realtime messaging: run the servers, manage users and devices, talk in rooms, "
        "send end-to-end encrypted direct messages, talk in sealed channels.",
        parents=[_global_options(address, key_file, at_top=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.set_defaults(keystore_passphrase=environ.get("PARLEY_KEYSTORE_PASSPHRASE") or None)
    # Below the top level the global options default to "not given", so one given
    # before the command is not overwritten by the command's own default.
    commands = _Commands(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
        _global_options(address, key_file, at_top=False),
    )
    _add_serve(commands)
    _add_health(commands)
    _add_files(commands)
    _add_user(commands)
    _add_whoami(commands)
    _add_devices(commands)
    _add_rooms(commands)
    _add_room_events(commands)
    _add_subjects(commands)
    _add_direct(commands)
    _add_channels(commands)
    _add_file(commands)
    return parser


class _Commands:
    """Adds commands that all take the global options."""

    def __init__(
        self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser], globals_: argparse.ArgumentParser
    ) -> None:
        self._subparsers = subparsers
        self._globals = globals_

    def add(self, name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return self._subparsers.add_parser(
            name,
            help=summary,
            description=description,
            parents=[self._globals],
        )

    def nested(self, parser: argparse.ArgumentParser, dest: str, *, required: bool = True) -> _Commands:
        return _Commands(parser.add_subparsers(dest=dest, required=required, metavar="ACTION"), self._globals)


def _global_options(address: str, key_file: Path, *, at_top: bool) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--addr",
        metavar="HOST:PORT",
        default=address if at_top else argparse.SUPPRESS,
        help=f"the Parley server (env PARLEY_ADDR; default {address})",
    )
    group.add_argument(
        "--key-file",
        metavar="PATH",
        type=_key_file,
        default=key_file if at_top else argparse.SUPPRESS,
        help=f"this device's key file; new device key files go beside it (env PARLEY_KEY_FILE; default {key_file})",
    )
    return options


def _add_serve(commands: _Commands) -> None:
    serve = commands.add(
        "serve",
        "run Parley (all services in one process, or one service)",
        "Run all services on one port (default), or one service per process in split mode. "
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
    serve.add_argument(
        "--web-port",
        type=int,
        metavar="PORT",
        help="also start Envoy, the gRPC-Web proxy for browsers, on this port; 0 picks a free one "
        "(default: no proxy; env PARLEY_WEB_PORT; see docs/browser.md)",
    )
    serve.add_argument(
        "--print-web-config",
        action="store_true",
        help="print the Envoy config of the gRPC-Web proxy (given --web-port) and exit, to run Envoy yourself",
    )


def _add_files(commands: _Commands) -> None:
    files = commands.add(
        "files",
        "look after the file service's stored files (on its host)",
        "Commands for the host of the file service; they read its settings like `parley serve file` "
        "(--config, then PARLEY_<SECTION>_<KEY> variables, then flags).",
    )
    actions = commands.nested(files, "files_command")
    scrub = actions.add(
        "scrub",
        "check every file's shares and repair what can be",
        "Read every share of every stored file, check it against its BLAKE2b-256 address, rebuild missing or "
        "damaged shares from any k intact ones, and report what was repaired and what is lost (fewer than k "
        "intact: restore the missing share stores). Exit 1 when a file is lost. Safe while the server runs.",
    )
    scrub.add_argument("--config", type=Path, help="TOML config file")
    scrub.add_argument("--data-dir", type=Path, help="the file service's data directory (default ./data)")
    scrub.add_argument(
        "--sweep",
        action="store_true",
        help="also remove leftovers no file refers to that nothing wrote for an hour before the scrub began "
        "(shares of uploads or repairs cut short, partial files of abandoned uploads); skipped when a file is "
        "lost or the metadata knows no file",
    )


def _add_health(commands: _Commands) -> None:
    health = commands.add(
        "health",
        "exit 0 only when a server reports SERVING",
        "Ask grpc.health.v1 at --addr for a status; print it and exit 0 when SERVING, 1 otherwise. "
        "Use it as a container health check.",
    )
    health.add_argument("--service", default="", help="service name, e.g. parley.identity.v1.IdentityService")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default %(default)s)")


def _add_user(commands: _Commands) -> None:
    user = commands.add("user", "register, log in or look up a user", "Manage your account; look up others.")
    actions = commands.nested(user, "user_command")
    register = actions.add(
        "register",
        "create keys, register USERNAME and log in",
        "Create a user key and a device key, register the user with this device, log in, and save the keys "
        "to --key-file (mode 0600) once the server has accepted them.",
    )
    register.add_argument("username", help="3–32 characters of a-z 0-9 _ . -")
    register.add_argument("--device-name", default="", help="a label for this device")
    actions.add(
        "login",
        "log in with the key file's device",
        "Sign a login challenge with this device's key and print the session (tokens) as JSON.",
    )
    show = actions.add(
        "show",
        "show a user's id, public keys and active devices",
        "Look up USER (a username, or a user id) and print its id, user key and active devices.",
    )
    show.add_argument("user", metavar="USER", help="a username or a user id")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_whoami(commands: _Commands) -> None:
    whoami = commands.add(
        "whoami",
        "show who the server thinks you are",
        "Log in and print your username, user id, this device, your devices and their public keys.",
    )
    whoami.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_devices(commands: _Commands) -> None:
    devices = commands.add("devices", "list, add or revoke your devices", "List your devices, or add or revoke one.")
    devices.add_argument("--all", action="store_true", help="include revoked devices")
    actions = commands.nested(devices, "devices_command", required=False)
    add = actions.add(
        "add",
        "create keys for another device and register it",
        "Create another device of your user, certified by your user key, and write its key file beside "
        "--key-file (named after the device). Give that file to the other device as its --key-file.",
    )
    add.add_argument("device_name", metavar="NAME", help="a label for the new device, e.g. phone")
    revoke = actions.add("revoke", "revoke a device", "Revoke one of your devices and end its sessions.")
    revoke.add_argument("device_id", metavar="DEVICE_ID", help="the device's id (see `parley devices`)")


def _add_rooms(commands: _Commands) -> None:
    rooms = commands.add("rooms", "list, create or delete rooms", "Manage rooms.")
    actions = commands.nested(rooms, "rooms_command")
    actions.add("list", "list public rooms", "List public rooms with their sizes and creators.")
    create = actions.add("create", "create a room", "Create a room at run time; you become its creator.")
    create.add_argument("room_id", metavar="ROOM", help="1–64 characters of a-z 0-9 _ . : -")
    create.add_argument("--name", default="", help="display name")
    create.add_argument("--description", default="", help="what the room is for")
    create.add_argument("--max-size", type=int, default=0, help="most participants (0: unbounded)")
    create.add_argument("--events", default="", help="comma-separated events accepted (default: any)")
    create.add_argument("--read-only", action="store_true", help="clients cannot publish; services can")
    create.add_argument("--unlisted", action="store_true", help="reachable by id, not listed")
    create.add_argument(
        "--exist-ok", action="store_true", help="a room of that id existing already is fine (scripts that rerun)"
    )
    delete = actions.add("delete", "delete a room you created", "Delete a room you created.")
    delete.add_argument("room_id", metavar="ROOM", help="the room's id")


def _add_room_events(commands: _Commands) -> None:
    listen = commands.add(
        "listen",
        "print a room's events as JSON lines",
        "Join ROOM and print each event as a JSON line (with the sender's username).",
    )
    listen.add_argument("room_id", metavar="ROOM", help="the room's id")
    listen.add_argument("--event", action="append", default=[], help="only this event (repeatable)")

    send = commands.add(
        "send",
        "publish one event",
        "Join ROOM, publish EVENT with a JSON payload, and print where it landed (room, event, seq, handle) as JSON.",
    )
    send.add_argument("room_id", metavar="ROOM", help="the room's id")
    send.add_argument("event", metavar="EVENT", help="the event's name, e.g. message")
    send.add_argument("data", metavar="JSON", help='the payload, e.g. \'{"text": "hi"}\'')

    history = commands.add(
        "history",
        "print a room's kept events as JSON lines",
        "Print ROOM's kept events, newest first, one JSON line each (no need to join).",
    )
    history.add_argument("room_id", metavar="ROOM", help="the room's id")
    history.add_argument("--event", default="", help="only this event")
    history.add_argument("--limit", type=_not_negative, default=50, help="at most this many (default: 50)")
    history.add_argument("--before", type=_not_negative, default=0, help="only events with a smaller sequence")

    edit = commands.add(
        "edit",
        "replace the payload of an event you sent",
        "Join ROOM and replace the payload of the kept event HANDLE (yours) with JSON.",
    )
    edit.add_argument("room_id", metavar="ROOM", help="the room's id")
    edit.add_argument("handle", metavar="HANDLE", help="the event's handle (from send or history)")
    edit.add_argument("data", metavar="JSON", help="the new payload")

    delete = commands.add(
        "delete",
        "delete an event you sent",
        "Join ROOM and delete the kept event HANDLE (yours); the log keeps a tombstone.",
    )
    delete.add_argument("room_id", metavar="ROOM", help="the room's id")
    delete.add_argument("handle", metavar="HANDLE", help="the event's handle (from send or history)")

    chat = commands.add(
        "chat",
        "chat in a room from the terminal",
        'Join ROOM; each line you type is sent as {"text": line}; messages print as they arrive, stamped with '
        "the time, after the recent history the room shows on join. Lines typed while the connection is down go "
        "out once it is back; a refused line prints why. Ctrl-D leaves (exit 0), Ctrl-C leaves at once (exit 130).",
    )
    chat.add_argument("room_id", metavar="ROOM", help="the room's id")
    chat.add_argument("--event", default="message", help="the event name to send and show (default: message)")


def _add_subjects(commands: _Commands) -> None:
    pub = commands.add("pub", "publish to a subject", "Publish a JSON value to a pub/sub SUBJECT and confirm it.")
    pub.add_argument("subject", metavar="SUBJECT", help="e.g. presence:lobby")
    pub.add_argument("data", metavar="JSON", help="the value, e.g. '{\"online\": 1}'")

    sub = commands.add(
        "sub",
        "print a subject's messages as JSON lines",
        'Subscribe to SUBJECT (a prefix when it ends in "*") and print each message (with the sender\'s username).',
    )
    sub.add_argument("subject", metavar="SUBJECT", help='e.g. presence:lobby or "presence:*"')


KEY_STORE_NOTE = (
    "This device's end-to-end keys and sessions live beside --key-file (its name ending .e2e.json); "
    "set PARLEY_KEYSTORE_PASSPHRASE to keep that file sealed under a passphrase."
)


def _add_direct(commands: _Commands) -> None:
    dm = commands.add(
        "dm",
        "send an end-to-end encrypted direct message",
        'Send TEXT to USER as {"text": TEXT}, encrypted for each of their devices and your own other devices, '
        "and print how many devices got it. A device can receive direct messages once it has run a direct-message "
        "command (e.g. `parley inbox`), which publishes its keys. Refused while USER's key differs from the one "
        f"pinned on first use (see `parley safety-number`). {KEY_STORE_NOTE}",
    )
    dm.add_argument("user", metavar="USER", help="a username (or a user id)")
    dm.add_argument("text", metavar="TEXT", help="the message")

    inbox = commands.add(
        "inbox",
        "print your new direct messages",
        "Print the direct messages waiting for this device, then those that arrive, one line each "
        "(`[time] alice: text`; copies of what you sent from another device as `you → bob: text`), and remove "
        "them from the server once shown. Ends after --wait seconds without a new message, or runs until Ctrl-C "
        f"with --follow. Messages from a user whose key changed are held until you trust it. {KEY_STORE_NOTE}",
    )
    inbox.add_argument(
        "--wait",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="end after this many seconds with no new message (default: %(default)s)",
    )
    inbox.add_argument("--follow", action="store_true", help="keep printing messages until Ctrl-C")

    safety = commands.add(
        "safety-number",
        "print the number to compare with USER out of band",
        "Print the 60-digit safety number for your key and USER's: both of you see the same digits. Compare them "
        "in person or over another channel you trust; a difference means the keys are not the ones you think. "
        f"Says so when USER's key differs from the one pinned on first use. {KEY_STORE_NOTE}",
    )
    safety.add_argument("user", metavar="USER", help="a username (or a user id)")

    trust = commands.add(
        "trust",
        "accept USER's current key",
        "Pin the key the server presents for USER now, if it gives NUMBER (the safety number you compared with "
        "USER), so direct messages to and from USER go through again. Without NUMBER, prints the number to "
        f"compare. {KEY_STORE_NOTE}",
    )
    trust.add_argument("user", metavar="USER", help="a username (or a user id)")
    trust.add_argument(
        "number", metavar="NUMBER", nargs="?", help="the 60 digits you compared (spaces allowed inside quotes)"
    )


CHANNEL_KEYS_NOTE = (
    "A channel's messages are sealed with its current epoch's key, which the server never holds; the epoch keys "
    "this device holds live in its key store beside --key-file (its name ending .e2e.json): set "
    "PARLEY_KEYSTORE_PASSPHRASE to keep that file sealed under a passphrase."
)


def _add_channels(commands: _Commands) -> None:
    channel = commands.add(
        "channel",
        "create, join and talk in sealed (end-to-end encrypted) channels",
        "Sealed group channels: only members read them. Each message is sealed once for the channel and signed "
        "by the sender's device; members change by commits an admin signs, and removing a member starts a new "
        f"epoch the removed member cannot read. {CHANNEL_KEYS_NOTE}",
    )
    actions = commands.nested(channel, "channel_command")
    create = actions.add(
        "create",
        "create a channel and print its space id",
        f"Create the channel NAME, with you as its only member and admin, and print its space id. {CHANNEL_KEYS_NOTE}",
    )
    create.add_argument("name", metavar="NAME", help="1–64 characters of a-z 0-9 _ . -")
    create.add_argument(
        "--exist-ok",
        action="store_true",
        help="a channel of that name you are a member of is fine: print its space id (scripts that rerun)",
    )
    create.add_argument(
        "--keeper",
        action="store_true",
        help="a keeper channel: the app's keeper lets in whoever asks to join, with nobody online; NOT end to end "
        "against the operator, who holds the keeper's keys",
    )
    join = actions.add(
        "join",
        "open a channel you are a member of",
        "Open a channel you are a member of: check its chain of member commits, take the epoch keys sealed for "
        "this device, and print its epoch and number of members. Not a member yet: ask an admin for an "
        f"invitation (`parley channel accept`) or to add you. {CHANNEL_KEYS_NOTE}",
    )
    join.add_argument("channel", metavar="NAME_OR_SPACE_ID", help="the channel's name, or a space id (sp-…)")
    actions.add(
        "list",
        "list your channels",
        "List the channels and spaces you are a member of: name (a space has none), space id, whether it is end "
        "to end, and its epoch.",
    )
    invite = actions.add(
        "invite",
        "make an invitation code and auth code (admins)",
        "Make an invitation to the channel NAME (you must be an admin of it) and print its code, then on the next "
        "line its 8-digit auth code. Give them to the guest by different channels: the code alone admits nobody, "
        f"and three wrong auth codes burn the invitation. {CHANNEL_KEYS_NOTE}",
    )
    invite.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    invite.add_argument(
        "--uses", type=_invitation_uses, default=1, metavar="N", help="guests it admits, 1–1000 (default: %(default)s)"
    )
    invite.add_argument(
        "--expires",
        type=_lifetime_seconds,
        default=86_400.0,
        metavar="SECONDS",
        help="how long it stays valid (default: %(default)g, a day)",
    )
    accept = actions.add(
        "accept",
        "join a channel with an invitation",
        "Join the channel an invitation is for, with its code and the 8-digit auth code given to you apart from "
        "it, and print the channel's name. A wrong auth code says how many tries are left; the third burns the "
        f"invitation. {CHANNEL_KEYS_NOTE}",
    )
    accept.add_argument("code", metavar="CODE", help="the invitation code (pi1.…)")
    accept.add_argument("auth_code", metavar="AUTH_CODE", help="the 8-digit auth code")
    send = actions.add(
        "send",
        "send a message to a channel",
        f'Seal {{"text": TEXT}} for the channel NAME and send it; every member can read it. {CHANNEL_KEYS_NOTE}',
    )
    send.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    send.add_argument("text", metavar="TEXT", help="the message")
    read = actions.add(
        "read",
        "print a channel's messages",
        "Print the channel's kept messages, oldest first, one line each (`[time] alice: text`; other payloads as "
        "compact JSON), those sent in epochs before this device joined left out; with --follow, then those that "
        f"arrive, until Ctrl-C. {CHANNEL_KEYS_NOTE}",
    )
    read.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    read.add_argument("--limit", type=_not_negative, default=50, help="the last this many (default: %(default)s)")
    read.add_argument("--follow", action="store_true", help="keep printing messages as they arrive until Ctrl-C")
    members = actions.add(
        "members",
        "list a channel's members",
        "Print the members of the channel NAME as the commits this device verified say: username, role (admin "
        f"or member) and number of devices. {CHANNEL_KEYS_NOTE}",
    )
    members.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    add = actions.add(
        "add",
        "add a user to a channel (admins)",
        "Add USER, with every device their user key vouches for, to the channel NAME in a new epoch (you must "
        f"be an admin of it). They read what is sent from then on. {CHANNEL_KEYS_NOTE}",
    )
    add.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    add.add_argument("user", metavar="USER", help="a username (or a user id)")
    add.add_argument("--admin", action="store_true", help="make them an admin (default: a plain member)")
    remove = actions.add(
        "remove",
        "remove a user from a channel (admins)",
        "Remove USER from the channel NAME in a new epoch whose key only the remaining devices get: USER cannot "
        f"read what is sent from then on (they keep what they read). You must be an admin. {CHANNEL_KEYS_NOTE}",
    )
    remove.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    remove.add_argument("user", metavar="USER", help="a username (or a user id)")


def _add_file(commands: _Commands) -> None:
    file = commands.add(
        "file",
        "send and fetch end-to-end encrypted files in a channel (not `files`, the server host's store)",
        "Share files in a sealed channel. `file put` seals a file on this device, uploads only ciphertext and sends "
        "the channel a sealed message carrying the file's key; `file get` finds that message by its handle and "
        "fetches, checks and decrypts the file. The server never holds the key. (`parley files scrub` is another "
        f"command, for the file service's host: it checks and repairs the stored shares.) {CHANNEL_KEYS_NOTE}",
    )
    actions = commands.nested(file, "file_command")
    put = actions.add(
        "put",
        "send a file to a channel and print the message's handle",
        "Seal the file at PATH on this device, upload it (a progress bar on stderr when it is a terminal), send "
        "the channel NAME a sealed message carrying it, and print that message's handle, alone on its line: the "
        "members fetch the file with `parley file get NAME HANDLE`. The server refuses media types it does not "
        "accept (the type is guessed from the file's name; --type names it), files over its size caps and uploads "
        f"past your quota. {CHANNEL_KEYS_NOTE}",
    )
    put.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    put.add_argument("path", metavar="PATH", type=_existing_file, help="the file to send")
    put.add_argument(
        "--type",
        dest="media_type",
        metavar="MEDIA_TYPE",
        type=_media_type,
        help="its media type, e.g. application/pdf (default: guessed from PATH's name)",
    )
    put.add_argument("--caption", default="", help="a caption sealed with the file")
    get = actions.add(
        "get",
        "fetch a file a channel message carries and print where it went",
        "Find the message HANDLE in the kept history of the channel NAME, fetch the file it carries, check it (the "
        "sender's signed manifest; every chunk's seal, place and count), decrypt it, write it to -o PATH (a "
        "progress bar on stderr when it is a terminal) and print the path written. No partial file is ever left "
        "under that name; an existing file is kept unless --force. Messages sent before this device joined the "
        f"channel cannot be opened. {CHANNEL_KEYS_NOTE}",
    )
    get.add_argument("name", metavar="NAME", help="the channel's name (or space id)")
    get.add_argument("handle", metavar="HANDLE", help="the message's handle (printed by `parley file put`)")
    get.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        type=Path,
        help="where to write it; a directory keeps the file's name (default: the file's name, in the current "
        "directory)",
    )
    get.add_argument("--force", action="store_true", help="overwrite a file already at that path")


def _key_file(text: str) -> Path:
    return Path(text).expanduser()


def _not_negative(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return number


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no file at {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return path


def _media_type(text: str) -> str:
    if not MEDIA_TYPE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a media type (type/subtype, e.g. application/pdf)")
    return text.lower()


def _invitation_uses(text: str) -> int:
    uses = _not_negative(text)
    if not 1 <= uses <= MAX_INVITATION_USES:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and {MAX_INVITATION_USES}")
    return uses


def _positive_seconds(text: str) -> float:
    return _seconds_above_zero(text, " (use --follow to wait on)")


def _lifetime_seconds(text: str) -> float:
    return _seconds_above_zero(text, "")


def _seconds_above_zero(text: str, hint: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0{hint}")
    return seconds


def _version() -> str:
    try:
        return metadata.version("parley")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"
