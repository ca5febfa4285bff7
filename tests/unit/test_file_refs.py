"""What a message carries for a file (parley.files: FileRef, Media), the download reader that checks a stored file
against its reference across resumed calls, and thumbnails (parley.thumbnails)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from parley import files
from parley.crypto.encoding import b64
from parley.crypto.errors import MalformedInputError
from parley.crypto.file_sealing import ForgedFileError, header_hash, stored_size
from parley.crypto.identity import device_id_for
from parley.crypto.primitives import blake2b_256
from parley.file.v1 import file_pb2
from parley.files import MEDIA_TYPE_TAG, FileRef, Media, _DownloadReader, _Framer, _shown, media_body, read_media
from parley.thumbnails import THUMBNAIL_PIXELS, checked_thumbnail, thumbnail
from tests.unit.test_crypto_files import SMALL_CHUNK, UPLOADER, SealedFile, seal_file

UPLOADER_DEVICE = device_id_for(UPLOADER.verify_key.encode())
# The tests seal with tiny chunks; readers accept only 64 KiB to 4 MiB unless told otherwise.
ANY_CHUNK = (1, 1 << 32)


def make_ref(sealed: SealedFile | None = None) -> FileRef:
    sealed = sealed if sealed is not None else seal_file(os.urandom(100))
    return FileRef(
        file_id="f-" + os.urandom(16).hex(),
        header_hash=header_hash(sealed.header),
        key=sealed.key,
        uploader_key=sealed.manifest.uploader_key,
        name=sealed.manifest.name,
        media_type=sealed.manifest.media_type,
        size=sealed.manifest.size,
    )


# --- FileRef -------------------------------------------------------------------------------------


def test_a_file_ref_survives_json() -> None:
    ref = make_ref()

    assert FileRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    assert ref.uploader_device_id == UPLOADER_DEVICE


def test_a_file_ref_does_not_show_its_key() -> None:
    ref = make_ref()

    assert b64(ref.key) not in repr(ref)
    assert ref.key.hex() not in repr(ref)


@pytest.mark.parametrize("field", ["id", "hash", "key", "uploader", "name", "type", "size"])
def test_a_file_ref_missing_a_field_is_malformed(field: str) -> None:
    data = make_ref().to_json()
    del data[field]

    with pytest.raises(MalformedInputError):
        FileRef.from_json(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 7),
        ("id", None),
        ("hash", b"\x00" * 32),
        ("hash", ["AAAA"]),
        ("key", None),
        ("uploader", 12),
        ("name", None),
        ("name", {"text": "a.png"}),
        ("type", 3.5),
        ("size", None),
        ("size", "many"),
        ("size", [12]),
    ],
)
def test_a_file_ref_with_a_field_of_the_wrong_type_is_malformed(field: str, value: Any) -> None:
    data = make_ref().to_json()
    data[field] = value

    with pytest.raises(MalformedInputError):
        FileRef.from_json(data)


@pytest.mark.parametrize("data", [None, "f-1", 42, [], ["id", "hash"]])
def test_something_other_than_an_object_is_not_a_file_ref(data: Any) -> None:
    with pytest.raises(MalformedInputError):
        FileRef.from_json(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hash", b64(bytes(31))),
        ("hash", b64(bytes(33))),
        ("hash", ""),
        ("key", b64(bytes(16))),
        ("key", b64(bytes(64))),
        ("uploader", b64(bytes(31))),
        ("uploader", b64(bytes(0))),
    ],
)
def test_a_file_ref_with_a_key_or_hash_of_the_wrong_length_is_malformed(field: str, value: str) -> None:
    data = make_ref().to_json()
    data[field] = value

    with pytest.raises(MalformedInputError):
        FileRef.from_json(data)


@pytest.mark.parametrize("field", ["hash", "key", "uploader"])
@pytest.mark.parametrize("text", ["not base64!", "AAA", "AA AA"])
def test_a_file_ref_with_bytes_that_are_not_base64_is_malformed(field: str, text: str) -> None:
    data = make_ref().to_json()
    data[field] = text

    with pytest.raises(MalformedInputError):
        FileRef.from_json(data)


# --- Media in message bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "hello",
        "",
        42,
        None,
        [],
        ["parley.file"],
        {},
        {"text": "hi"},
        {"type": "text", "file": "x"},
        {"type": "PARLEY.FILE"},
    ],
)
def test_an_ordinary_message_body_carries_no_media(body: Any) -> None:
    assert read_media(body, UPLOADER_DEVICE) is None


def a_thumbnail() -> bytes:
    picture = io.BytesIO()
    Image.new("RGB", (900, 600), (10, 120, 200)).save(picture, "PNG")
    made = thumbnail(picture.getvalue(), "image/png")
    assert made is not None
    return made


@pytest.mark.parametrize(
    ("caption", "with_preview"), [("", False), ("our holiday", False), ("", True), ("ünïcode ✓", True)]
)
def test_media_survives_a_message_body(caption: str, with_preview: bool) -> None:
    preview = a_thumbnail() if with_preview else None
    media = Media(make_ref(), caption, preview)

    body = json.loads(json.dumps(media_body(media)))

    assert body["type"] == MEDIA_TYPE_TAG
    assert ("thumbnail" in body) == (preview is not None)
    assert read_media(body, UPLOADER_DEVICE) == media


def test_a_media_body_without_a_caption_reads_as_an_empty_caption() -> None:
    body = media_body(Media(make_ref(), "ignored"))
    del body["caption"]

    media = read_media(body, UPLOADER_DEVICE)

    assert media is not None
    assert media.caption == ""


def test_a_file_message_whose_file_another_device_uploaded_is_forged() -> None:
    mallory = nacl.signing.SigningKey.generate()
    body = media_body(Media(make_ref()))

    with pytest.raises(ForgedFileError):
        read_media(body, device_id_for(mallory.verify_key.encode()))


@pytest.mark.parametrize(
    "changes",
    [
        {"file": None},
        {"file": "f-1"},
        {"file": {"id": "f-1"}},
        {"caption": 3},
        {"caption": None},
        {"thumbnail": 5},
        {"thumbnail": "not base64!"},
    ],
)
def test_a_malformed_file_message_is_refused(changes: dict[str, Any]) -> None:
    body = media_body(Media(make_ref(), "caption")) | changes

    with pytest.raises(MalformedInputError):
        read_media(body, UPLOADER_DEVICE)


# --- the download reader -------------------------------------------------------------------------


def file_info(stored: bytes, **changes: Any) -> file_pb2.FileInfo:
    fields: dict[str, Any] = {
        "file_id": "f-1",
        "size": len(stored),
        "media_type": "image/png",
        "uploader_id": "alice",
        "blake2b_256": blake2b_256(stored),
    }
    return file_pb2.FileInfo(**(fields | changes))


def download_call(info: file_pb2.FileInfo, data: bytes, piece_bytes: int) -> list[file_pb2.DownloadResponse]:
    """One Download call's frames: the file, then `data` (from the call's offset) in pieces."""
    pieces = [data[start : start + piece_bytes] for start in range(0, len(data), piece_bytes)]
    return [file_pb2.DownloadResponse(file=info), *(file_pb2.DownloadResponse(chunk=piece) for piece in pieces)]


def read_frames(reader: _DownloadReader, frames: Iterable[file_pb2.DownloadResponse]) -> bytes:
    return b"".join(plaintext for frame in frames for plaintext in reader.feed(frame))


@pytest.mark.parametrize("size", [0, 1, SMALL_CHUNK, 3 * SMALL_CHUNK + 7])
@pytest.mark.parametrize("piece_bytes", [1, 5, 13, 41, 97, 100_000])
def test_a_download_in_any_frame_size_gives_back_the_plaintext(size: int, piece_bytes: int) -> None:
    sealed = seal_file(os.urandom(size))
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)

    plaintext = read_frames(reader, download_call(file_info(sealed.stored), sealed.stored, piece_bytes))
    reader.finish()

    assert plaintext == sealed.plaintext
    assert reader.received == len(sealed.stored)
    assert reader.opened == size


def test_progress_counts_opened_plaintext_as_each_chunk_opens() -> None:
    sealed = seal_file(os.urandom(3 * SMALL_CHUNK + 7))
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
    opened_after_each = []
    for frame in download_call(file_info(sealed.stored), sealed.stored, 50):
        for _ in reader.feed(frame):
            opened_after_each.append(reader.opened)
    reader.finish()

    assert opened_after_each == [SMALL_CHUNK, 2 * SMALL_CHUNK, 3 * SMALL_CHUNK, 3 * SMALL_CHUNK + 7]


def resumed_download(sealed: SealedFile, breaks: Iterable[int], piece_bytes: int) -> bytes:
    """The plaintext of a download cut at each of `breaks` (stored bytes) and resumed where it stopped."""
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
    info = file_info(sealed.stored)
    plaintext = b""
    for end in [*sorted(breaks), len(sealed.stored)]:
        plaintext += read_frames(reader, download_call(info, sealed.stored[reader.received : end], piece_bytes))
        assert reader.received == end
    reader.finish()
    assert reader.received == len(sealed.stored)
    return plaintext


@pytest.mark.parametrize("piece_bytes", [3, 29, 1000])
def test_a_download_resumed_mid_header_mid_chunk_and_at_a_chunk_boundary_gives_back_the_plaintext(
    piece_bytes: int,
) -> None:
    sealed = seal_file(os.urandom(4 * SMALL_CHUNK + 11))
    header = len(sealed.header)
    breaks = [5, header - 1, header, header + 17, header + SMALL_CHUNK + 40, header + 3 * (SMALL_CHUNK + 40) + 1]

    assert resumed_download(sealed, breaks, piece_bytes) == sealed.plaintext


@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.integers(0, 600), piece_bytes=st.integers(1, 300))
def test_a_download_resumed_anywhere_gives_back_the_plaintext(data: st.DataObject, size: int, piece_bytes: int) -> None:
    sealed = seal_file(os.urandom(size))
    breaks = data.draw(st.lists(st.integers(0, len(sealed.stored)), max_size=6))

    assert resumed_download(sealed, breaks, piece_bytes) == sealed.plaintext


def test_the_reader_tracks_the_offset_to_resume_at() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
    stop = len(sealed.header) + 30

    read_frames(reader, download_call(file_info(sealed.stored), sealed.stored[:stop], 7))

    assert reader.received == stop
    assert reader.opened == 0


def test_a_resumed_call_serving_other_stored_bytes_is_forged() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
    half = len(sealed.stored) // 2
    read_frames(reader, download_call(file_info(sealed.stored), sealed.stored[:half], 16))

    changed = file_info(sealed.stored, blake2b_256=blake2b_256(b"other bytes"))
    with pytest.raises(ForgedFileError):
        read_frames(reader, download_call(changed, sealed.stored[half:], 16))


def test_a_stored_size_other_than_the_manifest_gives_is_forged() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))
    assert stored_size(sealed.header, sealed.manifest) == len(sealed.stored)

    for lie in (len(sealed.stored) - 1, len(sealed.stored) + 1, 0):
        reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
        with pytest.raises(ForgedFileError):
            read_frames(reader, download_call(file_info(sealed.stored, size=lie), sealed.stored, 33))


@pytest.mark.parametrize("stop", [0, 3, 8, -1, -40, -41])
def test_finish_before_the_end_of_the_stored_file_is_forged(stop: int) -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
    end = stop if stop >= 0 else len(sealed.stored) + stop
    read_frames(reader, download_call(file_info(sealed.stored), sealed.stored[:end], 10))

    with pytest.raises(ForgedFileError):
        reader.finish()


def test_a_stored_file_with_another_header_than_the_ref_names_is_forged() -> None:
    ours = seal_file(os.urandom(SMALL_CHUNK))
    theirs = seal_file(os.urandom(SMALL_CHUNK), key=ours.key)
    reader = _DownloadReader(make_ref(ours))

    with pytest.raises(ForgedFileError):
        read_frames(reader, download_call(file_info(theirs.stored), theirs.stored, 64))


def test_a_stored_file_with_a_flipped_bit_in_a_chunk_is_forged() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))
    stored = bytearray(sealed.stored)
    stored[len(sealed.header) + SMALL_CHUNK + 50] ^= 0x10
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)

    with pytest.raises(ForgedFileError):
        read_frames(reader, download_call(file_info(bytes(stored)), bytes(stored), 64))


def test_a_stored_file_that_is_not_a_parley_file_is_forged() -> None:
    garbage = b"GIF89a" + os.urandom(200)
    reader = _DownloadReader(make_ref())

    with pytest.raises(ForgedFileError):
        read_frames(reader, download_call(file_info(garbage), garbage, 3))


# --- thumbnails ----------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 30, 90, 128)).save(out, "PNG")
    return out.getvalue()


def image_of(jpeg: bytes | None) -> Image.Image:
    assert jpeg is not None
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image


def test_a_large_png_becomes_a_jpeg_whose_longest_side_is_the_thumbnail_size() -> None:
    image = image_of(thumbnail(png(2000, 1000), "image/png"))

    assert image.size == (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS // 2) == (320, 160)


def test_a_tall_image_is_bounded_by_its_height() -> None:
    assert image_of(thumbnail(png(500, 1000), "image/png")).size == (160, 320)


def test_a_small_image_is_not_enlarged() -> None:
    assert image_of(thumbnail(png(40, 30), "image/png")).size == (40, 30)


def test_a_thumbnail_is_made_from_a_path_too(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(png(2000, 1000))

    assert image_of(thumbnail(path, "image/png")).size == (320, 160)
    assert image_of(thumbnail(str(path), "image/png")).size == (320, 160)


@pytest.mark.parametrize("media_type", ["application/pdf", "text/plain", "video/mp4", ""])
def test_media_that_is_not_an_image_has_no_thumbnail(media_type: str) -> None:
    assert thumbnail(png(100, 100), media_type) is None


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an image at all", id="text"),
        pytest.param(png(100, 100)[:60], id="truncated-png"),
    ],
)
def test_bytes_that_are_not_a_readable_image_have_no_thumbnail(source: bytes) -> None:
    assert thumbnail(source, "image/png") is None


def test_a_missing_path_has_no_thumbnail(tmp_path: Path) -> None:
    assert thumbnail(tmp_path / "gone.png", "image/png") is None


@pytest.mark.parametrize("size", ["12", 12.9, True, -5, None])
def test_a_file_ref_size_is_a_whole_number_of_bytes(size: Any) -> None:
    with pytest.raises(MalformedInputError):
        FileRef.from_json(make_ref().to_json() | {"size": size})


def test_a_file_name_that_is_not_utf8_is_shown_with_replacement_characters() -> None:
    assert _shown(os.fsdecode(b"caf\xe9.txt")) == "caf\ufffd.txt"
    assert _shown("plain.txt") == "plain.txt"


def test_a_reader_refuses_chunk_sizes_it_could_not_stream() -> None:
    sealed = seal_file(os.urandom(300))  # 64-byte chunks: far below what any Parley uploader uses
    reader = _DownloadReader(make_ref(sealed))
    with pytest.raises(ForgedFileError, match="chunk size"):
        read_frames(reader, download_call(file_info(sealed.stored), sealed.stored, 1000))


def test_an_empty_chunk_frame_is_refused() -> None:
    sealed = seal_file(os.urandom(300))
    reader = _DownloadReader(make_ref(sealed), chunk_bytes=ANY_CHUNK)
    with pytest.raises(ForgedFileError, match="empty chunk"):
        read_frames(reader, [file_pb2.DownloadResponse(file=file_info(sealed.stored)), file_pb2.DownloadResponse()])


@pytest.mark.parametrize(
    "thumb",
    [
        pytest.param(b"\xff\xd8\xff" + os.urandom(100), id="not-a-jpeg-after-all"),
        pytest.param(b"\x89PNG" + os.urandom(100), id="a-png"),
        pytest.param(b"\xff\xd8\xff" + bytes(20 * 1024), id="too-many-bytes"),
    ],
)
def test_a_received_thumbnail_that_no_parley_sender_makes_is_dropped(thumb: bytes) -> None:
    body = media_body(Media(make_ref(), "look", thumb))
    media = read_media(body, UPLOADER_DEVICE)
    assert media is not None
    assert (media.caption, media.thumbnail) == ("look", None)


def test_a_received_thumbnail_too_large_in_pixels_is_dropped() -> None:
    big = io.BytesIO()
    Image.new("RGB", (2000, 10), "white").save(big, "JPEG", quality=10)
    assert checked_thumbnail(big.getvalue()) is None
    assert checked_thumbnail(a_thumbnail()) == a_thumbnail()


@settings(max_examples=60, deadline=None)
@given(first=st.binary(max_size=600), pieces=st.lists(st.binary(max_size=2500), max_size=8))
def test_the_framer_cuts_any_stream_into_whole_frames_and_a_rest(first: bytes, pieces: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "FRAME_BYTES", SMALL_FRAME)
        check_framer(first, pieces)


SMALL_FRAME = 700


def check_framer(first: bytes, pieces: list[bytes]) -> None:
    framer = _Framer(first)
    frames = [frame for piece in pieces for frame in framer.frames(piece)]
    assert b"".join(frames) + framer.rest == first + b"".join(pieces)
    assert all(len(frame) == SMALL_FRAME for frame in frames)
    assert len(framer.rest) < SMALL_FRAME
