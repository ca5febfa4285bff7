"""End-to-end sealed files (parley.crypto.file_sealing, CRYPTO.md "Files"): the stored layout round-trips in any
cut, and every change to the header or the chunks is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import Iterable
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.crypto import file_sealing as sealing
from parley.crypto.encoding import labelled, u32
from parley.crypto.errors import DecryptionError, InvalidSignatureError, MalformedInputError
from parley.crypto.file_sealing import (
    CHUNK_BYTES,
    CHUNK_OVERHEAD,
    HEADER_PREFIX_BYTES,
    MAGIC,
    MAX_SEALED_MANIFEST_BYTES,
    ChunkOpener,
    ChunkSealer,
    ForgedFileError,
    Manifest,
    chunk_offset,
    header_hash,
    header_length,
    new_content_id,
    new_file_key,
    open_header,
    seal_header,
    stored_size,
)
from parley.crypto.primitives import AEAD_NONCE_BYTES, AEAD_TAG_BYTES, Rng, seal, system_rng

SMALL_CHUNK = 64
UPLOADER = nacl.signing.SigningKey.generate()
U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1
U32_MAX = (1 << 32) - 1


def counter_rng(seed: bytes) -> Rng:
    """Deterministic bytes (SHAKE-256 over seed || counter)."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)

    return rng


def make_manifest(
    size: int,
    chunk_bytes: int = SMALL_CHUNK,
    uploader: nacl.signing.SigningKey = UPLOADER,
    content_id: bytes | None = None,
) -> Manifest:
    return Manifest(
        content_id=content_id if content_id is not None else new_content_id(),
        name="holiday.png",
        media_type="image/png",
        size=size,
        chunk_bytes=chunk_bytes,
        uploader_user_id="alice",
        uploader_key=uploader.verify_key.encode(),
        created_ms=1_700_000_000_000,
    )


@dataclasses.dataclass(frozen=True)
class SealedFile:
    """A file as the uploader seals it: what the service stores is `header` followed by `chunks`."""

    plaintext: bytes
    manifest: Manifest
    key: bytes
    header: bytes
    chunks: list[bytes]

    @property
    def stored(self) -> bytes:
        return self.header + b"".join(self.chunks)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def seal_chunks(manifest: Manifest, key: bytes, plaintext: bytes, rng: Rng = system_rng) -> list[bytes]:
    sealer = ChunkSealer(manifest, key, rng)
    chunks = []
    for index in range(manifest.chunks):
        start = index * manifest.chunk_bytes
        chunks.append(sealer.seal(plaintext[start : start + manifest.chunk_length(index)]))
    assert sealer.done
    return chunks


def seal_file(
    plaintext: bytes,
    chunk_bytes: int = SMALL_CHUNK,
    *,
    uploader: nacl.signing.SigningKey = UPLOADER,
    key: bytes | None = None,
    content_id: bytes | None = None,
) -> SealedFile:
    manifest = make_manifest(len(plaintext), chunk_bytes, uploader, content_id)
    key = key if key is not None else new_file_key()
    header = seal_header(manifest, key, uploader)
    return SealedFile(plaintext, manifest, key, header, seal_chunks(manifest, key, plaintext))


