"""X3DH key agreement (Signal's spec), optionally hybrid with a KEM (PQXDH).

A device's identity key is its X25519 key, certified together with its
Ed25519 key by the user key (`identity.device_certificate_bytes`); the
device's Ed25519 key signs its prekeys. The initiator verifies a bundle,
derives the shared secret and writes an `InitialHeader`; the responder
reads the header, looks up the private prekeys it names and derives the
same secret. Which prekeys to delete, and when, is the caller's decision:
CRYPTO.md deletes a one-time prekey only after the first message decrypts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled, read_u32, u32
from parley.crypto.errors import (
    InvalidKeyError,
    InvalidSignatureError,
    KemUnavailableError,
    UnknownPrekeyError,
)
from parley.crypto.kem import Kem, KemKeyPair
from parley.crypto.primitives import HASH_BYTES, Rng, X25519KeyPair, hkdf_sha256, system_rng, x25519

# X3DH §2.2: 32 0xFF bytes before the DH outputs, so the KDF input never starts like an X25519 public key.
_DISCONTINUITY = b"\xff" * 32
_HEADER_PURPOSE = "x3dh-initial-message"


def x3dh_info(kem_name: str = "") -> bytes:
    """The KDF info label; with a KEM it names the KEM, so a hybrid secret never equals a classical one."""
    if kem_name:
        return f"parley/v1/pqxdh X25519 SHA-256 {kem_name}".encode()
    return b"parley/v1/x3dh X25519 SHA-256"


@dataclass(frozen=True)
class DeviceKeys:
    """One device's public keys, as its user key certified them."""

    user_signing_key: bytes
    device_signing_key: bytes
    device_dh_key: bytes
    certificate: bytes

    @property
    def device_id(self) -> str:
        return identity.device_id_for(self.device_signing_key)

    def verify(self) -> None:
        """`InvalidSignatureError` unless the user key signed exactly these device keys."""
        if not identity.is_valid_dh_key(self.device_dh_key):
            raise InvalidKeyError("device X25519 key is not a usable public key")
        message = identity.device_certificate_bytes(self.user_signing_key, self.device_signing_key, self.device_dh_key)
        if not identity.verify_signature(self.user_signing_key, message, self.certificate):
            raise InvalidSignatureError("device certificate does not verify under the user key")


@dataclass(frozen=True)
class DeviceSecrets:
    """This device: its certified public keys and its X25519 identity private key."""

    keys: DeviceKeys
    dh_private_key: bytes = field(repr=False)


@dataclass(frozen=True)
class SignedPrekey:
    key_id: int
    public_key: bytes
    signature: bytes

    def verify(self, device_signing_key: bytes) -> None:
        message = identity.signed_prekey_bytes(self.key_id, self.public_key)
        if not identity.verify_signature(device_signing_key, message, self.signature):
            raise InvalidSignatureError("signed prekey signature does not verify under the device key")


@dataclass(frozen=True)
class OneTimePrekey:
    key_id: int
    public_key: bytes


@dataclass(frozen=True)
class KemPrekey:
    kem: str
    key_id: int
    public_key: bytes
    signature: bytes

    def verify(self, device_signing_key: bytes) -> None:
        message = identity.kem_prekey_bytes(self.kem, self.key_id, self.public_key)
        if not identity.verify_signature(device_signing_key, message, self.signature):
            raise InvalidSignatureError("KEM prekey signature does not verify under the device key")


@dataclass(frozen=True)
class PrekeyBundle:
    """What the identity service hands out for one device of the peer."""

    device: DeviceKeys
    signed_prekey: SignedPrekey
    one_time_prekey: OneTimePrekey | None = None
    kem_prekey: KemPrekey | None = None

    def verify(self) -> None:
        """Every signature in the bundle, or `InvalidSignatureError`."""
        self.device.verify()
        self.signed_prekey.verify(self.device.device_signing_key)
        if self.kem_prekey is not None:
            self.kem_prekey.verify(self.device.device_signing_key)


