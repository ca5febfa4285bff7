"""End-to-end encrypted files through real servers: `client.files`, `Space.put_file/get_file/send_file` and
`client.message.send_file`, sealed on the client, stored erasure-coded, opened and checked on the reader."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from parley import Client, ConnectionState
from parley.crypto import file_sealing
from parley.crypto.errors import DecryptionError
from parley.direct_messages import DirectMessage
from parley.errors import ParleyError, PayloadTooLargeError, PermissionDeniedError, ValidationError
from parley.file.v1 import file_pb2
from parley.files import FileRef, Files, Media, media_body
from parley.spaces import ChannelMessage
from tests.e2e.test_channels import three
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)
CHUNK = file_sealing.CHUNK_BYTES


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12345])
async def test_round_trips_of_every_edge_size(alice: Client, size: int) -> None:
    data = os.urandom(size)
    seen: list[tuple[int, int]] = []
    ref = await alice.files.put(data, name="notes.txt", progress=lambda done, total: seen.append((done, total)))
    assert (ref.size, ref.name, ref.media_type) == (size, "notes.txt", "text/plain")
    assert seen[-1] == (size, size)
    stored = await alice.files.stat(ref)
    header = stored.size - size - file_sealing.CHUNK_OVERHEAD * max(1, -(-size // CHUNK))
    assert file_sealing.HEADER_PREFIX_BYTES < header < 1024  # the sealed manifest, then the sealed chunks
    got: list[int] = []
    assert await alice.files.get(ref, progress=lambda done, total: got.append(done)) == data
    assert (got[-1] if got else 0) == size


async def test_a_50_mb_file_streams_from_a_path_to_a_path(alice: Client, tmp_path: Path) -> None:
    source = tmp_path / "talk.mp4"
    with source.open("wb") as handle:
        for _ in range(50):
            handle.write(os.urandom(1_000_000))
    ref = await alice.files.put(source)
    assert (ref.name, ref.media_type, ref.size) == ("talk.mp4", "video/mp4", 50_000_000)
    target = tmp_path / "out" / "copy.mp4"
    assert await alice.files.get(ref, path=target) == target
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["copy.mp4"]


async def test_putting_a_file_needs_no_realtime_stream(alice: Client) -> None:
    ref = await alice.files.put(b"a quiet upload", name="quiet.txt")
    assert await alice.files.get(ref) == b"a quiet upload"
    assert alice.state is ConnectionState.DISCONNECTED


async def test_refused_uploads_keep_nothing(alice: Client, tmp_path: Path) -> None:
    before = (await alice.files.policy()).used_bytes
    with pytest.raises(ValidationError, match="not accepted"):
        await alice.files.put(b"MZ...", name="setup.exe")
    with pytest.raises(PayloadTooLargeError):
        await alice.files.put(os.urandom(10_000_001), name="huge.png")
    assert (await alice.files.policy()).used_bytes == before


async def test_a_download_cut_short_goes_on_from_where_it_stopped(alice: Client) -> None:
    data = os.urandom(3 * CHUNK + 99)
    ref = await alice.files.put(data, name="cut.pdf")
    offsets: list[int] = []
    cutting = CuttingFiles(alice, offsets, cut_after_frames=5)
    assert await cutting.get(ref) == data
    assert offsets[0] == 0
    assert 0 < offsets[1] < offsets[2]


class CuttingFiles(Files):
    """`client.files` whose Download calls break (UNAVAILABLE) after a few frames, twice."""

    def __init__(self, client: Client, offsets: list[int], cut_after_frames: int) -> None:
        super().__init__(client._auth)
        self._offsets = offsets
        self._cut_after = cut_after_frames

    @property
    def _stub(self) -> Any:
        stub = super()._stub
        files = self

        class Cutting:
            def __getattr__(self, name: str) -> Any:
                return getattr(stub, name)

            def Download(self, request: file_pb2.DownloadRequest, **kwargs: Any) -> CutCall:
                files._offsets.append(request.offset)
                return CutCall(stub.Download(request, **kwargs), files._cut_after if len(files._offsets) <= 2 else 0)

        return Cutting()


class CutCall:
    """A Download call that breaks (UNAVAILABLE) after `cut_after` frames (never when 0)."""

    def __init__(self, call: Any, cut_after: int) -> None:
        self._call = call
        self._cut_after = cut_after

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    async def __aiter__(self) -> AsyncIterator[Any]:
        frames = 0
        async for frame in self._call:
            yield frame
            frames += 1
            if frames == self._cut_after:
                self._call.cancel()
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "cut by the test"
                )


async def test_a_file_in_a_channel_with_its_thumbnail(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        crew = await ann.space.create_channel("crew")
        await crew.add_member(ben.user_id)
        ben_crew = await ben.space.join_channel("crew")
        got: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        ben_crew.on_message(got.put_nowait)
        picture = png(1600, 900)

        handle = await crew.send_file(picture, name="sunset.png", caption="look")
        message = await asyncio.wait_for(got.get(), 10)
        assert message.handle == handle
        assert message.media is not None
        assert (message.media.file.name, message.media.file.media_type, message.media.caption) == (
            "sunset.png",
            "image/png",
            "look",
        )
        assert message.media.thumbnail is not None
        with Image.open(io.BytesIO(message.media.thumbnail)) as thumb:
            assert (thumb.format, max(thumb.size)) == ("JPEG", 320)
        assert await ben_crew.get_file(message.media) == picture
        kept = await ben_crew.history()
        assert kept[0].media is not None
        assert kept[0].media.file == message.media.file

        # A file put without a message, shared by hand: the reference is all a member needs.
        ref = await crew.put_file(b"minutes", name="minutes.txt")
        await crew.send_message({"minutes": ref.to_json()})
        shared = await asyncio.wait_for(got.get(), 10)
        assert shared.media is None
        assert await ben_crew.get_file(FileRef.from_json(shared.body["minutes"])) == b"minutes"

        # A member passing off another's upload as their own message is refused.
        await ben_crew.send_message(media_body(Media(message.media.file)))
        await wait_until(lambda: crew.rejected, within=10)
        assert isinstance(crew.rejected[0][1], file_sealing.ForgedFileError)
        del cyd


async def test_a_file_as_a_direct_message(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        got: asyncio.Queue[DirectMessage] = asyncio.Queue()
        await ben.message.subscribe(f"user:{ben.user_id}", got.put_nowait)
        await ben.stream()
        document = tmp_path / "plan.pdf"
        document.write_bytes(os.urandom(CHUNK + 5))

        await ann.message.send_file(f"user:{ben.user_id}", document, caption="the plan")
        message = await asyncio.wait_for(got.get(), 10)
        assert message.media is not None
        assert message.media.thumbnail is None
        assert (message.media.file.name, message.media.caption) == ("plan.pdf", "the plan")
        assert await ben.files.get(message.media.file, path=tmp_path / "ben" / "plan.pdf") == (
            tmp_path / "ben" / "plan.pdf"
        )
        assert (tmp_path / "ben" / "plan.pdf").read_bytes() == document.read_bytes()


async def test_without_the_key_a_file_id_reveals_nothing(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        crew = await ann.space.create_channel("secret-crew")
        await crew.add_member(ben.user_id)
        plaintext = b"the launch code is 0000 " * 5000
        ref = await crew.put_file(plaintext, name="launch.txt")

        # cyd is no member: the channel's messages, which carry the key, are closed to her ...
        with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
            await cyd.space.join_channel("secret-crew")
        # ... and with the file id alone she gets ciphertext, or nothing she can open.
        stored = await raw_download(cyd, ref.file_id)
        assert len(stored) > len(plaintext)
        assert b"launch code" not in stored
        guessed = dataclasses.replace(ref, key=os.urandom(32))
        with pytest.raises(DecryptionError):
            await cyd.files.get(guessed)
        assert await cyd.files.get(ref) == plaintext  # the control: the real reference opens

        # Nor can she delete it, and another stored file does not pass for it.
        with pytest.raises(PermissionDeniedError, match="NOT_OWNER"):
            await cyd.files.delete(ref)
        other = await ben.files.put(b"decoy", name="decoy.txt")
        with pytest.raises(file_sealing.ForgedFileError):
            await ben.files.get(dataclasses.replace(ref, file_id=other.file_id))
        await ann.files.delete(ref)


async def raw_download(client: Client, file_id: str) -> bytes:
    stub = Files(client._auth)._stub
    call = stub.Download(
        file_pb2.DownloadRequest(file_id=file_id),
        metadata=(("authorization", f"Bearer {await client.access_token()}"),),
    )
    return b"".join([frame.chunk async for frame in call if frame.HasField("chunk")])


async def test_uploads_refused_while_still_sending_report_the_services_reason(alice: Client) -> None:
    page = b"<html>" + os.urandom(3_400_000)
    for _ in range(3):
        outcomes = await asyncio.gather(
            *(alice.files.put(page, name="page.html") for _ in range(8)), return_exceptions=True
        )
        assert all(isinstance(outcome, ValidationError) for outcome in outcomes), outcomes


async def test_a_reference_must_match_the_signed_manifest(alice: Client) -> None:
    ref = await alice.files.put(os.urandom(5000), name="evil.sh.txt")
    for lie in ({"size": 10}, {"name": "cat.jpg"}, {"media_type": "image/jpeg"}):
        with pytest.raises(file_sealing.ForgedFileError, match="differs from its reference"):
            await alice.files.get(dataclasses.replace(ref, **lie))


async def test_a_file_that_grows_while_it_is_uploaded_is_refused(alice: Client, tmp_path: Path) -> None:
    growing = tmp_path / "log.txt"
    growing.write_bytes(os.urandom(CHUNK + 10))

    def grow(done: int, total: int) -> None:
        if done == CHUNK:
            with growing.open("ab") as handle:
                handle.write(b"more")

    with pytest.raises(ParleyError, match="changed while it was being uploaded"):
        await alice.files.put(growing, progress=grow)
    assert (await alice.files.policy()).used_bytes == 0


async def test_a_caption_too_long_is_refused_before_any_upload(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        crew = await ann.space.create_channel("long")
        with pytest.raises(ValueError, match="caption"):
            await crew.send_file(b"x", name="x.txt", caption="c" * 5000)
        with pytest.raises(ValueError, match="caption"):
            await ann.message.send_file(f"user:{ben.user_id}", b"x", name="x.txt", caption="c" * 5000)
        assert (await ann.files.policy()).used_bytes == 0


async def test_a_file_whose_message_cannot_be_sent_is_deleted(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, _, _):
        with pytest.raises(ParleyError):
            await ann.message.send_file("user:u-nobody-at-all", b"orphan", name="orphan.txt")
        assert (await ann.files.policy()).used_bytes == 0


async def test_a_noisy_image_still_gets_a_thumbnail_that_fits_a_message(server_address: str, tmp_path: Path) -> None:
    noise = io.BytesIO()
    Image.frombytes("RGB", (320, 320), os.urandom(320 * 320 * 3)).save(noise, "PNG")
    async with three(server_address, tmp_path) as (ann, ben, _):
        got: asyncio.Queue[DirectMessage] = asyncio.Queue()
        await ben.message.subscribe(f"user:{ben.user_id}", got.put_nowait)
        await ben.stream()
        await ann.message.send_file(f"user:{ben.user_id}", noise.getvalue(), name="noise.png")
        message = await asyncio.wait_for(got.get(), 10)
        assert message.media is not None
        assert message.media.thumbnail is not None
        assert len(message.media.thumbnail) <= 16 * 1024
