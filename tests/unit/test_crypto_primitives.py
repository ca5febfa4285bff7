"""Known-answer tests for parley.crypto.primitives: Wycheproof HKDF-SHA256, HMAC-SHA256,
XChaCha20-Poly1305 and X25519 (`../shared/vectors/`, a missing file fails), RFC 5869's
SHA-256 cases, BLAKE2b-256 against hashlib, and the sealing rules (random nonce, AD required)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.crypto.errors import DecryptionError, InvalidKeyError, MalformedInputError
from parley.crypto.primitives import (
    AEAD_NONCE_BYTES,
    X25519KeyPair,
    blake2b_256,
    constant_time_equal,
    hkdf_sha256,
    hmac_sha256,
    open_sealed,
    seal,
    x25519,
    xchacha20poly1305_decrypt,
    xchacha20poly1305_encrypt,
)
from tests.support import VECTORS

WYCHEPROOF = VECTORS / "wycheproof"


def wycheproof_cases(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    document: dict[str, Any] = json.loads((WYCHEPROOF / name).read_text())
    cases = [(group, case) for group in document["testGroups"] for case in group["tests"]]
    assert len(cases) == document["numberOfTests"]
    return cases


def ids(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    return [f"tc{case['tcId']}" for _, case in cases]


HKDF = wycheproof_cases("hkdf_sha256_test.json")
HMAC = wycheproof_cases("hmac_sha256_test.json")
XCHACHA = wycheproof_cases("xchacha20_poly1305_test.json")
X25519 = wycheproof_cases("x25519_test.json")


# --- HKDF-SHA256 -----------------------------------------------------------------


def test_hkdf_vector_file_has_valid_and_oversized_cases() -> None:
    assert sum(c["result"] == "valid" for _, c in HKDF) >= 80
    assert {c["result"] for _, c in HKDF if "SizeTooLarge" in c["flags"]} == {"invalid"}


@pytest.mark.parametrize(("group", "case"), HKDF, ids=ids(HKDF))
def test_hkdf_wycheproof(group: dict[str, Any], case: dict[str, Any]) -> None:
    ikm, salt, info = (bytes.fromhex(case[k]) for k in ("ikm", "salt", "info"))
    if case["result"] == "invalid":
        with pytest.raises(ValueError, match="HKDF-SHA256 output"):
            hkdf_sha256(ikm, salt=salt, info=info, length=case["size"])
        return
    assert hkdf_sha256(ikm, salt=salt, info=info, length=case["size"]).hex() == case["okm"]


# RFC 5869 appendix A.1-A.3 (the SHA-256 cases): ikm, salt, info, L, OKM.
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    ("0b" * 22, "", "", 42, "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869, ids=["A.1", "A.2", "A.3"])
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    derived = hkdf_sha256(bytes.fromhex(ikm), salt=bytes.fromhex(salt), info=bytes.fromhex(info), length=length)
    assert derived.hex() == okm


@pytest.mark.parametrize(("group", "case"), HMAC, ids=ids(HMAC))
def test_hmac_sha256_wycheproof(group: dict[str, Any], case: dict[str, Any]) -> None:
    tag = hmac_sha256(bytes.fromhex(case["key"]), bytes.fromhex(case["msg"]))[: group["tagSize"] // 8]
    assert constant_time_equal(tag, bytes.fromhex(case["tag"])) is (case["result"] == "valid")


# --- BLAKE2b-256 -----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_blake2b_256_is_raw_blake2b_with_32_byte_digest(data: bytes) -> None:
    assert blake2b_256(data) == hashlib.blake2b(data, digest_size=32).digest()


def test_constant_time_equal() -> None:
    assert constant_time_equal(b"abc", b"abc")
    assert not constant_time_equal(b"abc", b"abd")
    assert not constant_time_equal(b"abc", b"abcd")


# --- XChaCha20-Poly1305 ----------------------------------------------------------


def test_xchacha_vector_file_covers_modified_tags_and_bad_nonces() -> None:
    flags = {flag for _, c in XCHACHA if c["result"] == "invalid" for flag in c["flags"]}
    assert flags == {"ModifiedTag", "InvalidNonceSize"}
    assert sum(c["result"] == "valid" for _, c in XCHACHA) >= 240


@pytest.mark.parametrize(("group", "case"), XCHACHA, ids=ids(XCHACHA))
def test_xchacha20poly1305_wycheproof(group: dict[str, Any], case: dict[str, Any]) -> None:
    key, nonce, aad, msg, ct, tag = (bytes.fromhex(case[k]) for k in ("key", "iv", "aad", "msg", "ct", "tag"))
    if "InvalidNonceSize" in case["flags"]:
        with pytest.raises(MalformedInputError):
            xchacha20poly1305_encrypt(key, nonce, msg, aad)
        with pytest.raises(MalformedInputError):
            xchacha20poly1305_decrypt(key, nonce, ct + tag, aad)
        return
    if case["result"] == "invalid":
        with pytest.raises(DecryptionError):
            xchacha20poly1305_decrypt(key, nonce, ct + tag, aad)
        return
    assert xchacha20poly1305_encrypt(key, nonce, msg, aad) == ct + tag
    assert xchacha20poly1305_decrypt(key, nonce, ct + tag, aad) == msg


def test_seal_uses_a_fresh_nonce_from_the_rng_and_opens() -> None:
    key = bytes(range(32))
    drawn: list[int] = []

    def rng(n: int) -> bytes:
        drawn.append(n)
        return bytes([len(drawn)]) * n

    first = seal(key, b"hello", b"ad", rng)
    second = seal(key, b"hello", b"ad", rng)
    assert drawn == [AEAD_NONCE_BYTES, AEAD_NONCE_BYTES]
    assert first[:AEAD_NONCE_BYTES] == bytes([1]) * 24
    assert second[:AEAD_NONCE_BYTES] == bytes([2]) * 24
    assert first != second
    assert open_sealed(key, first, b"ad") == b"hello"
    assert open_sealed(key, second, b"ad") == b"hello"


def test_seal_refuses_empty_associated_data() -> None:
    with pytest.raises(ValueError, match="associated data"):
        seal(bytes(32), b"x", b"")
    with pytest.raises(ValueError, match="associated data"):
        open_sealed(bytes(32), bytes(64), b"")


def test_open_sealed_rejects_other_ad_key_short_input_and_every_bit_flip() -> None:
    key = bytes(range(32))
    sealed = seal(key, b"attack at dawn", b"context")
    with pytest.raises(DecryptionError):
        open_sealed(key, sealed, b"context2")
    with pytest.raises(DecryptionError):
        open_sealed(bytes(32), sealed, b"context")
    with pytest.raises(DecryptionError):
        open_sealed(key, sealed[: AEAD_NONCE_BYTES + 15], b"context")
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionError):
            open_sealed(key, bytes(flipped), b"context")


# --- X25519 ----------------------------------------------------------------------


def is_low_order(case: dict[str, Any]) -> bool:
    return "LowOrderPublic" in case["flags"] or "ZeroSharedSecret" in case["flags"] or case["shared"] == "00" * 32


def test_x25519_vector_file_covers_low_order_keys() -> None:
    assert sum(is_low_order(c) for _, c in X25519) >= 20


@pytest.mark.parametrize(("group", "case"), X25519, ids=ids(X25519))
def test_x25519_wycheproof(group: dict[str, Any], case: dict[str, Any]) -> None:
    private, public = bytes.fromhex(case["private"]), bytes.fromhex(case["public"])
    if is_low_order(case):
        with pytest.raises(InvalidKeyError):
            x25519(private, public)
        return
    assert x25519(private, public).hex() == case["shared"]


def test_x25519_key_pairs_agree_and_use_the_rng() -> None:
    alice = X25519KeyPair.generate(lambda n: bytes([7]) * n)
    bob = X25519KeyPair.generate(lambda n: bytes([9]) * n)
    assert alice.private_key == bytes([7]) * 32
    assert x25519(alice.private_key, bob.public_key) == x25519(bob.private_key, alice.public_key)
    assert alice.private_key.hex() not in repr(alice)


def test_x25519_rejects_wrong_sizes_and_the_all_zero_point() -> None:
    with pytest.raises(InvalidKeyError):
        x25519(bytes(32), bytes(31))
    with pytest.raises(MalformedInputError):
        x25519(bytes(31), bytes([9]) + bytes(31))
    with pytest.raises(InvalidKeyError):
        x25519(bytes([5]) * 32, bytes(32))