def open_body(manifest: Manifest, key: bytes, pieces: Iterable[bytes]) -> bytes:
    """The plaintext of sealed chunks fed in `pieces`, checked complete."""
    opener = ChunkOpener(manifest, key)
    plaintext = b"".join(chunk for piece in pieces for chunk in opener.feed(piece))
    opener.finish()
    return plaintext


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(points), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def flip_bit(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def forge_header(manifest: Manifest, key: bytes, signing_key: nacl.signing.SigningKey) -> bytes:
    """A header as `seal_header` builds it, without its check that the signer is the manifest's uploader."""
    body = manifest.to_bytes()
    signed = labelled(sealing._SIGNED_MANIFEST, body, signing_key.sign(body).signature, b"")
    sealed = seal(sealing._subkey(key, "manifest"), signed, labelled(sealing._MANIFEST_AD))
    return MAGIC + u32(len(sealed)) + sealed


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_bytes"),
    [
        (0, SMALL_CHUNK),
        (1, SMALL_CHUNK),
        (SMALL_CHUNK, SMALL_CHUNK),
        (SMALL_CHUNK + 1, SMALL_CHUNK),
        (3 * SMALL_CHUNK, SMALL_CHUNK),
        (CHUNK_BYTES + 1, CHUNK_BYTES),
    ],
)
def test_a_sealed_file_opens_to_its_plaintext_and_manifest(size: int, chunk_bytes: int) -> None:
    sealed = seal_file(os.urandom(size), chunk_bytes)

    manifest = open_header(sealed.header, sealed.key, header_hash(sealed.header), UPLOADER.verify_key.encode())

    assert manifest == sealed.manifest
    assert open_body(manifest, sealed.key, [sealed.body]) == sealed.plaintext
    assert len(sealed.chunks) == manifest.chunks == max(1, -(-size // chunk_bytes))


def test_an_empty_file_is_one_empty_sealed_chunk() -> None:
    sealed = seal_file(b"")

    assert sealed.manifest.chunks == 1
    assert sealed.manifest.chunk_length(0) == 0
    assert [len(chunk) for chunk in sealed.chunks] == [CHUNK_OVERHEAD]


def test_chunk_lengths_cover_the_file_and_only_the_last_is_short() -> None:
    manifest = make_manifest(3 * SMALL_CHUNK + 5)

    assert [manifest.chunk_length(index) for index in range(manifest.chunks)] == [64, 64, 64, 5]
    with pytest.raises(IndexError):
        manifest.chunk_length(manifest.chunks)
    with pytest.raises(IndexError):
        manifest.chunk_length(-1)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), size=st.integers(0, 2000), chunk_bytes=st.integers(1, 300))
def test_any_cutting_of_the_sealed_chunks_opens_to_the_plaintext(
    data: st.DataObject, size: int, chunk_bytes: int
) -> None:
    plaintext = data.draw(st.randoms(use_true_random=False)).randbytes(size)
    sealed = seal_file(plaintext, chunk_bytes)
    points = data.draw(st.lists(st.integers(0, len(sealed.body)), max_size=30))

    assert open_body(sealed.manifest, sealed.key, cut(sealed.body, points)) == plaintext


def test_fed_one_byte_at_a_time_each_chunk_comes_out_as_its_last_byte_arrives() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK + 3))
    opener = ChunkOpener(sealed.manifest, sealed.key)
    completed_at = []
    for position, byte in enumerate(sealed.body, start=1):
        if list(opener.feed(bytes([byte]))):
            completed_at.append(position)
    opener.finish()

    assert completed_at == [len(b"".join(sealed.chunks[: index + 1])) for index in range(3)]
    assert opener.chunks_opened == 3


def test_chunk_offsets_and_stored_size_match_the_sealed_lengths() -> None:
    for size in (0, 1, SMALL_CHUNK, SMALL_CHUNK + 1, 3 * SMALL_CHUNK, 3 * SMALL_CHUNK + 17):
        sealed = seal_file(os.urandom(size))
        starts = [
            len(sealed.header) + sum(len(chunk) for chunk in sealed.chunks[:index])
            for index in range(len(sealed.chunks))
        ]

        assert [chunk_offset(len(sealed.header), sealed.manifest, index) for index in range(len(starts))] == starts
        assert stored_size(sealed.header, sealed.manifest) == len(sealed.stored)
        assert header_length(sealed.header[:HEADER_PREFIX_BYTES]) == len(sealed.header)


def test_a_download_resumed_at_a_chunk_offset_opens_the_rest() -> None:
    sealed = seal_file(os.urandom(4 * SMALL_CHUNK + 9))
    opener = ChunkOpener(sealed.manifest, sealed.key)
    stored = sealed.stored
    resume_at = chunk_offset(len(sealed.header), sealed.manifest, 2)

    head = b"".join(opener.feed(stored[len(sealed.header) : resume_at]))
    tail = b"".join(opener.feed(stored[resume_at:]))
    opener.finish()

    assert head + tail == sealed.plaintext
    assert head == sealed.plaintext[: 2 * SMALL_CHUNK]


# --- tampered chunks -----------------------------------------------------------------------------


def assert_refused(sealed: SealedFile, body: bytes) -> None:
    with pytest.raises(ForgedFileError):
        open_body(sealed.manifest, sealed.key, [body])


