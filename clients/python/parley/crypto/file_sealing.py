"""End-to-end encrypted files (CRYPTO.md, "Files"): the manifest, sealed chunks and the stored layout. No I/O.

A file gets a random 32-byte key. What the file service stores is

    "PFL1" || u32be(len(sealed manifest)) || sealed manifest || chunk 0 || chunk 1 || ...

The manifest (name, media type, size, chunking, uploader) is signed by the
uploading device and sealed with a key derived from the file key; each
plaintext chunk of `chunk_bytes` (the last may be shorter, an empty file has
one empty chunk) is sealed with another derived key and the associated data
content id || index || total || is_last, so chunks cannot be reordered,
dropped, repeated or cut short without a failed open. The content id is
random, chosen by the client before the server names the file; what a message
carries (`FileRef` in parley.files) binds the server's file id to it through
the hash of the stored header.
"""

from __future__ import annotations

import dataclasses

import nacl.signing

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled, read_u32, u32
from parley.crypto.errors import CryptoError, DecryptionError, InvalidSignatureError, MalformedInputError
from parley.crypto.primitives import (
    AEAD_NONCE_BYTES,
    AEAD_TAG_BYTES,
    Rng,
    blake2b_256,
    constant_time_equal,
    hkdf_sha256,
    open_sealed,
    seal,
    system_rng,
)

MAGIC = b"PFL1"
FILE_KEY_BYTES = 32
CONTENT_ID_BYTES = 16
CHUNK_BYTES = 1 << 20
CHUNK_OVERHEAD = AEAD_NONCE_BYTES + AEAD_TAG_BYTES
HEADER_PREFIX_BYTES = len(MAGIC) + 4
MAX_SEALED_MANIFEST_BYTES = 16 * 1024
# The signed manifest is padded to a multiple of this before it is sealed.
MANIFEST_PADDING_BYTES = 256
# Sealed chunk sizes a reader accepts: a larger one could not be streamed, a tiny one wastes the service's space.
MIN_SEALED_CHUNK_BYTES = 64 * 1024
MAX_SEALED_CHUNK_BYTES = 4 * 1024 * 1024
_MANIFEST = "file-manifest"
_SIGNED_MANIFEST = "file-manifest-signed"
_MANIFEST_AD = "file-manifest-sealed"
_CHUNK_AD = "file-chunk"


