"""Labelled encoding, device certificates, signatures and key checks."""

from __future__ import annotations

import hashlib
import re

import nacl.bindings
import nacl.signing
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from parley.crypto.encoding import LABEL_PREFIX, labelled, length_prefixed
from parley.crypto.identity import (
    device_certificate_bytes,
    device_id_for,
    is_valid_dh_key,
    is_valid_signing_key,
    login_challenge_bytes,
    verify_signature,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Ed25519 points of order 1, 2, 4 and 8 (libsodium's blacklist), plus the
# order-2/4/8 points with the sign bit of x flipped.
ED25519_SMALL_ORDER = [
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    )
]
ED25519_IDENTITY = ED25519_SMALL_ORDER[0]

# X25519 u-coordinates of low order (RFC 7748 §6.1 / libsodium's blacklist),
# including non-canonical encodings (p, p+1, ...) and one with the top bit set.
X25519_LOW_ORDER = [
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",  # u = 0
        "0100000000000000000000000000000000000000000000000000000000000000",  # u = 1
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # u = p - 1
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # u = p (= 0)
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # u = p + 1 (= 1)
        "0000000000000000000000000000000000000000000000000000000000000080",  # u = 0, top bit set
    )
]


def parse_labelled(data: bytes) -> tuple[str, list[bytes]]:
    """Inverse of `labelled`, written independently of it."""
    items: list[bytes] = []
    at = 0
    while at < len(data):
        assert at + 4 <= len(data), "truncated length prefix"
        size = int.from_bytes(data[at : at + 4], "big")
        at += 4
        assert at + size <= len(data), "field overruns the buffer"
        items.append(data[at : at + size])
        at += size
    label = items[0].decode()
    assert label.startswith(LABEL_PREFIX)
    return label[len(LABEL_PREFIX) :], items[1:]


fields_strategy = st.lists(st.binary(max_size=40), max_size=5)
purposes = st.text(max_size=20)


# --- encoding -------------------------------------------------------------------


def test_length_prefixed_layout() -> None:
    assert length_prefixed(b"") == b"\x00\x00\x00\x00"
    assert length_prefixed(b"abc") == b"\x00\x00\x00\x03abc"
    assert length_prefixed(b"x" * 300)[:4] == b"\x00\x00\x01\x2c"


def test_labelled_layout() -> None:
    label = b"parley/v1/demo"
    assert labelled("demo", b"ab", b"") == (
        len(label).to_bytes(4, "big") + label + b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x00"
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        (("abc",), ("ab", "c")),
        (("", "a"), ("a", "")),
        ((), ("",)),
        (("",), ("", "")),
    ],
)
def test_labelled_field_boundaries_matter(left: tuple[str, ...], right: tuple[str, ...]) -> None:
    a = labelled("p", *(s.encode() for s in left))
    b = labelled("p", *(s.encode() for s in right))
    assert a != b


def test_labelled_purpose_is_separated_from_fields() -> None:
    assert labelled("ab") != labelled("a", b"b")
    assert labelled("device-certificate", b"k") != labelled("login-challenge", b"k")


@FAST
@given(purpose=purposes, fields=fields_strategy)
def test_labelled_parses_back(purpose: str, fields: list[bytes]) -> None:
    assert parse_labelled(labelled(purpose, *fields)) == (purpose, fields)


@FAST
@given(a=st.tuples(purposes, fields_strategy), b=st.tuples(purposes, fields_strategy))
def test_labelled_is_injective(a: tuple[str, list[bytes]], b: tuple[str, list[bytes]]) -> None:
    assume(a != b)
    assert labelled(a[0], *a[1]) != labelled(b[0], *b[1])


@FAST
@given(fields=st.lists(st.binary(min_size=1, max_size=20), min_size=2, max_size=4), data=st.data())
def test_labelled_moving_a_byte_across_a_boundary_changes_bytes(fields: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(fields) - 2))
    moved = list(fields)
    moved[i], moved[i + 1] = fields[i][:-1], fields[i][-1:] + fields[i + 1]
    assert b"".join(moved) == b"".join(fields)
    assert labelled("x", *moved) != labelled("x", *fields)


