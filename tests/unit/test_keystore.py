"""The local key store: 0600, atomic, sealed under a passphrase (Argon2id), and a ratchet session that survives a
restart mid-conversation (issue 12 part 2)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from parley.crypto.errors import DecryptionError
from parley.crypto.primitives import X25519KeyPair
from parley.crypto.ratchet import DoubleRatchet
from parley.keystore import KeyStore, KeyStoreLockedError

SECRET = b"one-time prekey private key 0042"


def test_values_survive_a_reopen_in_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "store.json"
    store = KeyStore.open(path)
    store.put("one_time_prekeys", "42", SECRET)
    store.put("sessions", "dpeer", b"state")
    store.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyStore.open(path)
    assert again.get("one_time_prekeys", "42") == SECRET
    assert again.names("sessions") == ["dpeer"]
    again.delete("one_time_prekeys", "42")  # used once: gone for good once saved
    again.save()
    assert KeyStore.open(path).get("one_time_prekeys", "42") is None
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        KeyStore.open(path)


def test_a_sealed_store_needs_its_passphrase_and_shows_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    store = KeyStore.open(path, passphrase="correct horse")
    store.put("one_time_prekeys", "42", SECRET)
    store.save()
    assert SECRET not in path.read_bytes()
    assert b"one_time_prekeys" not in path.read_bytes()
    with pytest.raises(KeyStoreLockedError, match="wrong passphrase"):
        KeyStore.open(path, passphrase="battery staple")
    with pytest.raises(KeyStoreLockedError, match="sealed"):
        KeyStore.open(path)
    assert KeyStore.open(path, passphrase="correct horse").get("one_time_prekeys", "42") == SECRET
    plain = tmp_path / "plain.json"
    KeyStore.open(plain).save()
    with pytest.raises(KeyStoreLockedError, match="not sealed"):
        KeyStore.open(plain, passphrase="correct horse")


def test_a_session_saved_mid_conversation_carries_on_after_a_restart(tmp_path: Path) -> None:
    shared, ad = bytes(range(32)), b"x3dh associated data"
    bob_prekey = X25519KeyPair.generate()
    alice = DoubleRatchet.initiator(shared, bob_prekey.public_key, ad, local_device_id="da", remote_device_id="db")
    bob = DoubleRatchet.responder(shared, bob_prekey, ad, local_device_id="db", remote_device_id="da")
    first, second = alice.encrypt(b"one"), alice.encrypt(b"two")
    assert bob.decrypt(first, now=0) == b"one"

    store = KeyStore.open(tmp_path / "bob.json", passphrase="pw")
    store.put("sessions", "da", bob.to_bytes())
    store.save()
    restarted = DoubleRatchet.from_bytes(
        KeyStore.open(tmp_path / "bob.json", passphrase="pw").get("sessions", "da") or b""
    )
    assert restarted.decrypt(second, now=1) == b"two"
    reply = restarted.encrypt(b"back")
    assert alice.decrypt(reply, now=2) == b"back"
    with pytest.raises(DecryptionError):  # a replay of an earlier message is refused
        restarted.decrypt(first, now=3)
