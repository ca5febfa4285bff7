"""X3DH and PQXDH (parley.crypto.x3dh): both sides derive the same secret with and without a
one-time prekey and ML-KEM-768, the KEM is named in the KDF label, bad signatures and certificates
are refused, unknown prekeys and low-order keys are refused, the header round-trips; libsignal's
known answers for the chain keys (rust/protocol/tests/ratchet.rs) come out of our KDFs.

The party helpers here (`Device`, `counter_rng`, `start_session`) are shared by the ratchet tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import nacl.signing
import pytest

from parley.crypto import identity
from parley.crypto.errors import (
    InvalidKeyError,
    InvalidSignatureError,
    KemUnavailableError,
    MalformedInputError,
    UnknownPrekeyError,
)
from parley.crypto.kem import Kem, KemKeyPair, MlKem768
from parley.crypto.primitives import Rng, X25519KeyPair, hkdf_sha256
from parley.crypto.ratchet import DoubleRatchet, RatchetConfig, kdf_rk
from parley.crypto.x3dh import (
    DeviceKeys,
    DeviceSecrets,
    InitialHeader,
    KemPrekey,
    OneTimePrekey,
    PrekeyBundle,
    PrekeySecrets,
    SignedPrekey,
    derive_shared_secret,
    initiate,
    initiator_key_material,
    respond,
    responder_key_material,
    x3dh_info,
)

KEM = MlKem768()
SIGNED_PREKEY_ID = 7
KEM_PREKEY_ID = 9


def counter_rng(seed: bytes) -> Rng:
    """Deterministic bytes (SHAKE-256 over seed || counter), for golden vectors and reproducible runs."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n)

    return rng


@dataclass
class Device:
    """A test device: its keys, certificate, signed prekey, one-time prekeys and KEM prekey."""

    secrets: DeviceSecrets
    signing_key: nacl.signing.SigningKey
    signed_prekey: X25519KeyPair
    one_time_prekeys: dict[int, X25519KeyPair]
    kem_prekey: KemKeyPair
    used_one_time_prekeys: set[int] = field(default_factory=set)

    @property
    def keys(self) -> DeviceKeys:
        return self.secrets.keys

    def bundle(self, one_time_prekey_id: int | None = None, *, with_kem: bool = False) -> PrekeyBundle:
        one_time = None
        if one_time_prekey_id is not None:
            one_time = OneTimePrekey(one_time_prekey_id, self.one_time_prekeys[one_time_prekey_id].public_key)
        kem_prekey = None
        if with_kem:
            public = self.kem_prekey.public_key
            signature = self.signing_key.sign(identity.kem_prekey_bytes(KEM.name, KEM_PREKEY_ID, public)).signature
            kem_prekey = KemPrekey(KEM.name, KEM_PREKEY_ID, public, signature)
        public = self.signed_prekey.public_key
        signature = self.signing_key.sign(identity.signed_prekey_bytes(SIGNED_PREKEY_ID, public)).signature
        return PrekeyBundle(self.keys, SignedPrekey(SIGNED_PREKEY_ID, public, signature), one_time, kem_prekey)

    def prekey_secrets(self, kem: Kem | None = KEM) -> PrekeySecrets:
        return PrekeySecrets(
            signed_prekeys={SIGNED_PREKEY_ID: self.signed_prekey},
            one_time_prekeys={k: v for k, v in self.one_time_prekeys.items() if k not in self.used_one_time_prekeys},
            kem_prekeys={KEM_PREKEY_ID: self.kem_prekey},
            kem=kem,
        )


def make_device(rng: Rng) -> Device:
    user = nacl.signing.SigningKey(rng(32))
    signing = nacl.signing.SigningKey(rng(32))
    dh = X25519KeyPair.generate(rng)
    user_key, signing_key = user.verify_key.encode(), signing.verify_key.encode()
    certificate = user.sign(identity.device_certificate_bytes(user_key, signing_key, dh.public_key)).signature
    keys = DeviceKeys(user_key, signing_key, dh.public_key, certificate)
    return Device(
        secrets=DeviceSecrets(keys, dh.private_key),
        signing_key=signing,
        signed_prekey=X25519KeyPair.generate(rng),
        one_time_prekeys={i: X25519KeyPair.generate(rng) for i in range(1, 4)},
        kem_prekey=KEM.generate(rng),
    )


@dataclass
class Session:
    alice: DoubleRatchet
    bob: DoubleRatchet
    header: InitialHeader


