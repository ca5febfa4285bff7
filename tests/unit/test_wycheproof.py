"""Known-answer tests: Wycheproof Ed25519 and X25519 vectors against Parley's checks.

The vectors live beside the project (`../shared/vectors/`); a missing file is a
collection error, never a skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import pytest

from parley.crypto.identity import is_valid_dh_key, verify_signature
from tests.support import VECTORS

WYCHEPROOF = VECTORS / "wycheproof"
ED25519_IDENTITY = bytes([1]) + bytes(31)


def load(name: str) -> dict[str, Any]:
    path: Path = WYCHEPROOF / name
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def ed25519_cases() -> list[tuple[bytes, dict[str, Any]]]:
    document = load("ed25519_test.json")
    cases = [(bytes.fromhex(g["publicKey"]["pk"]), t) for g in document["testGroups"] for t in g["tests"]]
    assert len(cases) == document["numberOfTests"]
    return cases


def x25519_cases() -> list[dict[str, Any]]:
    document = load("x25519_test.json")
    cases = [t for g in document["testGroups"] for t in g["tests"]]
    assert len(cases) == document["numberOfTests"]
    return cases


ED25519 = ed25519_cases()
X25519 = x25519_cases()


def is_small_order_ed25519(point: bytes) -> bool:
    """8·P is the identity, by libsodium's raw point addition (independent of Parley's check)."""
    try:
        q = point
        for _ in range(3):
            q = nacl.bindings.crypto_core_ed25519_add(q, q)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, RuntimeError, ValueError):
        return False  # not a point at all
    return q == ED25519_IDENTITY


# --- Ed25519 ---------------------------------------------------------------------


def test_ed25519_vector_file_has_both_outcomes() -> None:
    results = {t["result"] for _, t in ED25519}
    assert results == {"valid", "invalid"}
    assert sum(t["result"] == "valid" for _, t in ED25519) >= 50


def test_no_valid_ed25519_vector_uses_a_small_order_key() -> None:
    # Parley deliberately rejects small-order public keys (is_valid_signing_key),
    # which RFC 8032 does not require. In the vector file used here no "valid"
    # case uses such a key, so the plain expectation below holds for all of
    # them. Should a future file add one, `test_ed25519_vector` expects
    # rejection for it (see `expected`), and this test fails to flag the change.
    small = [t["tcId"] for pk, t in ED25519 if t["result"] == "valid" and is_small_order_ed25519(pk)]
    assert small == []


@pytest.mark.parametrize(("public_key", "case"), ED25519, ids=[f"tc{t['tcId']}" for _, t in ED25519])
def test_ed25519_vector(public_key: bytes, case: dict[str, Any]) -> None:
    # Wycheproof's verdict, except that small-order keys are refused by design.
    expected = case["result"] == "valid" and not is_small_order_ed25519(public_key)
    got = verify_signature(public_key, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
    assert got is expected, f"tcId {case['tcId']} {case['comment']!r} flags={case['flags']}"


# --- X25519 ---------------------------------------------------------------------

ZERO_SHARED = "00" * 32


def is_low_order_case(case: dict[str, Any]) -> bool:
    return "LowOrderPublic" in case["flags"] or "ZeroSharedSecret" in case["flags"] or case["shared"] == ZERO_SHARED


def test_x25519_vector_file_covers_low_order_and_normal_keys() -> None:
    low = [c for c in X25519 if is_low_order_case(c)]
    normal = [c for c in X25519 if not is_low_order_case(c)]
    assert len(low) >= 20
    assert len(normal) >= 400
    # The flags and the all-zero shared secret agree in this file.
    for case in X25519:
        flagged = "LowOrderPublic" in case["flags"]
        assert flagged == (case["shared"] == ZERO_SHARED), case["tcId"]


@pytest.mark.parametrize("case", X25519, ids=[f"tc{c['tcId']}" for c in X25519])
def test_x25519_vector(case: dict[str, Any]) -> None:
    public = bytes.fromhex(case["public"])
    if is_low_order_case(case) or len(public) != 32:
        assert not is_valid_dh_key(public), f"tcId {case['tcId']} {case['comment']!r} flags={case['flags']}"
        return
    # Non-zero shared secret, 32-byte key (including twist and non-canonical
    # points, which RFC 7748 says to accept): Parley accepts it, and the key
    # yields the vector's shared secret.
    assert is_valid_dh_key(public), f"tcId {case['tcId']} {case['comment']!r} flags={case['flags']}"
    shared = nacl.bindings.crypto_scalarmult(bytes.fromhex(case["private"]), public)
    assert shared.hex() == case["shared"]