@pytest.mark.parametrize("size", [3 * SMALL_CHUNK, 3 * SMALL_CHUNK - 10])
def test_reordered_chunks_are_refused(size: int) -> None:
    sealed = seal_file(os.urandom(size))
    first, second, third = sealed.chunks

    assert_refused(sealed, second + first + third)
    assert_refused(sealed, first + third + second)


@pytest.mark.parametrize("dropped", [0, 1, 2])
@pytest.mark.parametrize("size", [3 * SMALL_CHUNK, 3 * SMALL_CHUNK - 10])
def test_a_dropped_chunk_is_refused(size: int, dropped: int) -> None:
    sealed = seal_file(os.urandom(size))

    assert_refused(sealed, b"".join(chunk for index, chunk in enumerate(sealed.chunks) if index != dropped))


@pytest.mark.parametrize("repeated", [0, 1, 2])
def test_a_duplicated_chunk_is_refused(repeated: int) -> None:
    sealed = seal_file(os.urandom(3 * SMALL_CHUNK))
    chunks = list(sealed.chunks)
    chunks.insert(repeated, chunks[repeated])

    assert_refused(sealed, b"".join(chunks))


def test_a_chunk_repeated_in_place_of_the_next_is_refused() -> None:
    sealed = seal_file(os.urandom(3 * SMALL_CHUNK))
    first, _, third = sealed.chunks

    assert_refused(sealed, first + first + third)


@pytest.mark.parametrize("kept", [0, 1, 2])
def test_a_stream_truncated_at_a_chunk_boundary_fails_at_finish(kept: int) -> None:
    sealed = seal_file(os.urandom(3 * SMALL_CHUNK))
    opener = ChunkOpener(sealed.manifest, sealed.key)

    opened = b"".join(opener.feed(b"".join(sealed.chunks[:kept])))

    assert opened == sealed.plaintext[: kept * SMALL_CHUNK]
    with pytest.raises(ForgedFileError):
        opener.finish()


@pytest.mark.parametrize("missing", [1, CHUNK_OVERHEAD, SMALL_CHUNK + CHUNK_OVERHEAD - 1])
def test_a_stream_truncated_mid_chunk_fails_at_finish(missing: int) -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))

    assert_refused(sealed, sealed.body[:-missing])


def test_an_empty_file_with_its_only_chunk_missing_fails_at_finish() -> None:
    sealed = seal_file(b"")

    assert_refused(sealed, b"")


@pytest.mark.parametrize("extra_bytes", [1, CHUNK_OVERHEAD, SMALL_CHUNK + CHUNK_OVERHEAD])
def test_bytes_appended_after_the_last_chunk_are_refused(extra_bytes: int) -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK + 1))
    extra = os.urandom(extra_bytes)
    opener = ChunkOpener(sealed.manifest, sealed.key)

    assert b"".join(opener.feed(sealed.body)) == sealed.plaintext
    with pytest.raises(ForgedFileError):
        list(opener.feed(extra))
    assert_refused(sealed, sealed.body + extra)


def test_a_chunk_sealed_again_after_the_last_is_refused() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))

    assert_refused(sealed, sealed.body + sealed.chunks[-1])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_one_flipped_bit_anywhere_in_a_chunk_is_refused(index: int) -> None:
    sealed = seal_file(os.urandom(3 * SMALL_CHUNK - 10))
    for bit in range(8 * len(sealed.chunks[index])):
        chunks = list(sealed.chunks)
        chunks[index] = flip_bit(chunks[index], bit)
        with pytest.raises(ForgedFileError):
            open_body(sealed.manifest, sealed.key, [b"".join(chunks)])


def test_a_chunk_from_another_file_under_the_same_key_is_refused() -> None:
    key = new_file_key()
    ours = seal_file(os.urandom(3 * SMALL_CHUNK), key=key)
    theirs = seal_file(os.urandom(3 * SMALL_CHUNK), key=key)
    assert ours.manifest.content_id != theirs.manifest.content_id

    assert_refused(ours, ours.chunks[0] + theirs.chunks[1] + ours.chunks[2])


def test_chunks_under_another_file_key_are_refused() -> None:
    sealed = seal_file(os.urandom(2 * SMALL_CHUNK))

    with pytest.raises(ForgedFileError):
        open_body(sealed.manifest, new_file_key(), [sealed.body])