def start_session(
    alice: Device,
    bob: Device,
    rng: Rng,
    *,
    one_time_prekey_id: int | None = 1,
    config: RatchetConfig | None = None,
) -> Session:
    """Alice runs X3DH against Bob's bundle, Bob answers from her header; each gets a ratchet."""
    initiated = initiate(alice.secrets, bob.bundle(one_time_prekey_id), rng=rng)
    responded = respond(bob.secrets, InitialHeader.from_bytes(initiated.header.to_bytes()), bob.prekey_secrets())
    assert initiated.shared_secret == responded.shared_secret
    alice_ratchet = DoubleRatchet.initiator(
        initiated.shared_secret,
        initiated.peer_ratchet_key,
        initiated.associated_data,
        local_device_id=alice.keys.device_id,
        remote_device_id=bob.keys.device_id,
        config=config,
        rng=rng,
    )
    bob_ratchet = DoubleRatchet.responder(
        responded.shared_secret,
        responded.ratchet_key_pair,
        responded.associated_data,
        local_device_id=bob.keys.device_id,
        remote_device_id=alice.keys.device_id,
        config=config,
        rng=rng,
    )
    return Session(alice_ratchet, bob_ratchet, initiated.header)


@pytest.fixture
def alice() -> Device:
    return make_device(counter_rng(b"alice"))


@pytest.fixture
def bob() -> Device:
    return make_device(counter_rng(b"bob"))


# --- agreement -------------------------------------------------------------------


@pytest.mark.parametrize("one_time_prekey_id", [None, 2])
@pytest.mark.parametrize("with_kem", [False, True])
def test_both_sides_derive_the_same_secret_and_associated_data(
    alice: Device, bob: Device, one_time_prekey_id: int | None, with_kem: bool
) -> None:
    initiated = initiate(
        alice.secrets, bob.bundle(one_time_prekey_id, with_kem=with_kem), kem=KEM if with_kem else None
    )
    header = InitialHeader.from_bytes(initiated.header.to_bytes())
    assert header == initiated.header
    assert header.one_time_prekey_id == one_time_prekey_id
    assert (header.kem, header.kem_prekey_id) == ((KEM.name, KEM_PREKEY_ID) if with_kem else ("", None))
    assert len(header.kem_ciphertext) == (MlKem768.CIPHERTEXT_BYTES if with_kem else 0)

    responded = respond(bob.secrets, header, bob.prekey_secrets())
    assert len(initiated.shared_secret) == 32
    assert responded.shared_secret == initiated.shared_secret
    assert responded.associated_data == initiated.associated_data
    assert responded.peer == alice.keys
    assert initiated.peer == bob.keys
    assert responded.ratchet_key_pair.public_key == initiated.peer_ratchet_key == bob.signed_prekey.public_key


def test_fresh_ephemeral_keys_give_fresh_secrets(alice: Device, bob: Device) -> None:
    first = initiate(alice.secrets, bob.bundle())
    second = initiate(alice.secrets, bob.bundle())
    assert first.header.ephemeral_key != second.header.ephemeral_key
    assert first.shared_secret != second.shared_secret


def test_the_kem_is_named_in_the_kdf_label(alice: Device, bob: Device) -> None:
    assert x3dh_info() != x3dh_info(KEM.name)
    assert KEM.name.encode() in x3dh_info(KEM.name)
    rng_seed = b"same ephemeral"
    hybrid = initiate(alice.secrets, bob.bundle(with_kem=True), kem=KEM, rng=counter_rng(rng_seed))
    classical = initiate(alice.secrets, bob.bundle(), rng=counter_rng(rng_seed))
    assert hybrid.header.ephemeral_key == classical.header.ephemeral_key
    # The hybrid secret is HKDF over the same DH outputs plus the KEM secret, under the KEM's label.
    kem_secret = KEM.decapsulate(bob.kem_prekey.seed, hybrid.header.kem_ciphertext)
    material = responder_key_material(
        bob.secrets.dh_private_key,
        bob.signed_prekey.private_key,
        alice.keys.device_dh_key,
        hybrid.header.ephemeral_key,
        kem_shared_secret=kem_secret,
    )
    assert hybrid.shared_secret == hkdf_sha256(material, salt=bytes(32), info=x3dh_info(KEM.name), length=32)
    assert hybrid.shared_secret != classical.shared_secret


def test_without_a_kem_the_initiator_falls_back_to_classical(alice: Device, bob: Device) -> None:
    initiated = initiate(alice.secrets, bob.bundle(with_kem=True))
    assert initiated.header.kem == ""
    assert respond(bob.secrets, initiated.header, bob.prekey_secrets()).shared_secret == initiated.shared_secret


# --- refusals --------------------------------------------------------------------


