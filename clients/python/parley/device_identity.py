"""A device's keys and the key file that keeps them (mode 0600)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing

from parley.crypto import identity as proofs
from parley.crypto.encoding import b64
from parley.identity.v1 import identity_pb2
from parley.private_files import open_private, write_private

KEY_FILE_VERSION = 1


@dataclasses.dataclass
class DeviceIdentity:
    """The secrets of one device, plus the user key when this device holds it.

    The user signing key certifies devices; the first device of a user holds
    it. A device added later gets its own key file without the user key.
    """

    username: str
    device_signing_key: nacl.signing.SigningKey
    device_dh_key: nacl.public.PrivateKey
    user_signing_key: nacl.signing.SigningKey | None = None
    user_id: str = ""
    display_name: str = ""
    registered: bool = False

    @classmethod
    def generate(cls, username: str, display_name: str = "") -> DeviceIdentity:
        """Fresh user and device keys for a new account."""
        return cls(
            username=username,
            device_signing_key=nacl.signing.SigningKey.generate(),
            device_dh_key=nacl.public.PrivateKey.generate(),
            user_signing_key=nacl.signing.SigningKey.generate(),
            display_name=display_name,
        )

    def new_device(self, display_name: str) -> DeviceIdentity:
        """Keys for another device of the same user (no user key in it)."""
        return DeviceIdentity(
            username=self.username,
            device_signing_key=nacl.signing.SigningKey.generate(),
            device_dh_key=nacl.public.PrivateKey.generate(),
            user_id=self.user_id,
            display_name=display_name,
        )

    @property
    def device_id(self) -> str:
        return proofs.device_id_for(self.device_signing_key.verify_key.encode())

    @property
    def user_public_key(self) -> bytes:
        if self.user_signing_key is None:
            raise ValueError("this device does not hold the user signing key")
        return self.user_signing_key.verify_key.encode()

    def certify(self, device: DeviceIdentity) -> identity_pb2.DeviceKeys:
        """The public keys of `device`, certified with this device's user key."""
        if self.user_signing_key is None:
            raise ValueError("only a device holding the user signing key can certify devices")
        signing = device.device_signing_key.verify_key.encode()
        dh = device.device_dh_key.public_key.encode()
        message = proofs.device_certificate_bytes(self.user_public_key, signing, dh)
        return identity_pb2.DeviceKeys(
            signing_key=signing,
            dh_key=dh,
            certificate=self.user_signing_key.sign(message).signature,
            display_name=device.display_name,
        )

    def sign_challenge(self, challenge_id: str, nonce: bytes, user_id: str) -> bytes:
        message = proofs.login_challenge_bytes(challenge_id, nonce, user_id, self.device_id)
        return self.device_signing_key.sign(message).signature

    def to_json(self) -> dict[str, Any]:
        return {
            "version": KEY_FILE_VERSION,
            "username": self.username,
            "user_id": self.user_id,
            "registered": self.registered,
            "display_name": self.display_name,
            "device_signing_seed": b64(bytes(self.device_signing_key)),
            "device_dh_private": b64(bytes(self.device_dh_key)),
            "user_signing_seed": b64(bytes(self.user_signing_key)) if self.user_signing_key else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceIdentity:
        if data.get("version") != KEY_FILE_VERSION:
            raise ValueError(f"unsupported key file version {data.get('version')!r}")
        user_seed = data.get("user_signing_seed")
        return cls(
            username=data["username"],
            device_signing_key=nacl.signing.SigningKey(base64.b64decode(data["device_signing_seed"])),
            device_dh_key=nacl.public.PrivateKey(base64.b64decode(data["device_dh_private"])),
            user_signing_key=nacl.signing.SigningKey(base64.b64decode(user_seed)) if user_seed else None,
            user_id=data.get("user_id", ""),
            display_name=data.get("display_name", ""),
            registered=bool(data.get("registered", False)),
        )

    def save(self, path: Path, *, overwrite: bool = True) -> None:
        """Writes the key file atomically and durably, readable by its owner only (0600).

        With `overwrite=False` an existing file is left alone (FileExistsError).
        """
        write_private(Path(path), json.dumps(self.to_json(), indent=2).encode(), overwrite=overwrite)

    @classmethod
    def load(cls, path: Path) -> DeviceIdentity:
        """Reads a key file; refuses one that others can read, as ssh does."""
        return cls.from_json(json.loads(open_private(Path(path))))