def test_a_whole_file_whose_manifest_claims_another_size_is_refused() -> None:
    sealed = seal_file(os.urandom(3 * SMALL_CHUNK))
    shorter = dataclasses.replace(sealed.manifest, size=2 * SMALL_CHUNK)
    longer = dataclasses.replace(sealed.manifest, size=4 * SMALL_CHUNK)

    with pytest.raises(ForgedFileError):
        open_body(shorter, sealed.key, [b"".join(sealed.chunks[:2])])
    with pytest.raises(ForgedFileError):
        open_body(longer, sealed.key, [sealed.body])


def test_a_sealer_refuses_a_chunk_of_the_wrong_length() -> None:
    manifest = make_manifest(SMALL_CHUNK + 5)
    sealer = ChunkSealer(manifest, new_file_key())

    with pytest.raises(ValueError, match="64 bytes"):
        sealer.seal(bytes(SMALL_CHUNK - 1))
    sealer.seal(bytes(SMALL_CHUNK))
    with pytest.raises(ValueError, match="5 bytes"):
        sealer.seal(bytes(SMALL_CHUNK))
    sealer.seal(bytes(5))
    assert sealer.done
    with pytest.raises(IndexError):
        sealer.seal(b"")


# --- the header ----------------------------------------------------------------------------------


def test_a_header_with_another_hash_is_forged() -> None:
    sealed = seal_file(os.urandom(10))
    other = seal_file(os.urandom(10), key=sealed.key)

    with pytest.raises(ForgedFileError):
        open_header(sealed.header, sealed.key, header_hash(other.header), UPLOADER.verify_key.encode())
    with pytest.raises(ForgedFileError):
        open_header(other.header, sealed.key, header_hash(sealed.header), UPLOADER.verify_key.encode())


def test_any_flipped_bit_in_a_header_breaks_its_hash() -> None:
    sealed = seal_file(os.urandom(10))
    expected = header_hash(sealed.header)

    for bit in range(0, 8 * len(sealed.header), 7):
        with pytest.raises(ForgedFileError):
            open_header(flip_bit(sealed.header, bit), sealed.key, expected, UPLOADER.verify_key.encode())


def test_a_header_under_another_file_key_does_not_open() -> None:
    sealed = seal_file(os.urandom(10))

    with pytest.raises(DecryptionError):
        open_header(sealed.header, new_file_key(), header_hash(sealed.header), UPLOADER.verify_key.encode())


def test_a_header_signed_by_another_device_than_the_reference_names_is_refused() -> None:
    mallory = nacl.signing.SigningKey.generate()
    sealed = seal_file(os.urandom(10), uploader=mallory)

    with pytest.raises(InvalidSignatureError):
        open_header(sealed.header, sealed.key, header_hash(sealed.header), UPLOADER.verify_key.encode())


def test_a_manifest_naming_another_uploader_than_its_signer_is_forged() -> None:
    mallory = nacl.signing.SigningKey.generate()
    manifest = make_manifest(10, uploader=UPLOADER)
    key = new_file_key()
    header = forge_header(manifest, key, mallory)

    with pytest.raises(ForgedFileError, match="another uploader"):
        open_header(header, key, header_hash(header), mallory.verify_key.encode())
    with pytest.raises(InvalidSignatureError):
        open_header(header, key, header_hash(header), UPLOADER.verify_key.encode())


def test_seal_header_refuses_a_signing_key_that_is_not_the_uploader() -> None:
    manifest = make_manifest(10, uploader=UPLOADER)

    with pytest.raises(ValueError, match="another device"):
        seal_header(manifest, new_file_key(), nacl.signing.SigningKey.generate())


@pytest.mark.parametrize("key_bytes", [0, 16, 31, 33])
def test_a_file_key_of_the_wrong_length_is_malformed(key_bytes: int) -> None:
    manifest = make_manifest(10)

    with pytest.raises(MalformedInputError):
        seal_header(manifest, bytes(key_bytes), UPLOADER)
    with pytest.raises(MalformedInputError):
        ChunkSealer(manifest, bytes(key_bytes))
    with pytest.raises(MalformedInputError):
        ChunkOpener(manifest, bytes(key_bytes))


