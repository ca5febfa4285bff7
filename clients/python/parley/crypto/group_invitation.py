"""Invitation codes, auth codes, and the two values derived from them.

An invitation names its channel, its id, the hash of the admitter's key and
a random 32-byte secret; it travels as text ("pi1." + unpadded base64url of
its labelled bytes), and an 8-digit auth code travels separately. From
secret || auth code, HKDF (salt bound to the invite id) derives two
independent keys: the verifier key, whose HMAC over the invite id is what
the server stores and compares, and the package key, which seals the
package the inviter prepared. The server learns neither the secret nor the
package key from the verifier.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from parley.crypto.encoding import labelled, read_labelled, read_u32, u32
from parley.crypto.errors import MalformedInputError
from parley.crypto.group_encoding import read_text, text, u64
from parley.crypto.group_errors import InvalidInvitationError
from parley.crypto.primitives import (
    HASH_BYTES,
    Rng,
    blake2b_256,
    constant_time_equal,
    hkdf_sha256,
    hmac_sha256,
    open_sealed,
    seal,
    system_rng,
)

INVITATION_PREFIX = "pi1."
INVITATION_SECRET_BYTES = 32
AUTH_CODE_DIGITS = 8
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_AUTH_CODE = re.compile(rf"[0-9]{{{AUTH_CODE_DIGITS}}}")
_AUTH_CODES = 10**AUTH_CODE_DIGITS
# The largest multiple of 10**8 below 2**32: draws at or above it are redrawn, so every code is equally likely.
_AUTH_CODE_DRAW_LIMIT = (2**32 // _AUTH_CODES) * _AUTH_CODES


@dataclass(frozen=True)
class Invitation:
    channel_id: str
    invite_id: str
    admitter_key_hash: bytes
    """`admitter_key_hash(key)` of the admitter's signing key, which the package must come from."""
    secret: bytes = field(repr=False)
    chain_hash: bytes = bytes(HASH_BYTES)
    """The commit hash of the channel's epoch when the invitation was made: the guest finds it in the chain,
    so a server cannot lead it into a channel of its own making under the same id."""

    def __post_init__(self) -> None:
        if len(self.admitter_key_hash) != HASH_BYTES:
            raise InvalidInvitationError(f"an admitter key hash is {HASH_BYTES} bytes")
        if len(self.secret) != INVITATION_SECRET_BYTES:
            raise InvalidInvitationError(f"an invitation secret is {INVITATION_SECRET_BYTES} bytes")
        if len(self.chain_hash) != HASH_BYTES:
            raise InvalidInvitationError(f"a chain hash is {HASH_BYTES} bytes")

    @classmethod
    def generate(
        cls,
        channel_id: str,
        invite_id: str,
        admitter_key_hash: bytes,
        rng: Rng = system_rng,
        chain_hash: bytes = bytes(HASH_BYTES),
    ) -> Invitation:
        return cls(channel_id, invite_id, admitter_key_hash, rng(INVITATION_SECRET_BYTES), chain_hash)

    def to_bytes(self) -> bytes:
        return labelled(
            "group-invitation",
            text(self.channel_id),
            text(self.invite_id),
            self.admitter_key_hash,
            self.secret,
            self.chain_hash,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Invitation:
        channel, invite_id, key_hash, secret, chain_hash = read_labelled("group-invitation", data, 5)
        return cls(read_text(channel), read_text(invite_id), key_hash, secret, chain_hash)

    def to_text(self) -> str:
        return INVITATION_PREFIX + base64.urlsafe_b64encode(self.to_bytes()).rstrip(b"=").decode()

    @classmethod
    def from_text(cls, code: str) -> Invitation:
        """The invitation of a code made by `to_text` (surrounding whitespace ignored)."""
        code = code.strip()
        body = code.removeprefix(INVITATION_PREFIX)
        if body == code or not _BASE64URL.fullmatch(body) or len(body) % 4 == 1:
            raise InvalidInvitationError(f"not a Parley invitation code (it starts {INVITATION_PREFIX!r})")
        try:
            invitation = cls.from_bytes(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except MalformedInputError as error:
            raise InvalidInvitationError(f"invitation code does not hold an invitation: {error}") from error
        if invitation.to_text() != code:
            raise InvalidInvitationError("invitation code is not in canonical form")
        return invitation


def admitter_key_hash(signing_key: bytes) -> bytes:
    return blake2b_256(labelled("group-admitter-key", signing_key))


def auth_code(rng: Rng = system_rng) -> str:
    """8 uniformly random decimal digits."""
    while True:
        draw = int.from_bytes(rng(4), "big")
        if draw < _AUTH_CODE_DRAW_LIMIT:
            return f"{draw % _AUTH_CODES:0{AUTH_CODE_DIGITS}d}"


def invitation_verifier(secret: bytes, code: str, invite_id: str) -> bytes:
    """What the server stores for an invitation and compares a redeeming guest's value with."""
    key = _derive(secret, code, invite_id, "verifier")
    return hmac_sha256(key, labelled("group-invitation-verifier", text(invite_id)))


def verifier_matches(stored: bytes, presented: bytes) -> bool:
    return constant_time_equal(stored, presented)


def package_key(secret: bytes, code: str, invite_id: str) -> bytes:
    """The key of the package the inviter prepares; independent of the verifier."""
    return _derive(secret, code, invite_id, "package")


def seal_invitation_package(invitation: Invitation, code: str, package: bytes, rng: Rng = system_rng) -> bytes:
    key = package_key(invitation.secret, code, invitation.invite_id)
    return seal(key, package, _package_ad(invitation), rng)


def open_invitation_package(invitation: Invitation, code: str, sealed: bytes) -> bytes:
    """The package; `DecryptionError` for a wrong code, another invitation or an altered package."""
    key = package_key(invitation.secret, code, invitation.invite_id)
    return open_sealed(key, sealed, _package_ad(invitation))


def _derive(secret: bytes, code: str, invite_id: str, purpose: str) -> bytes:
    if not _AUTH_CODE.fullmatch(code):
        raise InvalidInvitationError(f"an auth code is {AUTH_CODE_DIGITS} digits")
    if len(secret) != INVITATION_SECRET_BYTES:
        raise InvalidInvitationError(f"an invitation secret is {INVITATION_SECRET_BYTES} bytes")
    return hkdf_sha256(
        secret + code.encode(),
        salt=blake2b_256(labelled("group-invitation-salt", text(invite_id))),
        info=f"parley/v1/group-invitation {purpose}".encode(),
        length=HASH_BYTES,
    )


def _package_ad(invitation: Invitation) -> bytes:
    return labelled(
        "group-invitation-package-ad",
        text(invitation.channel_id),
        text(invitation.invite_id),
        invitation.admitter_key_hash,
    )


@dataclass(frozen=True)
class InvitationTicket:
    """What an admin's device signs when it invites: the channel, the invitation, how many guests it admits,
    and the public half of a key derived from the invitation's secret.

    The inviter seals the signed ticket into the invitation's package. A guest admits itself with a commit
    whose proof holds the ticket and a signature, by that derived key, over the guest's user id and the
    place in the chain it joins at: every member can check that an admin invited someone who knew the
    secret, for this place only, without the secret ever leaving the guest.
    """

    channel_id: str
    invite_id: str
    guest_key: bytes
    uses: int
    """How many guests it may admit: members refuse a commit that would admit one more."""

    def to_bytes(self) -> bytes:
        return labelled(
            "group-invitation-ticket", text(self.channel_id), text(self.invite_id), self.guest_key, u32(self.uses)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InvitationTicket:
        channel, invite_id, guest_key, uses = read_labelled("group-invitation-ticket", data, 4)
        return cls(read_text(channel), read_text(invite_id), guest_key, read_u32(uses))

    @classmethod
    def of(cls, invitation: Invitation, uses: int) -> InvitationTicket:
        key = _guest_signing_key(invitation.secret, invitation.invite_id).verify_key.encode()
        return cls(invitation.channel_id, invitation.invite_id, key, uses)


@dataclass(frozen=True)
class SignedTicket:
    ticket: bytes
    signer_device_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        return labelled("group-signed-ticket", self.ticket, text(self.signer_device_id), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedTicket:
        ticket, signer, signature = read_labelled("group-signed-ticket", data, 3)
        return cls(ticket, read_text(signer), signature)


def sign_ticket(invitation: Invitation, uses: int, signer_device_id: str, signing_key: SigningKey) -> SignedTicket:
    ticket = InvitationTicket.of(invitation, uses).to_bytes()
    return SignedTicket(ticket, signer_device_id, signing_key.sign(ticket).signature)


def guest_use_bytes(channel_id: str, epoch: int, previous_hash: bytes, guest_user_id: str) -> bytes:
    """What a guest signs with the invitation's derived key: who joins, where in the chain."""
    return labelled("group-invitation-use", text(channel_id), u64(epoch), previous_hash, text(guest_user_id))


def invitation_proof(
    signed: SignedTicket, invitation: Invitation, epoch: int, previous_hash: bytes, guest_user_id: str
) -> bytes:
    """A guest's commit proof for the commit with `epoch` after the one whose hash is `previous_hash`."""
    key = _guest_signing_key(invitation.secret, invitation.invite_id)
    use = guest_use_bytes(invitation.channel_id, epoch, previous_hash, guest_user_id)
    return labelled("group-invitation-proof", signed.to_bytes(), key.sign(use).signature)


def read_invitation_proof(proof: bytes) -> tuple[SignedTicket, InvitationTicket, bytes]:
    """(signed ticket, ticket, the guest's signature) of a proof; `InvalidInvitationError` if it does not parse."""
    try:
        signed_bytes, guest_signature = read_labelled("group-invitation-proof", proof, 2)
        signed = SignedTicket.from_bytes(signed_bytes)
        ticket = InvitationTicket.from_bytes(signed.ticket)
    except MalformedInputError as error:
        raise InvalidInvitationError(f"not an invitation proof: {error}") from error
    return signed, ticket, guest_signature


def _guest_signing_key(secret: bytes, invite_id: str) -> SigningKey:
    seed = hkdf_sha256(
        secret,
        salt=blake2b_256(labelled("group-invitation-salt", text(invite_id))),
        info=b"parley/v1/group-invitation guest key",
        length=HASH_BYTES,
    )
    return SigningKey(seed)