class ForgedFileError(CryptoError):
    """A stored file that is not the one its reference names: another header, a manifest not signed by the
    uploader the reference names, or chunks missing, added, reordered or altered."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What the uploader says about a file, signed by its device and sealed with the file key."""

    content_id: bytes
    name: str
    media_type: str
    size: int
    """Bytes of plaintext."""
    chunk_bytes: int
    uploader_user_id: str
    uploader_key: bytes
    """The uploading device's Ed25519 key (its device id derives from it)."""
    created_ms: int

    def __post_init__(self) -> None:
        if len(self.content_id) != CONTENT_ID_BYTES:
            raise MalformedInputError(f"a content id is {CONTENT_ID_BYTES} bytes")
        if not 0 <= self.size < 1 << 63 or not 0 < self.chunk_bytes < 1 << 32 or self.chunks >= 1 << 32:
            raise MalformedInputError("a file's size and chunking must be positive and fit")
        if not 0 <= self.created_ms < 1 << 63:
            raise MalformedInputError("a manifest's time must be positive and fit")
        try:
            self.name.encode()
            self.media_type.encode()
            self.uploader_user_id.encode()
        except UnicodeEncodeError as error:
            raise MalformedInputError("a manifest's texts must be valid Unicode") from error

    @property
    def chunks(self) -> int:
        """Sealed chunks: at least one, so that an empty file cannot be cut short either."""
        return max(1, -(-self.size // self.chunk_bytes))

    def chunk_length(self, index: int) -> int:
        """Plaintext bytes of chunk `index`."""
        if not 0 <= index < self.chunks:
            raise IndexError(index)
        return min(self.chunk_bytes, self.size - index * self.chunk_bytes)

    def to_bytes(self) -> bytes:
        return labelled(
            _MANIFEST,
            self.content_id,
            self.name.encode(),
            self.media_type.encode(),
            self.size.to_bytes(8, "big"),
            u32(self.chunk_bytes),
            self.uploader_user_id.encode(),
            self.uploader_key,
            self.created_ms.to_bytes(8, "big"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        content_id, name, media_type, size, chunk_bytes, user_id, key, created = read_labelled(_MANIFEST, data, 8)
        if len(size) != 8 or len(created) != 8:
            raise MalformedInputError("a manifest's size and time are 8 bytes each")
        try:
            return cls(
                content_id,
                name.decode(),
                media_type.decode(),
                int.from_bytes(size, "big"),
                read_u32(chunk_bytes),
                user_id.decode(),
                key,
                int.from_bytes(created, "big"),
            )
        except UnicodeDecodeError as error:
            raise MalformedInputError("a manifest's texts are UTF-8") from error


def new_file_key(rng: Rng = system_rng) -> bytes:
    return rng(FILE_KEY_BYTES)


def new_content_id(rng: Rng = system_rng) -> bytes:
    return rng(CONTENT_ID_BYTES)


def _subkey(file_key: bytes, purpose: str) -> bytes:
    if len(file_key) != FILE_KEY_BYTES:
        raise MalformedInputError(f"a file key is {FILE_KEY_BYTES} bytes")
    return hkdf_sha256(file_key, salt=b"", info=f"parley/v1/file-key/{purpose}".encode(), length=32)


def seal_header(
    manifest: Manifest, file_key: bytes, signing_key: nacl.signing.SigningKey, rng: Rng = system_rng
) -> bytes:
    """The stored file's header: the manifest signed by the uploading device, sealed with the file key."""
    if signing_key.verify_key.encode() != manifest.uploader_key:
        raise ValueError("the manifest names another device as its uploader")
    body = manifest.to_bytes()
    signature = signing_key.sign(body).signature
    unpadded = len(labelled(_SIGNED_MANIFEST, body, signature, b""))
    padding = bytes(-unpadded % MANIFEST_PADDING_BYTES)  # the service sees the name's length only to this grain
    signed = labelled(_SIGNED_MANIFEST, body, signature, padding)
    sealed = seal(_subkey(file_key, "manifest"), signed, labelled(_MANIFEST_AD), rng)
    return MAGIC + u32(len(sealed)) + sealed


def header_length(prefix: bytes) -> int:
    """The whole header's length, from its first `HEADER_PREFIX_BYTES` bytes."""
    if len(prefix) < HEADER_PREFIX_BYTES or prefix[: len(MAGIC)] != MAGIC:
        raise ForgedFileError("not a Parley file (no PFL1 header)")
    sealed_length = read_u32(prefix[len(MAGIC) : HEADER_PREFIX_BYTES])
    if sealed_length > MAX_SEALED_MANIFEST_BYTES:
        raise ForgedFileError("a manifest larger than any Parley writes")
    return HEADER_PREFIX_BYTES + sealed_length


def header_hash(header: bytes) -> bytes:
    """What a file reference carries to name the header (and so the manifest and content id) it expects."""
    return blake2b_256(header)


def open_header(header: bytes, file_key: bytes, expected_hash: bytes, uploader_key: bytes) -> Manifest:
    """The manifest of a stored header, checked against the reference's hash and its uploader's signature."""
    if not constant_time_equal(header_hash(header), expected_hash):
        raise ForgedFileError("the stored file's header is not the one its reference names")
    if header_length(header[:HEADER_PREFIX_BYTES]) != len(header):
        raise ForgedFileError("the stored file's header has the wrong length")
    try:
        signed = open_sealed(_subkey(file_key, "manifest"), header[HEADER_PREFIX_BYTES:], labelled(_MANIFEST_AD))
    except DecryptionError as error:
        raise DecryptionError("the manifest does not open with this file key") from error
    body, signature, _padding = read_labelled(_SIGNED_MANIFEST, signed, 3)
    if not identity.verify_signature(uploader_key, body, signature):
        raise InvalidSignatureError("the manifest is not signed by the uploader its reference names")
    manifest = Manifest.from_bytes(body)
    if not constant_time_equal(manifest.uploader_key, uploader_key):
        raise ForgedFileError("the manifest names another uploader")
    return manifest


def stored_size(header: bytes, manifest: Manifest) -> int:
    """Bytes the file service keeps for a file: header and every sealed chunk."""
    return len(header) + manifest.size + manifest.chunks * CHUNK_OVERHEAD


def _chunk_ad(manifest: Manifest, index: int) -> bytes:
    is_last = b"\x01" if index == manifest.chunks - 1 else b"\x00"
    return labelled(_CHUNK_AD, manifest.content_id, u32(index), u32(manifest.chunks), is_last)


class ChunkSealer:
    """Seals a file's chunks in order (the caller cuts the plaintext as `manifest.chunk_length` says)."""

    def __init__(self, manifest: Manifest, file_key: bytes, rng: Rng = system_rng) -> None:
        self._manifest = manifest
        self._key = _subkey(file_key, "chunks")
        self._rng = rng
        self._next = 0

    def seal(self, plaintext: bytes) -> bytes:
        index = self._next
        if len(plaintext) != self._manifest.chunk_length(index):
            raise ValueError(f"chunk {index} must be {self._manifest.chunk_length(index)} bytes")
        self._next += 1
        return seal(self._key, plaintext, _chunk_ad(self._manifest, index), self._rng)

    @property
    def done(self) -> bool:
        return self._next == self._manifest.chunks


class ChunkOpener:
    """Opens a file's sealed chunks as their bytes arrive, in any cut; `finish` checks nothing is missing."""

    def __init__(self, manifest: Manifest, file_key: bytes) -> None:
        self._manifest = manifest
        self._key = _subkey(file_key, "chunks")
        self._next = 0
        self._pending: list[memoryview] = []
        self._pending_bytes = 0

    @property
    def chunks_opened(self) -> int:
        return self._next

    def feed(self, data: bytes) -> list[bytes]:
        """The plaintext of every chunk `data` completes; `ForgedFileError` on any that does not open."""
        opened: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._next >= self._manifest.chunks:
                raise ForgedFileError("bytes after the file's last chunk")
            length = self._manifest.chunk_length(self._next) + CHUNK_OVERHEAD
            part = min(length - self._pending_bytes, len(view))
            self._pending.append(view[:part])
            self._pending_bytes += part
            view = view[part:]
            if self._pending_bytes < length:
                break
            sealed = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            try:
                opened.append(open_sealed(self._key, sealed, _chunk_ad(self._manifest, self._next)))
            except DecryptionError as error:
                raise ForgedFileError(f"chunk {self._next} of the file does not open") from error
            self._next += 1
        return opened

    def finish(self) -> None:
        if self._next != self._manifest.chunks or self._pending_bytes:
            raise ForgedFileError(f"the file ends after {self._next} of its {self._manifest.chunks} chunks")


def chunk_offset(header_bytes: int, manifest: Manifest, index: int) -> int:
    """Where sealed chunk `index` starts in the stored file (to resume a download at a chunk)."""
    return header_bytes + index * (manifest.chunk_bytes + CHUNK_OVERHEAD)


def uploader_device_id(manifest: Manifest) -> str:
    return identity.device_id_for(manifest.uploader_key)