def test_header_length_reads_the_sealed_manifest_length_up_to_the_cap() -> None:
    assert header_length(MAGIC + u32(0)) == HEADER_PREFIX_BYTES
    assert header_length(MAGIC + u32(MAX_SEALED_MANIFEST_BYTES)) == HEADER_PREFIX_BYTES + MAX_SEALED_MANIFEST_BYTES


@pytest.mark.parametrize(
    "prefix",
    [
        MAGIC + u32(MAX_SEALED_MANIFEST_BYTES + 1),
        MAGIC + u32(U32_MAX),
        b"PFL2" + u32(100),
        b"\x89PNG" + u32(100),
        MAGIC + b"\x00\x00\x01",
        b"",
    ],
)
def test_header_length_refuses_a_bad_magic_a_short_prefix_or_a_length_over_the_cap(prefix: bytes) -> None:
    with pytest.raises(ForgedFileError):
        header_length(prefix)


def test_a_header_whose_length_field_lies_is_refused_even_with_its_hash() -> None:
    sealed = seal_file(os.urandom(10))
    sealed_length = len(sealed.header) - HEADER_PREFIX_BYTES
    for lie in (sealed_length - 1, sealed_length + 1, MAX_SEALED_MANIFEST_BYTES + 1):
        header = MAGIC + u32(lie) + sealed.header[HEADER_PREFIX_BYTES:]
        with pytest.raises(ForgedFileError):
            open_header(header, sealed.key, header_hash(header), UPLOADER.verify_key.encode())


# --- the manifest --------------------------------------------------------------------------------


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    chunk_bytes = draw(st.integers(1, U32_MAX))
    return Manifest(
        content_id=draw(st.binary(min_size=16, max_size=16)),
        name=draw(st.text(max_size=40)),
        media_type=draw(st.text(max_size=20)),
        size=draw(st.integers(0, min(I64_MAX, chunk_bytes * U32_MAX))),
        chunk_bytes=chunk_bytes,
        uploader_user_id=draw(st.text(max_size=20)),
        uploader_key=draw(st.binary(max_size=40)),
        created_ms=draw(st.integers(0, I64_MAX)),
    )


@settings(max_examples=100, deadline=None)
@given(manifest=manifests())
def test_a_manifest_decodes_to_what_was_encoded(manifest: Manifest) -> None:
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


@settings(max_examples=100, deadline=None)
@given(manifest=manifests(), data=st.data())
def test_a_manifest_with_any_byte_changed_is_malformed_or_decodes_canonically(
    manifest: Manifest, data: st.DataObject
) -> None:
    encoded = bytearray(manifest.to_bytes())
    encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = Manifest.from_bytes(bytes(encoded))
    except MalformedInputError:
        return
    assert decoded.to_bytes() == bytes(encoded), "a manifest has exactly one encoding"


def manifest_fields(manifest: Manifest) -> list[bytes]:
    return [
        manifest.content_id,
        manifest.name.encode(),
        manifest.media_type.encode(),
        manifest.size.to_bytes(8, "big"),
        u32(manifest.chunk_bytes),
        manifest.uploader_user_id.encode(),
        manifest.uploader_key,
        manifest.created_ms.to_bytes(8, "big"),
    ]


def with_field(index: int, value: bytes) -> bytes:
    fields = manifest_fields(make_manifest(100))
    fields[index] = value
    return labelled("file-manifest", *fields)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x00\x00", id="truncated-prefix"),
        pytest.param(labelled("file-manifest-signed", *manifest_fields(make_manifest(100))), id="other-label"),
        pytest.param(labelled("file-manifest", *manifest_fields(make_manifest(100))[:7]), id="seven-fields"),
        pytest.param(labelled("file-manifest", *manifest_fields(make_manifest(100)), b"extra"), id="nine-fields"),
        pytest.param(make_manifest(100).to_bytes() + b"\x00", id="trailing-byte"),
        pytest.param(with_field(0, bytes(15)), id="short-content-id"),
        pytest.param(with_field(1, b"\xff\xfe"), id="name-not-utf8"),
        pytest.param(with_field(2, b"image/\xc3"), id="media-type-not-utf8"),
        pytest.param(with_field(3, bytes(7)), id="size-7-bytes"),
        pytest.param(with_field(4, bytes(3)), id="chunk-bytes-3-bytes"),
        pytest.param(with_field(4, u32(0)), id="chunk-bytes-zero"),
        pytest.param(with_field(3, U64_MAX.to_bytes(8, "big")), id="too-many-chunks"),
        pytest.param(with_field(5, b"\x80"), id="user-id-not-utf8"),
        pytest.param(with_field(7, bytes(9)), id="created-9-bytes"),
    ],
)
def test_a_malformed_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedInputError):
        Manifest.from_bytes(data)


