"""End-to-end encrypted files in the SDK: `client.files.put(...)` / `get(...)`, and what a message carries.

A file is sealed here (parley.crypto.file_sealing) and uploaded as ciphertext;
the file service erasure-codes and stores it and never sees its key, name or
bytes. `put` returns a `FileRef`: the server's file id, the hash of the stored
header, the file key and the uploader's device key. Sent inside a sealed
channel message or direct message (`Space.send_file`,
`client.message.send_file`), it is all a reader needs; without it the stored
bytes are noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import mimetypes
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from parley.auth import Auth
from parley.crypto import file_sealing as sealing
from parley.crypto.encoding import b64, unb64
from parley.crypto.errors import MalformedInputError
from parley.crypto.identity import device_id_for
from parley.crypto.primitives import HASH_BYTES
from parley.errors import ParleyError, error_from_rpc
from parley.file.v1 import file_pb2, file_pb2_grpc
from parley.thumbnails import checked_thumbnail
from parley.thumbnails import thumbnail as make_thumbnail

# Upload frames hold the most the service takes per message (UploadPolicy.max_chunk_bytes, 256 KiB).
FRAME_BYTES = 256 * 1024
SIGNING_KEY_BYTES = 32  # an Ed25519 public key
# What the service answers a `start` it accepted with, before the chunks are sent.
UPLOAD_ACCEPTED = ("parley-upload", "accepted")
# A download cut short (the connection lost, the server restarted) goes on from where it stopped.
RESUME_ATTEMPTS = 5
# The pause before a download resumes or an upload is sent again, times the attempt's number.
RETRY_PAUSE_SECONDS = 0.2
# An upload that failed on a lost connection is sent again from the start (the service kept nothing).
UPLOAD_ATTEMPTS = 3
DEFAULT_MEDIA_TYPE = "application/octet-stream"
# The body of a sealed message that carries a file (`media_body`).
MEDIA_TYPE_TAG = "parley.file"
MAX_CAPTION_CHARS = 4000
# A download that receives nothing for this long is given up (and resumed).
DOWNLOAD_IDLE_SECONDS = 60.0

T = TypeVar("T")
Progress = Callable[[int, int], Any]
"""`progress(done, total)`: plaintext bytes sealed and sent, or received and opened, of `total`."""


@dataclasses.dataclass(frozen=True)
class FileRef:
    """All a reader needs to fetch and open a file; send it only inside sealed messages (it holds the key)."""

    file_id: str
    header_hash: bytes
    key: bytes = dataclasses.field(repr=False)
    uploader_key: bytes
    name: str
    media_type: str
    size: int
    """Bytes of plaintext."""

    @property
    def uploader_device_id(self) -> str:
        return device_id_for(self.uploader_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.file_id,
            "hash": b64(self.header_hash),
            "key": b64(self.key),
            "uploader": b64(self.uploader_key),
            "name": self.name,
            "type": self.media_type,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: Any) -> FileRef:
        try:
            ref = cls(
                file_id=_text(data["id"]),
                header_hash=unb64(_text(data["hash"])),
                key=unb64(_text(data["key"])),
                uploader_key=unb64(_text(data["uploader"])),
                name=_text(data["name"]),
                media_type=_text(data["type"]),
                size=_size(data["size"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedInputError(f"not a file reference: {error}") from None
        if (
            len(ref.key) != sealing.FILE_KEY_BYTES
            or len(ref.header_hash) != HASH_BYTES
            or len(ref.uploader_key) != SIGNING_KEY_BYTES
        ):
            raise MalformedInputError("a file reference's key, hash or uploader key has the wrong length")
        return ref


@dataclasses.dataclass(frozen=True)
class Media:
    """A file a sealed message carries: the reference, an optional caption and (for images) a thumbnail."""

    file: FileRef
    caption: str = ""
    thumbnail: bytes | None = None
    """A small JPEG, sealed with the message."""


def media_body(media: Media) -> dict[str, Any]:
    """The JSON body of a message carrying `media`."""
    body: dict[str, Any] = {"type": MEDIA_TYPE_TAG, "file": media.file.to_json(), "caption": media.caption}
    if media.thumbnail is not None:
        body["thumbnail"] = b64(media.thumbnail)
    return body


def read_media(body: Any, sender_device_id: str) -> Media | None:
    """The file a message body carries, or None for other messages.

    The file must be the sender's own upload (its reference names the sender's device): `ForgedFileError`
    otherwise, as `MalformedInputError` for a malformed one.
    """
    if not isinstance(body, dict) or body.get("type") != MEDIA_TYPE_TAG:
        return None
    ref = FileRef.from_json(body.get("file"))
    if ref.uploader_device_id != sender_device_id:
        raise sealing.ForgedFileError("a file message whose file another device uploaded")
    thumbnail = body.get("thumbnail")
    caption = body.get("caption", "")
    if not isinstance(caption, str) or not (thumbnail is None or isinstance(thumbnail, str)):
        raise MalformedInputError("a file message's caption and thumbnail are text")
    if len(caption) > MAX_CAPTION_CHARS:
        raise MalformedInputError(f"a caption holds at most {MAX_CAPTION_CHARS} characters")
    return Media(ref, caption, checked_thumbnail(unb64(thumbnail)) if thumbnail is not None else None)


async def sent_or_deleted(files: Files, media: Media, send: Awaitable[T]) -> T:
    """`send` (the message carrying `media`), deleting the uploaded file when it fails: nobody could fetch it."""
    try:
        return await send
    except BaseException:
        with contextlib.suppress(ParleyError):
            await asyncio.shield(files.delete(media.file))
        raise


class Files:
    """`client.files`: put and get end-to-end encrypted files; no realtime stream needed."""

    def __init__(self, auth: Auth) -> None:
        self._auth = auth

    @property
    def _stub(self) -> file_pb2_grpc.FileServiceAsyncStub:
        return file_pb2_grpc.FileServiceStub(self._auth.channel())

    async def policy(self) -> file_pb2.UploadPolicy:
        """What the service accepts: media types, caps per media type, your quota and usage."""
        return (await self._auth.call(self._stub.GetUploadPolicy, file_pb2.GetUploadPolicyRequest())).policy

    async def put(
        self,
        source: bytes | Path | str,
        *,
        name: str | None = None,
        media_type: str | None = None,
        progress: Progress | None = None,
    ) -> FileRef:
        """Seals `source` (bytes, or a file's path, read as it is sent) and uploads it.

        `name` defaults to the path's file name, `media_type` to a guess from the name. The service checks
        the media type against its allow-list and the size against that type's cap and your quota
        (`ValidationError`, `PayloadTooLargeError`, `QuotaExceededError`); nothing is kept of a refused or
        interrupted upload, and one cut by a lost connection is tried again from the start.
        """
        path = Path(source) if isinstance(source, (str, Path)) else None
        size = path.stat().st_size if path is not None else len(source)  # type: ignore[arg-type]
        name = name if name is not None else (_shown(path.name) if path is not None else "")
        media_type = media_type or (mimetypes.guess_type(name)[0] if name else None) or DEFAULT_MEDIA_TYPE
        me = self._auth.identity
        manifest = sealing.Manifest(
            sealing.new_content_id(),
            name,
            media_type,
            size,
            sealing.CHUNK_BYTES,
            me.user_id,
            me.device_signing_key.verify_key.encode(),
            int(time.time() * 1000),
        )
        key = sealing.new_file_key()
        header = sealing.seal_header(manifest, key, me.device_signing_key)
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            with _opened(source) as plaintext:
                frames = _upload_frames(header, manifest, key, plaintext, progress)
                try:
                    uploaded = await self._upload(frames)
                    break
                except grpc.aio.AioRpcError as rpc_error:
                    error = error_from_rpc(rpc_error)
                    if not error.retryable or attempt == UPLOAD_ATTEMPTS:
                        raise error from None
            await asyncio.sleep(RETRY_PAUSE_SECONDS * attempt)
        return FileRef(
            uploaded.file.file_id,
            sealing.header_hash(header),
            key,
            manifest.uploader_key,
            name,
            media_type,
            size,
        )

    async def put_media(
        self,
        source: bytes | Path | str,
        *,
        name: str | None = None,
        media_type: str | None = None,
        caption: str = "",
        thumbnail: bool = True,
        progress: Progress | None = None,
    ) -> Media:
        """`put`, plus (for an image, with `thumbnail`) a small JPEG preview to seal with the message; a caption
        over MAX_CAPTION_CHARS raises ValueError before anything is uploaded."""
        if len(caption) > MAX_CAPTION_CHARS:
            raise ValueError(f"a caption holds at most {MAX_CAPTION_CHARS} characters, not {len(caption)}")
        ref = await self.put(source, name=name, media_type=media_type, progress=progress)
        preview = await asyncio.to_thread(make_thumbnail, source, ref.media_type) if thumbnail else None
        return Media(ref, caption, preview)

    async def get(self, ref: FileRef, *, path: Path | str | None = None, progress: Progress | None = None) -> Any:
        """The file's plaintext as bytes; with `path`, written there instead (streamed, in place only once
        every chunk opened) and the path returned.

        Checks everything against the reference: the header's hash, the uploader's signature on the
        manifest, every chunk's seal, position and count (`ForgedFileError` otherwise; the service has
        already checked each share against its hash). A download cut short goes on from where it stopped.
        """
        if path is None:
            sink = bytearray()
            await self._download(ref, sink.extend, progress)
            return bytes(sink)
        target = Path(path)
        with _in_place(target) as handle:
            await self._download(ref, handle.write, progress)
        return target

    async def stat(self, ref: FileRef | str) -> file_pb2.FileInfo:
        """What the service knows of a file: ciphertext size, media type, uploader, time, hash."""
        request = file_pb2.StatRequest(file_id=_file_id(ref))
        return (await self._auth.call(self._stub.Stat, request)).file

    async def delete(self, ref: FileRef | str) -> None:
        """Deletes a file you uploaded (`PermissionDeniedError`, NOT_OWNER, for another's)."""
        await self._auth.call(self._stub.Delete, file_pb2.DeleteRequest(file_id=_file_id(ref)))

    async def _upload(self, frames: AsyncIterator[file_pb2.UploadRequest]) -> file_pb2.UploadResponse:
        """Writes `start`, waits for the service to accept it (its initial metadata), then the chunks one by one:
        a refused upload sends no chunk, and the service's status, not a failed write's, is what the caller sees."""
        call = self._stub.Upload(None, metadata=await self._metadata())  # frames written below
        try:
            accepted = False
            async for frame in frames:
                if call.done():
                    break
                try:
                    await call.write(frame)
                    if not accepted:  # the service checked `start`: a refusal comes before any chunk is sent
                        answer = await asyncio.wait_for(call.initial_metadata(), self._auth.timeout)
                        accepted = UPLOAD_ACCEPTED in tuple(answer)
                        if not accepted:
                            break  # refused: awaiting the call below raises the service's status
                except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    break  # the call ended: awaiting it below raises its status
            else:
                await call.done_writing()
            return await call
        except BaseException:
            call.cancel()
            raise

    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {await self._auth.access_token()}"),)

    async def _download(self, ref: FileRef, write: Callable[[bytes], Any], progress: Progress | None) -> None:
        reader = _DownloadReader(ref)
        attempts = 0
        while True:
            call = self._stub.Download(
                file_pb2.DownloadRequest(file_id=ref.file_id, offset=reader.received),
                metadata=await self._metadata(),
            )
            received_before = reader.received
            try:
                async for frame in _within(call, DOWNLOAD_IDLE_SECONDS):
                    opened = reader.feed(frame)
                    for plaintext in opened:
                        write(plaintext)
                    if opened and progress is not None:
                        progress(reader.opened, ref.size)
            except grpc.aio.AioRpcError as rpc_error:
                error = error_from_rpc(rpc_error)
                attempts = 1 if reader.received > received_before else attempts + 1
                if not error.retryable or attempts > RESUME_ATTEMPTS:
                    raise error from None
                await asyncio.sleep(RETRY_PAUSE_SECONDS * attempts)
                continue
            finally:
                call.cancel()
            reader.finish()
            return


class _DownloadReader:
    """Turns Download frames (possibly over several resumed calls) into checked plaintext chunks."""

    def __init__(
        self,
        ref: FileRef,
        chunk_bytes: tuple[int, int] = (sealing.MIN_SEALED_CHUNK_BYTES, sealing.MAX_SEALED_CHUNK_BYTES),
    ) -> None:
        self._ref = ref
        self._chunk_bytes = chunk_bytes
        self.received = 0
        self.opened = 0
        self._stored: file_pb2.FileInfo | None = None
        self._header = bytearray()
        self._header_length: int | None = None
        self._chunks: sealing.ChunkOpener | None = None

    def feed(self, frame: file_pb2.DownloadResponse) -> list[bytes]:
        """The plaintext chunks this frame completes (checked)."""
        if frame.HasField("file"):
            self._check_stored(frame.file)
            return []
        data = frame.chunk
        if not data:
            raise sealing.ForgedFileError("an empty chunk frame: the service never sends one")
        self.received += len(data)
        if self._chunks is None:
            data = self._take_header(data)
            if self._chunks is None:
                return []
        opened = self._chunks.feed(data)
        self.opened += sum(len(plaintext) for plaintext in opened)
        return opened

    def finish(self) -> None:
        if self._chunks is None:
            raise sealing.ForgedFileError("the stored file ends inside its header")
        self._chunks.finish()

    def _check_stored(self, stored: file_pb2.FileInfo) -> None:
        """Every resumed call must be serving the same stored bytes as the first."""
        if self._stored is not None and stored.blake2b_256 != self._stored.blake2b_256:
            raise sealing.ForgedFileError("the stored file changed between two parts of one download")
        self._stored = stored

    def _take_header(self, data: bytes) -> bytes:
        if self._header_length is None:
            self._header += data
            if len(self._header) < sealing.HEADER_PREFIX_BYTES:
                return b""
            self._header_length = sealing.header_length(bytes(self._header[: sealing.HEADER_PREFIX_BYTES]))
            data, self._header = bytes(self._header), bytearray()
        needed = self._header_length - len(self._header)
        self._header += data[:needed]
        if len(self._header) < self._header_length:
            return b""
        header = bytes(self._header)
        manifest = sealing.open_header(header, self._ref.key, self._ref.header_hash, self._ref.uploader_key)
        _check_matches(manifest, self._ref, self._chunk_bytes)
        if self._stored is not None and self._stored.size != sealing.stored_size(header, manifest):
            raise sealing.ForgedFileError("the stored file's size is not the one its manifest gives")
        self._chunks = sealing.ChunkOpener(manifest, self._ref.key)
        return data[needed:]


def _check_matches(manifest: sealing.Manifest, ref: FileRef, chunk_bytes: tuple[int, int]) -> None:
    """The uploader signed the manifest; the reference's size, name and type are only the sender's word."""
    if (manifest.size, manifest.name, manifest.media_type) != (ref.size, ref.name, ref.media_type):
        raise sealing.ForgedFileError("the file's signed manifest differs from its reference (size, name or type)")
    if not chunk_bytes[0] <= manifest.chunk_bytes <= chunk_bytes[1]:
        raise sealing.ForgedFileError(f"a chunk size of {manifest.chunk_bytes} bytes, outside what readers accept")


async def _upload_frames(
    header: bytes,
    manifest: sealing.Manifest,
    key: bytes,
    plaintext: BinaryIO,
    progress: Progress | None,
) -> AsyncIterator[file_pb2.UploadRequest]:
    """`start`, then the header and the sealed chunks in FRAME_BYTES frames."""
    size = sealing.stored_size(header, manifest)
    yield file_pb2.UploadRequest(start=file_pb2.UploadStart(media_type=manifest.media_type, size=size))
    sealer = sealing.ChunkSealer(manifest, key)
    framer = _Framer(header)
    sent = 0
    for index in range(manifest.chunks):
        chunk = plaintext.read(manifest.chunk_length(index))
        if len(chunk) != manifest.chunk_length(index):
            raise _changed_while_uploading()
        for frame in framer.frames(sealer.seal(chunk)):
            yield file_pb2.UploadRequest(chunk=frame)
        sent += len(chunk)
        if progress is not None:
            progress(sent, manifest.size)
    if plaintext.read(1):
        raise _changed_while_uploading()
    if framer.rest:
        yield file_pb2.UploadRequest(chunk=framer.rest)


class _Framer:
    """Cuts a stream of byte strings into FRAME_BYTES frames without copying the whole of each."""

    def __init__(self, first: bytes) -> None:
        self.rest = first

    def frames(self, data: bytes) -> Iterator[bytes]:
        start = 0
        if self.rest:
            need = FRAME_BYTES - len(self.rest)
            if len(data) < need:
                self.rest += data
                return
            yield self.rest + data[:need]
            start, self.rest = need, b""
        whole = start + (len(data) - start) // FRAME_BYTES * FRAME_BYTES
        for offset in range(start, whole, FRAME_BYTES):
            yield data[offset : offset + FRAME_BYTES]
        self.rest = data[whole:]


def _changed_while_uploading() -> ParleyError:
    return ParleyError(grpc.StatusCode.ABORTED, "", "the file changed while it was being uploaded")


async def _within(call: Any, idle_seconds: float) -> AsyncIterator[file_pb2.DownloadResponse]:
    """The call's frames; UNAVAILABLE (so the download resumes) when none comes for `idle_seconds`."""
    frames = call.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_seconds):  # no task per frame, as wait_for would make
                frame = await anext(frames)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                f"no bytes of the download for {idle_seconds:g} s",
                "",
            ) from None
        yield frame


@contextlib.contextmanager
def _opened(source: bytes | Path | str) -> Iterator[BinaryIO]:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            yield handle
    else:
        yield io.BytesIO(source)


@contextlib.contextmanager
def _in_place(target: Path) -> Iterator[BinaryIO]:
    """A file beside `target` that becomes `target` only if the block completes (no half file under its name)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _file_id(ref: FileRef | str) -> str:
    return ref.file_id if isinstance(ref, FileRef) else ref


def _shown(file_name: str) -> str:
    """A file name as text: bytes a Linux name holds that are not UTF-8 become U+FFFD."""
    return file_name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _size(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise TypeError("a size is a whole number of bytes")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected text")
    return value