def test_login_challenge_bytes_are_unambiguous() -> None:
    nonce = bytes(16)
    a = login_challenge_bytes("c1", nonce, "ab", "c")
    b = login_challenge_bytes("c1", nonce, "a", "bc")
    assert a != b
    assert parse_labelled(a) == ("login-challenge", [b"c1", nonce, b"ab", b"c"])


def test_device_certificate_bytes_layout() -> None:
    user, device, dh = b"u" * 32, b"d" * 32, b"h" * 32
    assert parse_labelled(device_certificate_bytes(user, device, dh)) == ("device-certificate", [user, device, dh])


# --- device certificates ----------------------------------------------------------


def new_device() -> tuple[nacl.signing.SigningKey, bytes, bytes]:
    """(user signing key, device signing public key, device DH public key)."""
    user = nacl.signing.SigningKey.generate()
    device = nacl.signing.SigningKey.generate()
    dh_public, _ = nacl.bindings.crypto_box_keypair()
    return user, bytes(device.verify_key), dh_public


def test_device_certificate_round_trip() -> None:
    user, device_key, dh_key = new_device()
    user_key = bytes(user.verify_key)
    message = device_certificate_bytes(user_key, device_key, dh_key)
    signature = user.sign(message).signature
    assert verify_signature(user_key, message, signature) is True


def test_device_certificate_does_not_vouch_for_other_keys() -> None:
    user, device_key, dh_key = new_device()
    _, other_device, other_dh = new_device()
    user_key = bytes(user.verify_key)
    signature = user.sign(device_certificate_bytes(user_key, device_key, dh_key)).signature
    assert not verify_signature(user_key, device_certificate_bytes(user_key, other_device, dh_key), signature)
    assert not verify_signature(user_key, device_certificate_bytes(user_key, device_key, other_dh), signature)


def test_certificate_signed_by_another_user_is_rejected() -> None:
    user, device_key, dh_key = new_device()
    mallory = nacl.signing.SigningKey.generate()
    user_key = bytes(user.verify_key)
    message = device_certificate_bytes(user_key, device_key, dh_key)
    assert not verify_signature(user_key, message, mallory.sign(message).signature)


def test_certificate_signature_is_not_a_login_signature() -> None:
    user, device_key, dh_key = new_device()
    user_key = bytes(user.verify_key)
    signature = user.sign(device_certificate_bytes(user_key, device_key, dh_key)).signature
    login = login_challenge_bytes("c", b"n", "u", device_id_for(device_key))
    assert not verify_signature(user_key, login, signature)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@FAST
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(min_size=1, max_size=64), data=st.data())
def test_any_bit_flip_breaks_verification(seed: bytes, message: bytes, data: st.DataObject) -> None:
    key = nacl.signing.SigningKey(seed)
    public = bytes(key.verify_key)
    signature = key.sign(message).signature
    assert verify_signature(public, message, signature)

    where = data.draw(st.sampled_from(["message", "signature", "key"]))
    if where == "message":
        bit = data.draw(st.integers(0, len(message) * 8 - 1))
        assert not verify_signature(public, flip(message, bit), signature)
    elif where == "signature":
        bit = data.draw(st.integers(0, len(signature) * 8 - 1))
        assert not verify_signature(public, message, flip(signature, bit))
    else:
        bit = data.draw(st.integers(0, len(public) * 8 - 1))
        assert not verify_signature(flip(public, bit), message, signature)


@pytest.mark.parametrize("part", ["message", "signature", "key"])
def test_every_single_bit_flip_breaks_verification(part: str) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    public = bytes(key.verify_key)
    message = b"parley"
    signature = key.sign(message).signature
    target = {"message": message, "signature": signature, "key": public}[part]
    for bit in range(len(target) * 8):
        flipped = flip(target, bit)
        args = {"message": message, "signature": signature, "key": public, part: flipped}
        assert not verify_signature(args["key"], args["message"], args["signature"]), (part, bit)


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_wrong_signature_length_is_rejected(length: int) -> None:
    key = nacl.signing.SigningKey.generate()
    signature = key.sign(b"m").signature
    bad = (signature * 2)[:length]
    assert not verify_signature(bytes(key.verify_key), b"m", bad)


