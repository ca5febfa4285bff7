"""CLI commands for files in sealed channels: `parley file put CHANNEL PATH` and `parley file get CHANNEL HANDLE`.

`put` seals the file on this device, uploads only ciphertext, and sends the
channel a sealed message carrying the file's key; `get` finds that message
by its handle in the channel's kept history and fetches, checks and decrypts
the file. (`parley files scrub`, in files_admin, looks after the stored
shares on the server's host.)
"""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from parley.cli.channels import label, opened
from parley.cli.chat_lines import printable
from parley.client import Client
from parley.errors import ValidationError
from parley.files import Progress as ProgressCallback
from parley.spaces import ChannelMessage, Space

HISTORY_PAGE = 100  # messages per history call while looking for a handle
# A received file's name, as written here: file systems allow 255 bytes; room is left for the partial file's suffix.
MAX_NAME_BYTES = 200
# Control, format, line and paragraph separator characters: never in a file name written here.
UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


async def put(client: Client, channel: str, path: Path, *, media_type: str | None, caption: str) -> None:
    """`parley file put CHANNEL PATH`: uploads the file sealed, sends it to the channel, prints the message handle."""
    space = await opened(client, channel)
    try:
        with transfer_bar(path.name) as progress:
            handle = await space.send_file(path, media_type=media_type, caption=caption, progress=progress)
    except ValidationError as error:  # the service refuses before any byte of the file is sent
        if error.field != "start.media_type":
            raise
        hint = "--type names the type when the one guessed from the file name is wrong"
        raise SystemExit(f"error: {error.reason}: {error.message} ({hint})") from None
    print(handle)


async def get(client: Client, channel: str, handle: str, *, output: Path | None, force: bool) -> None:
    """`parley file get CHANNEL HANDLE`: writes the file the message HANDLE carries, prints the path written."""
    space = await opened(client, channel)
    message = await find_message(space, handle)
    if message is None:
        raise SystemExit(
            f"error: no message {printable(handle)!r} in the kept history of {label(space)} that this device can "
            "open; check the handle (`parley file put` prints it) and that it was sent after this device joined"
        )
    if message.media is None:
        raise SystemExit(f"error: message {printable(handle)!r} in {label(space)} carries no file")
    ref = message.media.file
    target = _target(output, ref.name)
    if target.exists() and not force:
        raise SystemExit(f"error: {target} exists already; pass --force to overwrite it")
    with transfer_bar(printable(ref.name)) as progress:
        await space.get_file(message.media, path=target, progress=progress)
    print(target)


async def find_message(space: Space, handle: str) -> ChannelMessage | None:
    """The kept message HANDLE, paging back from the newest; None when no message this device opens has it."""
    before = 0
    while True:
        rejected_before = len(space.rejected)
        page = await space.history(limit=HISTORY_PAGE, before=before)
        for message in page:
            if message.handle == handle:
                return message
        # Messages this device cannot open are left out of the page but recorded in `rejected`.
        seqs = [message.seq for message in page] + [seq for seq, _ in space.rejected[rejected_before:]]
        if len(seqs) < HISTORY_PAGE or min(seqs) <= 1:  # sequences start at 1
            return None
        before = min(seqs)


@contextlib.contextmanager
def transfer_bar(name: str) -> Iterator[ProgressCallback]:
    """A progress callback drawing a bar (size, speed, time left) on stderr, only when stderr is a terminal:
    a script's or a log's stderr gets nothing. The size comes with the first call."""
    bar = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task(name, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def _target(output: Path | None, sent_name: str) -> Path:
    """Where to write: `output`, or the sender's file name in `output` (a directory) or the current directory."""
    if output is not None and not output.is_dir():
        return output
    name = _local_name(sent_name)
    if name is None:
        raise SystemExit(f"error: the file's name {printable(sent_name)!r} cannot name a file here; choose one with -o")
    return (output or Path()) / name


def _local_name(sent: str) -> str | None:
    """The sender's file name, safe to create here: its last path part, not hidden (a leading "." becomes "_"),
    control, format and line-separator characters replaced by "_", at most MAX_NAME_BYTES bytes (the extension
    kept); None when nothing usable is left."""
    last = sent.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if unicodedata.category(char) in UNSAFE_CATEGORIES else char for char in last).strip()
    if name in ("", ".", ".."):
        return None
    if name.startswith("."):
        name = "_" + name[1:]
    return _shortened(name)


def _shortened(name: str) -> str:
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension.encode()) > 16:
        stem, extension = name, ""
    suffix = f".{extension}" if extension else ""
    budget = MAX_NAME_BYTES - len(suffix.encode())
    return stem.encode()[:budget].decode(errors="ignore") + suffix
