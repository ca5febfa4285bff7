"""Safety numbers (stable, symmetric, twelve groups of five digits, sensitive to either key and user id)
and trust-on-first-use pinning of user keys, with a changed key blocked until accepted."""

from __future__ import annotations

import re

import nacl.signing
import pytest

from parley.crypto.errors import KeyChangedError
from parley.crypto.safety_numbers import KeyPinning, PinCheck, fingerprint_digits, safety_number

ALICE_KEY = nacl.signing.SigningKey(bytes([1]) * 32).verify_key.encode()
BOB_KEY = nacl.signing.SigningKey(bytes([2]) * 32).verify_key.encode()
MALLORY_KEY = nacl.signing.SigningKey(bytes([3]) * 32).verify_key.encode()
STABLE_ALICE_DIGITS = "975375454135192328704954124001"


def test_safety_number_is_symmetric_and_shown_in_twelve_groups_of_five() -> None:
    ours = safety_number("u-alice", ALICE_KEY, "u-bob", BOB_KEY)
    theirs = safety_number("u-bob", BOB_KEY, "u-alice", ALICE_KEY)
    assert ours == theirs
    assert re.fullmatch(r"\d{60}", ours.digits)
    assert len(ours.groups()) == 12
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", str(ours))


def test_safety_number_is_both_fingerprints_smaller_first() -> None:
    alice = fingerprint_digits("u-alice", ALICE_KEY)
    bob = fingerprint_digits("u-bob", BOB_KEY)
    assert len(alice) == len(bob) == 30
    assert safety_number("u-alice", ALICE_KEY, "u-bob", BOB_KEY).digits == min(alice, bob) + max(alice, bob)


def test_safety_number_changes_with_either_key_or_user_id() -> None:
    base = safety_number("u-alice", ALICE_KEY, "u-bob", BOB_KEY)
    assert safety_number("u-alice", ALICE_KEY, "u-bob", MALLORY_KEY) != base
    assert safety_number("u-alice", MALLORY_KEY, "u-bob", BOB_KEY) != base
    assert safety_number("u-alice", ALICE_KEY, "u-carol", BOB_KEY) != base


def test_safety_number_is_stable() -> None:
    # Computed once; a change here means every user's safety numbers change.
    assert fingerprint_digits("u-alice", ALICE_KEY) == STABLE_ALICE_DIGITS


class MemoryPins:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def pinned_user_key(self, user_id: str) -> bytes | None:
        return self.keys.get(user_id)

    def pin_user_key(self, user_id: str, user_signing_key: bytes) -> None:
        self.keys[user_id] = user_signing_key


def test_first_use_pins_and_the_same_key_matches() -> None:
    store = MemoryPins()
    pins = KeyPinning(store)
    assert pins.verify("u-bob", BOB_KEY) is PinCheck.FIRST_USE
    assert store.keys == {"u-bob": BOB_KEY}
    assert pins.verify("u-bob", BOB_KEY) is PinCheck.MATCHES
    assert pins.verify("u-carol", MALLORY_KEY) is PinCheck.FIRST_USE


def test_a_changed_key_is_refused_until_accepted() -> None:
    store = MemoryPins()
    pins = KeyPinning(store)
    pins.verify("u-bob", BOB_KEY)
    for _ in range(2):
        with pytest.raises(KeyChangedError) as raised:
            pins.verify("u-bob", MALLORY_KEY)
        assert (raised.value.user_id, raised.value.pinned_key, raised.value.presented_key) == (
            "u-bob",
            BOB_KEY,
            MALLORY_KEY,
        )
    assert store.keys["u-bob"] == BOB_KEY
    pins.accept("u-bob", MALLORY_KEY)
    assert pins.verify("u-bob", MALLORY_KEY) is PinCheck.MATCHES
    with pytest.raises(KeyChangedError):
        pins.verify("u-bob", BOB_KEY)