def test_signature_with_trailing_garbage_is_rejected() -> None:
    key = nacl.signing.SigningKey.generate()
    signature = key.sign(b"m").signature
    assert not verify_signature(bytes(key.verify_key), b"m", signature + b"\x00")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_key_length_is_rejected(length: int) -> None:
    key = nacl.signing.SigningKey.generate()
    signature = key.sign(b"m").signature
    bad_key = (bytes(key.verify_key) * 2)[:length]
    assert not verify_signature(bad_key, b"m", signature)
    assert not is_valid_signing_key(bad_key)


def test_verify_signature_never_raises_on_garbage() -> None:
    assert verify_signature(b"\xff" * 32, b"m", b"\xff" * 64) is False
    assert verify_signature(b"", b"", b"") is False


# --- device ids -------------------------------------------------------------------


@FAST
@given(key=st.binary(min_size=32, max_size=32))
def test_device_id_format(key: bytes) -> None:
    device_id = device_id_for(key)
    assert re.fullmatch(r"d[0-9a-f]{32}", device_id)
    assert device_id == "d" + hashlib.blake2b(key, digest_size=16).hexdigest()
    assert device_id_for(key) == device_id


def test_device_id_distinguishes_keys() -> None:
    keys = {bytes(nacl.signing.SigningKey.generate().verify_key) for _ in range(50)}
    assert len({device_id_for(k) for k in keys}) == len(keys)


# --- key checks ------------------------------------------------------------------


@pytest.mark.parametrize("point", ED25519_SMALL_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_small_order_signing_keys_are_rejected(point: bytes) -> None:
    # Self-check of the table: 8·P is the identity, computed with libsodium's raw point addition.
    q = point
    for _ in range(3):
        q = nacl.bindings.crypto_core_ed25519_add(q, q)
    assert q == ED25519_IDENTITY
    assert not is_valid_signing_key(point)


def test_identity_key_forgery_is_rejected() -> None:
    # With A = R = identity and S = 0, the cofactorless equation [S]B = R + [k]A
    # holds for every message: the classic small-order-key forgery.
    forged = ED25519_IDENTITY + bytes(32)
    assert not verify_signature(ED25519_IDENTITY, b"any message at all", forged)


@FAST
@given(seed=st.binary(min_size=32, max_size=32))
def test_generated_signing_keys_are_valid(seed: bytes) -> None:
    assert is_valid_signing_key(bytes(nacl.signing.SigningKey(seed).verify_key))


def test_off_curve_signing_key_is_rejected() -> None:
    # y = 2 is not on edwards25519: x² = (y² − 1)/(d·y² + 1) is not a square mod p.
    p = 2**255 - 19
    d = -121665 * pow(121666, -1, p) % p
    y = 2
    x2 = (y * y - 1) * pow(d * y * y + 1, -1, p) % p
    assert pow(x2, (p - 1) // 2, p) == p - 1  # Euler's criterion: a non-residue
    assert not is_valid_signing_key(y.to_bytes(32, "little"))


def test_signing_key_with_torsion_component_is_rejected() -> None:
    # P + T (T of order 8) is not of small order, but honest keys never carry
    # a torsion component; libsodium's check (prime-order subgroup) refuses it.
    honest = bytes(nacl.signing.SigningKey(bytes(32)).verify_key)
    mixed = nacl.bindings.crypto_core_ed25519_add(honest, ED25519_SMALL_ORDER[4])
    assert is_valid_signing_key(honest)
    assert not is_valid_signing_key(mixed)


@pytest.mark.parametrize("point", X25519_LOW_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_dh_keys_are_rejected(point: bytes) -> None:
    assert not is_valid_dh_key(point)


@FAST
@given(secret=st.binary(min_size=32, max_size=32))
def test_generated_dh_keys_are_valid(secret: bytes) -> None:
    assert is_valid_dh_key(nacl.bindings.crypto_scalarmult_base(secret))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_dh_keys_are_rejected(length: int) -> None:
    public, _ = nacl.bindings.crypto_box_keypair()
    assert not is_valid_dh_key((public * 3)[:length])


def test_x25519_base_point_is_valid() -> None:
    assert is_valid_dh_key((9).to_bytes(32, "little"))
