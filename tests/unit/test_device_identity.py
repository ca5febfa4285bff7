"""The key file: round trip, permissions, atomic and non-clobbering writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from parley.crypto import identity as proofs
from parley.device_identity import DeviceIdentity


def test_round_trip_keeps_every_key(tmp_path: Path) -> None:
    identity = DeviceIdentity.generate("alice", "laptop")
    identity.user_id = "u1"
    identity.registered = True
    identity.save(tmp_path / "k.json")
    loaded = DeviceIdentity.load(tmp_path / "k.json")
    assert loaded.to_json() == identity.to_json()
    assert loaded.device_id == identity.device_id


def test_saved_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "k.json"
    DeviceIdentity.generate("alice").save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]  # no temporary file left


def test_load_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    DeviceIdentity.generate("alice").save(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        DeviceIdentity.load(path)


def test_save_without_overwrite_keeps_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    original = DeviceIdentity.generate("alice")
    original.save(path)
    with pytest.raises(FileExistsError):
        DeviceIdentity.generate("mallory").save(path, overwrite=False)
    assert DeviceIdentity.load(path).to_json() == original.to_json()
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_certificate_of_an_added_device_verifies_under_the_user_key() -> None:
    primary = DeviceIdentity.generate("alice")
    phone = primary.new_device("phone")
    keys = primary.certify(phone)
    message = proofs.device_certificate_bytes(primary.user_public_key, keys.signing_key, keys.dh_key)
    assert proofs.verify_signature(primary.user_public_key, message, keys.certificate)
    assert phone.user_signing_key is None
    with pytest.raises(ValueError, match="user signing key"):
        phone.certify(phone)