@dataclass(frozen=True)
class InitialHeader:
    """What the responder needs to derive the secret: who the initiator is and which prekeys were used."""

    initiator: DeviceKeys
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None = None
    kem: str = ""
    kem_prekey_id: int | None = None
    kem_ciphertext: bytes = b""

    def to_bytes(self) -> bytes:
        return labelled(
            _HEADER_PURPOSE,
            self.initiator.user_signing_key,
            self.initiator.device_signing_key,
            self.initiator.device_dh_key,
            self.initiator.certificate,
            self.ephemeral_key,
            u32(self.signed_prekey_id),
            _optional_u32(self.one_time_prekey_id),
            self.kem.encode(),
            _optional_u32(self.kem_prekey_id),
            self.kem_ciphertext,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InitialHeader:
        user, signing, dh, certificate, ephemeral, spk, otpk, kem, kem_id, kem_ct = read_labelled(
            _HEADER_PURPOSE, data, 10
        )
        return cls(
            initiator=DeviceKeys(user, signing, dh, certificate),
            ephemeral_key=ephemeral,
            signed_prekey_id=read_u32(spk),
            one_time_prekey_id=_read_optional_u32(otpk),
            kem=kem.decode(errors="replace"),
            kem_prekey_id=_read_optional_u32(kem_id),
            kem_ciphertext=kem_ct,
        )


@dataclass(frozen=True)
class X3dhSecret:
    """The outcome on either side: the shared secret, the associated data, and who the peer is."""

    shared_secret: bytes = field(repr=False)
    associated_data: bytes
    peer: DeviceKeys


@dataclass(frozen=True)
class Initiated(X3dhSecret):
    """The initiator's outcome: send `header`; the peer's signed prekey is its first ratchet key."""

    header: InitialHeader
    peer_ratchet_key: bytes


@dataclass(frozen=True)
class PrekeySecrets:
    """The responder's private prekeys by id, and its KEM when it published KEM prekeys."""

    signed_prekeys: Mapping[int, X25519KeyPair]
    one_time_prekeys: Mapping[int, X25519KeyPair] = field(default_factory=dict)
    kem_prekeys: Mapping[int, KemKeyPair] = field(default_factory=dict)
    kem: Kem | None = None


@dataclass(frozen=True)
class Responded(X3dhSecret):
    """The responder's outcome: the signed prekey pair starts its ratchet."""

    header: InitialHeader
    ratchet_key_pair: X25519KeyPair


def associated_data(initiator: DeviceKeys, responder: DeviceKeys) -> bytes:
    """X3DH's AD = Encode(IK_A) || Encode(IK_B), with each side's user and device signing keys bound too."""
    return labelled(
        "x3dh-associated-data",
        initiator.user_signing_key,
        initiator.device_signing_key,
        initiator.device_dh_key,
        responder.user_signing_key,
        responder.device_signing_key,
        responder.device_dh_key,
    )


def initiator_key_material(
    identity_private_key: bytes,
    ephemeral_private_key: bytes,
    peer_identity_key: bytes,
    peer_signed_prekey: bytes,
    peer_one_time_prekey: bytes | None = None,
    kem_shared_secret: bytes | None = None,
) -> bytes:
    """F || DH(IK_A, SPK_B) || DH(EK_A, IK_B) || DH(EK_A, SPK_B) [|| DH(EK_A, OPK_B)] [|| SS]."""
    parts = [
        _DISCONTINUITY,
        x25519(identity_private_key, peer_signed_prekey),
        x25519(ephemeral_private_key, peer_identity_key),
        x25519(ephemeral_private_key, peer_signed_prekey),
    ]
    if peer_one_time_prekey is not None:
        parts.append(x25519(ephemeral_private_key, peer_one_time_prekey))
    if kem_shared_secret is not None:
        parts.append(kem_shared_secret)
    return b"".join(parts)


def responder_key_material(
    identity_private_key: bytes,
    signed_prekey_private_key: bytes,
    peer_identity_key: bytes,
    peer_ephemeral_key: bytes,
    one_time_prekey_private_key: bytes | None = None,
    kem_shared_secret: bytes | None = None,
) -> bytes:
    """The same bytes as `initiator_key_material`, from the responder's private keys."""
    parts = [
        _DISCONTINUITY,
        x25519(signed_prekey_private_key, peer_identity_key),
        x25519(identity_private_key, peer_ephemeral_key),
        x25519(signed_prekey_private_key, peer_ephemeral_key),
    ]
    if one_time_prekey_private_key is not None:
        parts.append(x25519(one_time_prekey_private_key, peer_ephemeral_key))
    if kem_shared_secret is not None:
        parts.append(kem_shared_secret)
    return b"".join(parts)


def derive_shared_secret(key_material: bytes, info: bytes) -> bytes:
    """SK = HKDF(salt = 32 zero bytes, key_material, info), 32 bytes."""
    return hkdf_sha256(key_material, salt=bytes(HASH_BYTES), info=info, length=HASH_BYTES)


def initiate(own: DeviceSecrets, bundle: PrekeyBundle, *, kem: Kem | None = None, rng: Rng = system_rng) -> Initiated:
    """Start a session with the device behind `bundle`; hybrid when `kem` matches the bundle's KEM prekey.

    Raises `InvalidSignatureError` for a bundle whose certificate or prekey signatures do not verify.
    """
    bundle.verify()
    ephemeral = X25519KeyPair.generate(rng)
    kem_prekey = bundle.kem_prekey
    if kem is None or kem_prekey is None or kem_prekey.kem != kem.name:
        kem_prekey, encapsulation = None, None
    else:
        encapsulation = kem.encapsulate(kem_prekey.public_key)
    one_time = bundle.one_time_prekey
    material = initiator_key_material(
        own.dh_private_key,
        ephemeral.private_key,
        bundle.device.device_dh_key,
        bundle.signed_prekey.public_key,
        one_time.public_key if one_time else None,
        encapsulation.shared_secret if encapsulation else None,
    )
    header = InitialHeader(
        initiator=own.keys,
        ephemeral_key=ephemeral.public_key,
        signed_prekey_id=bundle.signed_prekey.key_id,
        one_time_prekey_id=one_time.key_id if one_time else None,
        kem=kem_prekey.kem if kem_prekey else "",
        kem_prekey_id=kem_prekey.key_id if kem_prekey else None,
        kem_ciphertext=encapsulation.ciphertext if encapsulation else b"",
    )
    return Initiated(
        shared_secret=derive_shared_secret(material, x3dh_info(header.kem)),
        associated_data=associated_data(own.keys, bundle.device),
        peer=bundle.device,
        header=header,
        peer_ratchet_key=bundle.signed_prekey.public_key,
    )


def respond(own: DeviceSecrets, header: InitialHeader, prekeys: PrekeySecrets) -> Responded:
    """Derive the initiator's secret from its header.

    Raises `InvalidSignatureError` when the initiator's certificate does not verify,
    `UnknownPrekeyError` when a named prekey is not held (e.g. a one-time prekey already used).
    """
    header.initiator.verify()
    signed = prekeys.signed_prekeys.get(header.signed_prekey_id)
    if signed is None:
        raise UnknownPrekeyError(f"no signed prekey {header.signed_prekey_id}")
    one_time = None
    if header.one_time_prekey_id is not None:
        one_time = prekeys.one_time_prekeys.get(header.one_time_prekey_id)
        if one_time is None:
            raise UnknownPrekeyError(f"no one-time prekey {header.one_time_prekey_id}")
    kem_secret = _decapsulate(header, prekeys) if header.kem else None
    material = responder_key_material(
        own.dh_private_key,
        signed.private_key,
        header.initiator.device_dh_key,
        header.ephemeral_key,
        one_time.private_key if one_time else None,
        kem_secret,
    )
    return Responded(
        shared_secret=derive_shared_secret(material, x3dh_info(header.kem)),
        associated_data=associated_data(header.initiator, own.keys),
        peer=header.initiator,
        header=header,
        ratchet_key_pair=signed,
    )


def _decapsulate(header: InitialHeader, prekeys: PrekeySecrets) -> bytes:
    if prekeys.kem is None or prekeys.kem.name != header.kem:
        raise KemUnavailableError(f"this device has no {header.kem!r} KEM")
    if header.kem_prekey_id is None:
        raise UnknownPrekeyError("a KEM is named but no KEM prekey")
    pair = prekeys.kem_prekeys.get(header.kem_prekey_id)
    if pair is None:
        raise UnknownPrekeyError(f"no KEM prekey {header.kem_prekey_id}")
    return prekeys.kem.decapsulate(pair.seed, header.kem_ciphertext)


def _optional_u32(value: int | None) -> bytes:
    return b"" if value is None else u32(value)


def _read_optional_u32(data: bytes) -> int | None:
    return None if not data else read_u32(data)