def test_a_bad_signed_prekey_signature_is_rejected(alice: Device, bob: Device) -> None:
    bundle = bob.bundle(1)
    forged = replace(bundle.signed_prekey, public_key=X25519KeyPair.generate().public_key)
    with pytest.raises(InvalidSignatureError, match="signed prekey"):
        initiate(alice.secrets, replace(bundle, signed_prekey=forged))
    signed_by_other_key = replace(bundle, signed_prekey=alice.bundle().signed_prekey)
    with pytest.raises(InvalidSignatureError, match="signed prekey"):
        initiate(alice.secrets, signed_by_other_key)


def test_a_bad_kem_prekey_signature_is_rejected(alice: Device, bob: Device) -> None:
    bundle = bob.bundle(with_kem=True)
    assert bundle.kem_prekey is not None
    relabelled = replace(bundle.kem_prekey, key_id=KEM_PREKEY_ID + 1)
    with pytest.raises(InvalidSignatureError, match="KEM prekey"):
        initiate(alice.secrets, replace(bundle, kem_prekey=relabelled), kem=KEM)


def test_a_device_key_the_user_key_did_not_certify_is_rejected(alice: Device, bob: Device) -> None:
    swapped_dh = replace(bob.keys, device_dh_key=alice.keys.device_dh_key)
    with pytest.raises(InvalidSignatureError, match="certificate"):
        initiate(alice.secrets, replace(bob.bundle(), device=swapped_dh))
    other_user = replace(bob.keys, user_signing_key=alice.keys.user_signing_key)
    with pytest.raises(InvalidSignatureError, match="certificate"):
        initiate(alice.secrets, replace(bob.bundle(), device=other_user))

    # The responder checks the initiator's certificate the same way.
    header = initiate(alice.secrets, bob.bundle()).header
    impostor = replace(header, initiator=replace(alice.keys, device_dh_key=bob.keys.device_dh_key))
    with pytest.raises(InvalidSignatureError, match="certificate"):
        respond(bob.secrets, impostor, bob.prekey_secrets())


def test_unknown_or_used_prekeys_are_refused(alice: Device, bob: Device) -> None:
    header = initiate(alice.secrets, bob.bundle(1)).header
    bob.used_one_time_prekeys.add(1)
    with pytest.raises(UnknownPrekeyError, match="one-time prekey 1"):
        respond(bob.secrets, header, bob.prekey_secrets())
    with pytest.raises(UnknownPrekeyError, match="signed prekey 8"):
        respond(bob.secrets, replace(header, signed_prekey_id=8, one_time_prekey_id=None), bob.prekey_secrets())
    hybrid = initiate(alice.secrets, bob.bundle(with_kem=True), kem=KEM).header
    with pytest.raises(UnknownPrekeyError, match="KEM prekey 10"):
        respond(bob.secrets, replace(hybrid, kem_prekey_id=10), bob.prekey_secrets())
    with pytest.raises(KemUnavailableError):
        respond(bob.secrets, hybrid, bob.prekey_secrets(kem=None))


def test_a_low_order_ephemeral_key_is_refused(alice: Device, bob: Device) -> None:
    header = initiate(alice.secrets, bob.bundle()).header
    with pytest.raises(InvalidKeyError):
        respond(bob.secrets, replace(header, ephemeral_key=bytes(32)), bob.prekey_secrets())


def test_a_tampered_kem_ciphertext_gives_a_different_secret(alice: Device, bob: Device) -> None:
    initiated = initiate(alice.secrets, bob.bundle(with_kem=True), kem=KEM)
    ciphertext = initiated.header.kem_ciphertext
    tampered = replace(initiated.header, kem_ciphertext=bytes([ciphertext[0] ^ 1]) + ciphertext[1:])
    assert respond(bob.secrets, tampered, bob.prekey_secrets()).shared_secret != initiated.shared_secret


def test_malformed_headers_are_refused(alice: Device, bob: Device) -> None:
    encoded = initiate(alice.secrets, bob.bundle(1)).header.to_bytes()
    with pytest.raises(MalformedInputError):
        InitialHeader.from_bytes(encoded[:-1])
    with pytest.raises(MalformedInputError):
        InitialHeader.from_bytes(encoded + b"\x00\x00\x00\x00")
    with pytest.raises(MalformedInputError):
        InitialHeader.from_bytes(b"\x00\x00\x00\x05hello")


# --- libsignal's known answers -----------------------------------------------------
# From rust/protocol/tests/ratchet.rs (signalapp/libsignal, before a280bc655), keys without the 0x05
# type byte. libsignal derives root key || chain key = HKDF(salt = zeros, F || DH1 || DH2 || DH3,
# "WhisperText"), which is our KDF_RK with a zero root key and that info label.

