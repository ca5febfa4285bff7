"""The bytes of a direct message for one device: what travels, and what it opens to.

An envelope is a Double Ratchet message, preceded by the X3DH initial
header for as long as the session's initiator has not heard back from the
peer (so the peer can start the session from any of those messages, in any
order). Its plaintext names the sending user and device, the conversation's
other user and the message id, so a receiver checks them against the
session and the server's stamp instead of trusting the stamp.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.crypto.encoding import labelled, read_labelled
from parley.crypto.errors import MalformedInputError

_ENVELOPE = "direct-envelope"
_PLAINTEXT = "direct-plaintext"


@dataclass(frozen=True)
class DirectEnvelope:
    initial_header: bytes
    """`x3dh.InitialHeader.to_bytes()`, or empty once the peer has answered."""
    message: bytes
    """`ratchet.RatchetMessage.to_bytes()`."""

    def to_bytes(self) -> bytes:
        return labelled(_ENVELOPE, self.initial_header, self.message)

    @classmethod
    def from_bytes(cls, data: bytes) -> DirectEnvelope:
        header, message = read_labelled(_ENVELOPE, data, 2)
        return cls(header, message)


@dataclass(frozen=True)
class DirectPlaintext:
    sender_user_id: str
    sender_device_id: str
    peer_user_id: str
    """The conversation's other user: the recipient, also in the copy for the sender's own devices."""
    message_id: str
    sent_at_ms: int
    body: bytes

    def to_bytes(self) -> bytes:
        return labelled(
            _PLAINTEXT,
            self.sender_user_id.encode(),
            self.sender_device_id.encode(),
            self.peer_user_id.encode(),
            self.message_id.encode(),
            self.sent_at_ms.to_bytes(8, "big"),
            self.body,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DirectPlaintext:
        user, device, peer, message_id, sent_at, body = read_labelled(_PLAINTEXT, data, 6)
        if len(sent_at) != 8:
            raise MalformedInputError("sent_at is 8 bytes")
        try:
            return cls(
                user.decode(), device.decode(), peer.decode(), message_id.decode(), int.from_bytes(sent_at, "big"), body
            )
        except UnicodeDecodeError as error:
            raise MalformedInputError(f"a direct message's ids are not UTF-8: {error}") from error