def test_every_truncation_of_a_manifest_is_malformed() -> None:
    encoded = make_manifest(100).to_bytes()
    for length in range(len(encoded)):
        with pytest.raises(MalformedInputError):
            Manifest.from_bytes(encoded[:length])


@pytest.mark.parametrize(
    "changes",
    [
        {"content_id": bytes(15)},
        {"content_id": bytes(17)},
        {"size": -1},
        {"chunk_bytes": 0},
        {"chunk_bytes": -1},
        {"size": 1 << 32, "chunk_bytes": 1},
    ],
)
def test_a_manifest_with_a_bad_content_id_or_chunking_cannot_be_made(changes: dict[str, object]) -> None:
    with pytest.raises(MalformedInputError):
        dataclasses.replace(make_manifest(100), **changes)


def test_a_manifest_may_have_the_most_chunks_a_u32_counts() -> None:
    assert make_manifest(U32_MAX, chunk_bytes=1).chunks == U32_MAX


# --- randomness ----------------------------------------------------------------------------------


def sealed_with(seed: bytes, plaintext: bytes) -> bytes:
    rng = counter_rng(seed)
    key = new_file_key(rng)
    manifest = make_manifest(len(plaintext), content_id=new_content_id(rng))
    header = seal_header(manifest, key, UPLOADER, rng)
    return key + header + b"".join(seal_chunks(manifest, key, plaintext, rng))


def test_an_injected_rng_makes_the_stored_file_deterministic() -> None:
    plaintext = os.urandom(3 * SMALL_CHUNK + 1)

    assert sealed_with(b"seed", plaintext) == sealed_with(b"seed", plaintext)
    assert sealed_with(b"seed", plaintext) != sealed_with(b"other seed", plaintext)


def test_new_keys_content_ids_and_nonces_come_from_the_rng() -> None:
    rng = counter_rng(b"ids")
    same = counter_rng(b"ids")

    assert new_file_key(rng) == same(sealing.FILE_KEY_BYTES)
    assert new_content_id(rng) == same(sealing.CONTENT_ID_BYTES)
    assert len(new_file_key()) == 32
    assert new_file_key() != new_file_key()
    assert new_content_id() != new_content_id()


def test_the_system_rng_seals_the_same_file_differently_each_time() -> None:
    manifest = make_manifest(SMALL_CHUNK)
    key = new_file_key()
    plaintext = os.urandom(SMALL_CHUNK)

    assert seal_header(manifest, key, UPLOADER) != seal_header(manifest, key, UPLOADER)
    assert seal_chunks(manifest, key, plaintext) != seal_chunks(manifest, key, plaintext)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"created_ms": -1}, id="time-before-1970"),
        pytest.param({"created_ms": 1 << 63}, id="time-too-large"),
        pytest.param({"chunk_bytes": 1 << 32}, id="chunk-too-large"),
        pytest.param({"size": 1 << 63}, id="size-too-large"),
        pytest.param({"name": "bad\udcff.png"}, id="name-with-a-lone-surrogate"),
    ],
)
def test_a_manifest_that_could_not_be_encoded_is_refused_when_made(changes: dict[str, Any]) -> None:
    fields = dataclasses.asdict(make_manifest(10)) | changes
    with pytest.raises(MalformedInputError):
        Manifest(**fields)


def test_the_stored_header_hides_the_names_length_to_its_padding() -> None:
    key = new_file_key()
    overhead = HEADER_PREFIX_BYTES + AEAD_NONCE_BYTES + AEAD_TAG_BYTES
    lengths = [
        len(seal_header(dataclasses.replace(make_manifest(10), name="a" * size), key, UPLOADER))
        for size in range(0, 400, 7)
    ]
    assert all((length - overhead) % 256 == 0 for length in lengths)
    assert len(set(lengths)) <= 3  # 57 names of 0 to 399 bytes: at most three header sizes
