"""Input rules for the identity service, as pure functions."""

from __future__ import annotations

import re

from parley.crypto import identity as proofs
from parley.identity.v1 import identity_pb2
from services.runtime.errors import invalid_field

USERNAME_PATTERN = re.compile(r"[a-z0-9_.-]{3,32}")
MAX_DISPLAY_NAME = 64


def check_username(username: str, field: str = "username") -> None:
    if not username:
        raise invalid_field(field, "is required")
    if not 3 <= len(username) <= 32:
        raise invalid_field(field, f"must be 3–32 characters, got {len(username)}")
    if not USERNAME_PATTERN.fullmatch(username):
        raise invalid_field(field, "may only contain a-z, 0-9, '_', '.' and '-'")


def check_signing_key(key: bytes, field: str) -> None:
    if not key:
        raise invalid_field(field, "is required")
    if not proofs.is_valid_signing_key(key):
        raise invalid_field(field, "must be a 32-byte Ed25519 public key of large order")


def check_device_keys(device: identity_pb2.DeviceKeys, field: str = "device") -> None:
    check_signing_key(device.signing_key, f"{field}.signing_key")
    if not device.dh_key:
        raise invalid_field(f"{field}.dh_key", "is required")
    if not proofs.is_valid_dh_key(device.dh_key):
        raise invalid_field(f"{field}.dh_key", "must be a 32-byte X25519 public key of large order")
    if len(device.certificate) != proofs.SIGNATURE_BYTES:
        raise invalid_field(f"{field}.certificate", "must be a 64-byte Ed25519 signature")
    if len(device.display_name) > MAX_DISPLAY_NAME:
        raise invalid_field(f"{field}.display_name", f"must be at most {MAX_DISPLAY_NAME} characters")


def certificate_verifies(user_signing_key: bytes, device: identity_pb2.DeviceKeys) -> bool:
    message = proofs.device_certificate_bytes(user_signing_key, device.signing_key, device.dh_key)
    return proofs.verify_signature(user_signing_key, message, device.certificate)