BOB_IDENTITY_PUBLIC = "f1f43874f6966956c2dd473f8fa15adeb71d1cb991b2341692324cefb1c5e626"
BOB_IDENTITY_PRIVATE = "4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e"
BOB_SIGNED_PREKEY_PUBLIC = "ac248a8f263be6863576eb0362e28c828f0107a3379d34bab1586bf8c770cd67"
BOB_SIGNED_PREKEY_PRIVATE = "583900131fb727998b7803fe6ac22cc591f342e4e42a8c8d5d78194209b8d253"
ALICE_IDENTITY_PUBLIC = "b4a8455660ada65b401007f615e654041746432e3339c6875149bceefcb42b4a"
ALICE_IDENTITY_PRIVATE = "9040f0d4e09cf38f6dc7c13779c908c015a1da4fa78737a080eb0a6f4f5f8f58"
# An unclamped private key; the public key below was computed from it without clamping.
ALICE_BASE_PRIVATE = "11ae7c64d1e61cd596b76a0db5012673391cae66edbfcf073b4da80516a47449"
ALICE_BASE_PUBLIC_UNCLAMPED = "472d1fb1a9862c3af6beaca8920277e2b26f4a79213ec7c906aeb35e03cf8950"
ALICE_BASE_PUBLIC = "e2c05860f2ac6b2b57ba564b421ffe71e4b128c591e46e0491cc9b33dbf22a27"
BOB_SENDER_CHAIN = "9797caca53c989bbe229a40ca7727010eb2604fc14945d77958a0aeda088b44d"
ALICE_RECEIVER_CHAIN = "ab9be50e5cb22a925446ab90ee5670545f4fd32902459ec274b6ad0ae5d6031a"
LIBSIGNAL_INFO = b"WhisperText"
h = bytes.fromhex


def libsignal_chain_key(material: bytes) -> str:
    _, chain_key = kdf_rk(bytes(32), material, LIBSIGNAL_INFO)
    return chain_key.hex()


def test_libsignal_bob_sender_chain_key() -> None:
    material = responder_key_material(
        h(BOB_IDENTITY_PRIVATE), h(BOB_SIGNED_PREKEY_PRIVATE), h(ALICE_IDENTITY_PUBLIC), h(ALICE_BASE_PUBLIC_UNCLAMPED)
    )
    assert libsignal_chain_key(material) == BOB_SENDER_CHAIN


def test_libsignal_alice_receiver_chain_key() -> None:
    material = initiator_key_material(
        h(ALICE_IDENTITY_PRIVATE), h(ALICE_BASE_PRIVATE), h(BOB_IDENTITY_PUBLIC), h(BOB_SIGNED_PREKEY_PUBLIC)
    )
    assert libsignal_chain_key(material) == ALICE_RECEIVER_CHAIN


def test_libsignal_vectors_agree_once_the_base_key_is_clamped() -> None:
    # X25519 clamps the scalar, so the base key's real public key is not the unclamped one; with it,
    # Bob derives Alice's chain key (libsignal's own fix, a280bc655, expects ab9be50e on both sides).
    assert X25519KeyPair.from_private_key(h(ALICE_BASE_PRIVATE)).public_key.hex() == ALICE_BASE_PUBLIC
    assert X25519KeyPair.from_private_key(h(BOB_IDENTITY_PRIVATE)).public_key.hex() == BOB_IDENTITY_PUBLIC
    assert X25519KeyPair.from_private_key(h(BOB_SIGNED_PREKEY_PRIVATE)).public_key.hex() == BOB_SIGNED_PREKEY_PUBLIC
    material = responder_key_material(
        h(BOB_IDENTITY_PRIVATE), h(BOB_SIGNED_PREKEY_PRIVATE), h(ALICE_IDENTITY_PUBLIC), h(ALICE_BASE_PUBLIC)
    )
    assert libsignal_chain_key(material) == ALICE_RECEIVER_CHAIN


def test_our_shared_secret_is_libsignals_root_key() -> None:
    # Signal's X3DH SK is the first 32 bytes of the same HKDF output (our default label differs).
    material = initiator_key_material(
        h(ALICE_IDENTITY_PRIVATE), h(ALICE_BASE_PRIVATE), h(BOB_IDENTITY_PUBLIC), h(BOB_SIGNED_PREKEY_PUBLIC)
    )
    root_key, _ = kdf_rk(bytes(32), material, LIBSIGNAL_INFO)
    assert derive_shared_secret(material, LIBSIGNAL_INFO) == root_key
