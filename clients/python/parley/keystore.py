"""This device's end-to-end secrets on disk: ratchet sessions, prekey private keys, pinned peer keys.

One file, mode 0600, replaced atomically on every save, so a restart
mid-session finds the state of the last save. With a passphrase the whole
content is sealed (XChaCha20-Poly1305, label "parley/v1/key-store" as
associated data) under a key derived with Argon2id (libsodium's pwhash,
moderate limits, a random salt per file); a wrong passphrase is
`KeyStoreLockedError`. Without one it is JSON (base64 values), readable by
the owner only, like the device key file. The key is derived once per open,
so saving often costs a write, not a KDF run. `KeyStore.in_memory()` keeps
nothing on disk (a client with no key file).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import nacl.pwhash
import nacl.utils

from parley.crypto.encoding import b64
from parley.crypto.errors import DecryptionError
from parley.crypto.primitives import AEAD_KEY_BYTES, open_sealed, seal
from parley.private_files import open_private, write_private

VERSION = 1
LABEL = b"parley/v1/key-store"
# Argon2id at libsodium's "moderate" limits: about a second and 256 MiB, once per open and save.
OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE


class KeyStoreLockedError(Exception):
    """The key store is sealed with another passphrase (or none was given)."""


class KeyStore:
    """Named byte values in sections (e.g. "sessions" by peer device id); `save()` writes them all."""

    def __init__(self, path: Path | None, sections: dict[str, dict[str, bytes]], sealing: _Sealing | None) -> None:
        self.path = path
        self._sections = sections
        self._sealing = sealing

    @classmethod
    def in_memory(cls) -> KeyStore:
        """A store that `save()` does not write anywhere."""
        return cls(None, {}, None)

    @classmethod
    def open(cls, path: Path | str, passphrase: str | None = None) -> KeyStore:
        """The store at `path`, empty if the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            if passphrase is None:
                return cls(path, {}, None)
            salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
            return cls(path, {}, _Sealing(salt, OPSLIMIT, MEMLIMIT, _derive(passphrase, salt, OPSLIMIT, MEMLIMIT)))
        document = json.loads(open_private(path))
        if document.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported key store version {document.get('version')!r}")
        sealing = None
        if "sealed" in document:
            if passphrase is None:
                raise KeyStoreLockedError(f"{path} is sealed with a passphrase")
            salt = base64.b64decode(document["salt"])
            opslimit, memlimit = document["opslimit"], document["memlimit"]
            sealing = _Sealing(salt, opslimit, memlimit, _derive(passphrase, salt, opslimit, memlimit))
            try:
                content = json.loads(open_sealed(sealing.key, base64.b64decode(document["sealed"]), LABEL))
            except DecryptionError:
                raise KeyStoreLockedError(f"{path}: wrong passphrase") from None
        elif passphrase is not None:
            raise KeyStoreLockedError(f"{path} is not sealed; open it without a passphrase")
        else:
            content = document["sections"]
        sections = {
            section: {name: base64.b64decode(value) for name, value in values.items()}
            for section, values in content.items()
        }
        return cls(path, sections, sealing)

    def get(self, section: str, name: str) -> bytes | None:
        return self._sections.get(section, {}).get(name)

    def put(self, section: str, name: str, value: bytes) -> None:
        self._sections.setdefault(section, {})[name] = value

    def delete(self, section: str, name: str) -> None:
        self._sections.get(section, {}).pop(name, None)

    def names(self, section: str) -> list[str]:
        return sorted(self._sections.get(section, {}))

    def save(self) -> None:
        """Writes everything, atomically and durably, readable by the owner only (0600)."""
        self.write(self.serialize())

    def serialize(self) -> bytes:
        """The file's bytes for what is in the store now (to `write` later, e.g. from another thread)."""
        content = {
            section: {name: b64(value) for name, value in values.items()} for section, values in self._sections.items()
        }
        document: dict[str, object]
        if self._sealing is None:
            document = {"version": VERSION, "sections": content}
        else:
            document = {
                "version": VERSION,
                "kdf": "argon2id",
                "salt": b64(self._sealing.salt),
                "opslimit": self._sealing.opslimit,
                "memlimit": self._sealing.memlimit,
                "sealed": b64(seal(self._sealing.key, json.dumps(content).encode(), LABEL)),
            }
        return json.dumps(document).encode()

    def write(self, data: bytes) -> None:
        if self.path is not None:
            write_private(self.path, data)


@dataclass(frozen=True)
class _Sealing:
    salt: bytes
    opslimit: int
    memlimit: int
    key: bytes = field(repr=False)


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(AEAD_KEY_BYTES, passphrase.encode(), salt, opslimit=opslimit, memlimit=memlimit)
