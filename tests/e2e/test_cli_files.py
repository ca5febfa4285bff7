"""`parley file put|get` against a real server: sealed files sent to a channel and fetched by message handle."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from parley import Client
from parley.cli import files
from parley.cli.parser import build_parser
from services import allinone
from tests.e2e.test_cli_channels import ok, refused, register
from tests.e2e.test_cli_direct import parley
from tests.support import make_config, running

pytestmark = pytest.mark.timeout(60)

HANDLE_LINE = re.compile(r"\S+\n")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
THREE_MB = 3_000_000


async def crew_of_ann_and_ben(address: str, tmp_path: Path) -> tuple[Path, Path]:
    """ann's and ben's key files; ann made the channel crew and added ben."""
    ann_key, ben_key = tmp_path / "ann.json", tmp_path / "ben.json"
    await register(address, ann_key, "ann")
    await register(address, ben_key, "ben")
    await ok("channel", "create", "crew", key_file=ann_key, address=address)
    await ok("channel", "add", "crew", "ben", key_file=ann_key, address=address)
    return ann_key, ben_key


def a_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("command", [["file"], ["file", "put"], ["file", "get"]], ids=" ".join)
def test_every_file_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"usage: parley {' '.join(command)}")
    assert "--addr" in out
    assert "--key-file" in out
    assert "PARLEY_KEYSTORE_PASSPHRASE" in out
    if command == ["file"]:
        assert "`parley files scrub` is another command, for the file service's host" in out
    elif command == ["file", "put"]:
        assert "print that message's handle" in out
        assert "--type MEDIA_TYPE" in out
        assert "--caption" in out
    else:
        assert "-o PATH, --output PATH" in out
        assert "--force" in out


def test_the_top_level_help_tells_file_from_files(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    lines = capsys.readouterr().out.splitlines()
    file_line = next(line for line in lines if line.split()[:1] == ["file"])
    files_line = next(line for line in lines if line.split()[:1] == ["files"])
    assert "end-to-end encrypted files in a channel" in file_line
    assert "stored files (on its host)" in files_line


async def test_put_then_get_gives_the_same_bytes(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = await crew_of_ann_and_ben(server_address, tmp_path)
    report = a_file(tmp_path / "ann" / "report.pdf", THREE_MB)

    out = await ok("file", "put", "crew", str(report), key_file=ann_key, address=server_address)
    assert HANDLE_LINE.fullmatch(out), out
    handle = out.strip()

    downloads = tmp_path / "ben" / "downloads"
    downloads.mkdir(parents=True)
    out = await ok("file", "get", "crew", handle, "-o", str(downloads), key_file=ben_key, address=server_address)
    assert out == f"{downloads / 'report.pdf'}\n"
    assert (downloads / "report.pdf").read_bytes() == report.read_bytes()

    err = await refused("file", "get", "crew", handle, "-o", str(downloads), key_file=ben_key, address=server_address)
    assert err == f"error: {downloads / 'report.pdf'} exists already; pass --force to overwrite it\n"
    (downloads / "report.pdf").write_bytes(b"stale")
    copy = downloads / "copy.pdf"
    for argv, written in ((["-o", str(copy)], copy), (["-o", str(downloads), "--force"], downloads / "report.pdf")):
        out = await ok("file", "get", "crew", handle, *argv, key_file=ben_key, address=server_address)
        assert out == f"{written}\n"
        assert written.read_bytes() == report.read_bytes()
    assert sorted(path.name for path in downloads.iterdir()) == ["copy.pdf", "report.pdf"]  # no partial files


async def test_type_and_caption_travel_with_the_file(server_address: str, tmp_path: Path) -> None:
    ann_key, ben_key = await crew_of_ann_and_ben(server_address, tmp_path)
    upload = a_file(tmp_path / "scan.bin", 1000)
    out = await ok(
        "file",
        "put",
        "crew",
        str(upload),
        "--type",
        "Application/PDF",
        "--caption",
        "the signed form",
        key_file=ann_key,
        address=server_address,
    )
    async with Client(server_address, key_file=ben_key) as ben:
        [message] = await (await ben.space.join_channel("crew")).history()
    assert message.handle == out.strip()
    assert message.media is not None
    assert (message.media.file.name, message.media.file.media_type, message.media.file.size) == (
        "scan.bin",
        "application/pdf",
        1000,
    )
    assert message.media.caption == "the signed form"


@pytest.mark.parametrize(
    ("name", "argv", "media_type"),
    [("page.html", [], "text/html"), ("tool.exe", ["--type", "application/x-msdownload"], "application/x-msdownload")],
)
async def test_a_media_type_the_server_refuses_is_reported_and_nothing_is_sent(
    server_address: str, tmp_path: Path, name: str, argv: list[str], media_type: str
) -> None:
    ann_key, _ = await crew_of_ann_and_ben(server_address, tmp_path)
    upload = a_file(tmp_path / name, 2000)

    err = await refused("file", "put", "crew", str(upload), *argv, key_file=ann_key, address=server_address)
    assert err.startswith(
        f"error: VALIDATION_FAILED: start.media_type: files of type {media_type} are not accepted; accepted: "
        "image/jpeg, "
    ), err
    assert "application/pdf" in err
    assert err.endswith("(--type names the type when the one guessed from the file name is wrong)\n")
    assert await ok("channel", "read", "crew", key_file=ann_key, address=server_address) == "no messages\n"


async def test_a_file_over_its_types_cap_is_refused_before_it_is_sent(server_address: str, tmp_path: Path) -> None:
    ann_key, _ = await crew_of_ann_and_ben(server_address, tmp_path)
    picture = a_file(tmp_path / "big.png", 10_000_001)

    err = await refused("file", "put", "crew", str(picture), key_file=ann_key, address=server_address)
    assert re.fullmatch(
        r"error: PAYLOAD_TOO_LARGE: image files \(image/png\) may hold at most 10,000,000 bytes; "
        r"10,000,\d{3} were declared\n",
        err,
    ), err
    assert await ok("channel", "read", "crew", key_file=ann_key, address=server_address) == "no messages\n"


async def test_a_file_past_the_quota_is_refused(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, **{"files.quota_bytes_per_user": 5_000_000})
    async with running(allinone.create_server, config) as (_, address):
        ann_key, _ = await crew_of_ann_and_ben(address, tmp_path)
        report = a_file(tmp_path / "report.pdf", THREE_MB)
        await ok("file", "put", "crew", str(report), key_file=ann_key, address=address)
        err = await refused("file", "put", "crew", str(report), key_file=ann_key, address=address)
    assert re.fullmatch(
        r"error: QUOTA_EXCEEDED: this upload of 3,000,\d{3} bytes does not fit the quota: 3,000,\d{3} of 5,000,000 "
        r"bytes are in use\n",
        err,
    ), err


async def test_get_of_a_message_that_is_not_there_or_carries_no_file(server_address: str, tmp_path: Path) -> None:
    ann_key = tmp_path / "ann.json"
    ben_key = tmp_path / "ben.json"
    await register(server_address, ann_key, "ann")
    await register(server_address, ben_key, "ben")
    await ok("channel", "create", "crew", key_file=ann_key, address=server_address)
    before_ben = await ok(
        "file", "put", "crew", str(a_file(tmp_path / "a.txt", 10)), key_file=ann_key, address=server_address
    )
    await ok("channel", "add", "crew", "ben", key_file=ann_key, address=server_address)
    async with Client(server_address, key_file=ann_key) as ann:
        text_handle = await (await ann.space.join_channel("crew")).send_message({"text": "no file here"})

    cannot_open = "that this device can open; check the handle (`parley file put` prints it) and that it was sent after"
    for handle in ("no-such-handle", before_ben.strip()):
        err = await refused("file", "get", "crew", handle, key_file=ben_key, address=server_address)
        assert err.startswith(f"error: no message {handle!r} in the kept history of crew {cannot_open}"), err
    err = await refused("file", "get", "crew", text_handle, key_file=ben_key, address=server_address)
    assert err == f"error: message {text_handle!r} in crew carries no file\n"
    err = await refused("file", "get", "nowhere", text_handle, key_file=ben_key, address=server_address)
    assert err == "error: CHANNEL_NOT_FOUND: no channel 'nowhere'\n"


async def test_a_senders_file_name_cannot_write_outside_the_chosen_directory(
    server_address: str, tmp_path: Path
) -> None:
    ann_key, ben_key = await crew_of_ann_and_ben(server_address, tmp_path)
    async with Client(server_address, key_file=ann_key) as ann:
        crew = await ann.space.join_channel("crew")
        escaping = await crew.send_file(b"sneaky", name="../../.profile\x1b[2J", media_type="text/plain")
        nameless = await crew.send_file(b"dots", name="..", media_type="text/plain")
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    out = await ok("file", "get", "crew", escaping, "-o", str(downloads), key_file=ben_key, address=server_address)
    assert out == f"{downloads / '_profile_[2J'}\n"  # its last part, not hidden, no control characters
    assert (downloads / "_profile_[2J").read_bytes() == b"sneaky"
    err = await refused("file", "get", "crew", nameless, "-o", str(downloads), key_file=ben_key, address=server_address)
    assert err == "error: the file's name '..' cannot name a file here; choose one with -o\n"
    await ok(
        "file", "get", "crew", nameless, "-o", str(downloads / "dots.txt"), key_file=ben_key, address=server_address
    )
    assert sorted(path.name for path in downloads.iterdir()) == ["_profile_[2J", "dots.txt"]


@pytest.mark.parametrize(
    ("sent", "written"),
    [
        (".bashrc", "_bashrc"),
        ("a/../../.bash_profile", "_bash_profile"),
        ("line\u2028break\u2029.txt", "line_break_.txt"),
        ("x" * 300 + ".pdf", "x" * (files.MAX_NAME_BYTES - 4) + ".pdf"),
        ("é" * 150, "é" * (files.MAX_NAME_BYTES // 2)),
    ],
)
def test_a_received_files_name_is_made_safe(sent: str, written: str) -> None:
    assert files._local_name(sent) == written


async def test_find_message_pages_back_through_the_history(
    server_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "HISTORY_PAGE", 3)
    async with Client(server_address, username="ann", key_file=tmp_path / "ann.json") as ann:
        space = await ann.space.create_channel("crew")
        oldest = await space.send_file(b"first", name="first.txt")
        for number in range(7):
            await space.send_message({"text": f"message {number}"})
        found = await files.find_message(space, oldest)
        missing = await files.find_message(space, "no-such-handle")
    assert found is not None
    assert found.media is not None
    assert found.media.file.name == "first.txt"
    assert missing is None


async def test_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    key_file = tmp_path / "nobody.json"
    code, out, err = await parley(
        "file", "put", "crew", str(tmp_path / "missing.pdf"), key_file=key_file, address="127.0.0.1:1"
    )
    assert (code, out) == (2, "")
    assert err.endswith(f"parley file put: error: argument PATH: no file at {tmp_path / 'missing.pdf'}\n"), err
    code, out, err = await parley("file", "put", "crew", str(tmp_path), key_file=key_file, address="127.0.0.1:1")
    assert (code, out) == (2, "")
    assert err.endswith(f"error: argument PATH: {tmp_path} is not a file\n"), err
    upload = a_file(tmp_path / "a.txt", 1)
    code, out, err = await parley(
        "file", "put", "crew", str(upload), "--type", "pdf", key_file=key_file, address="127.0.0.1:1"
    )
    assert (code, out) == (2, "")
    assert err.endswith("error: argument --type: 'pdf' is not a media type (type/subtype, e.g. application/pdf)\n"), err


async def test_a_terminal_sees_a_progress_bar_and_stdout_stays_the_handle(server_address: str, tmp_path: Path) -> None:
    ann_key, _ = await crew_of_ann_and_ben(server_address, tmp_path)
    report = a_file(tmp_path / "report.pdf", THREE_MB)
    leader, follower = os.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley.cli.main",
            *("file", "put", "crew", str(report), "--addr", server_address, "--key-file", str(ann_key)),
            stdout=asyncio.subprocess.PIPE,
            stderr=follower,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
                "TERM": "xterm-256color",
                "COLUMNS": "120",
            },
        )
        os.close(follower)
        drawing = asyncio.create_task(asyncio.to_thread(_read_until_closed, leader))
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        drawn = ANSI.sub("", (await asyncio.wait_for(drawing, 10)).decode())
    finally:
        os.close(leader)
    assert process.returncode == 0, drawn
    assert HANDLE_LINE.fullmatch(out.decode()), out
    assert "report.pdf" in drawn
    assert "3.0/3.0 MB" in drawn
    assert "MB/s" in drawn


def _read_until_closed(fd: int) -> bytes:
    """All a pseudo-terminal's program wrote, until its last writer closed it (EIO on Linux)."""
    received = bytearray()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data
