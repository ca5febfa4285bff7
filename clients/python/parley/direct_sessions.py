"""Ratchet sessions with other devices, one conversation per device pair (Sesame, simplified).

Each peer device has a list of sessions, the active one first: a session
this device started (X3DH as initiator) or one the peer started. The
initiator puts its X3DH header on every message until it hears back, so the
peer can start the session from whichever arrives first. When both sides
start a session at once, both sessions stay usable; the one a message last
arrived on becomes the active one (as libsignal promotes a session), so the
pair settles on one session as soon as messages stop crossing. A received
message is tried on the sender device's sessions, newest first; `open`
changes nothing, and `commit` keeps the outcome once the caller has checked
who the sender is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from parley.crypto import x3dh
from parley.crypto.direct_envelope import DirectEnvelope
from parley.crypto.encoding import b64, unb64
from parley.crypto.errors import CryptoError, DuplicateMessageError, ForgedSenderError, NoSessionError
from parley.crypto.kem import Kem
from parley.crypto.ratchet import DoubleRatchet, RatchetConfig
from parley.e2e_state import E2eState
from parley.prekeys import Prekeys

# Sessions kept per peer device: older ones still open late messages.
MAX_SESSIONS_PER_DEVICE = 5
_SESSIONS = "sessions"


@dataclasses.dataclass
class Session:
    ratchet: DoubleRatchet
    base_key: bytes
    """The initiator's X3DH ephemeral key: names the session in its initial headers."""
    peer_user_id: str
    peer: x3dh.DeviceKeys
    initial_header: bytes
    """What this side, as initiator, sends with each message until the peer answers; empty after."""

    def to_json(self) -> dict[str, Any]:
        return {
            "ratchet": b64(self.ratchet.to_bytes()),
            "base_key": b64(self.base_key),
            "peer_user_id": self.peer_user_id,
            "peer": [
                b64(k)
                for k in (
                    self.peer.user_signing_key,
                    self.peer.device_signing_key,
                    self.peer.device_dh_key,
                    self.peer.certificate,
                )
            ],
            "initial_header": b64(self.initial_header),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], config: RatchetConfig) -> Session:
        user, signing, dh, certificate = (unb64(k) for k in data["peer"])
        return cls(
            ratchet=DoubleRatchet.from_bytes(unb64(data["ratchet"]), config=config),
            base_key=unb64(data["base_key"]),
            peer_user_id=data["peer_user_id"],
            peer=x3dh.DeviceKeys(user, signing, dh, certificate),
            initial_header=unb64(data["initial_header"]),
        )


@dataclasses.dataclass(frozen=True)
class Opened:
    """A decrypted message, not yet kept: `Sessions.commit` keeps the new session state."""

    plaintext: bytes
    sender_device_id: str
    session: Session
    trial: DoubleRatchet
    missed_before: int
    """Messages of this chain that have not arrived, skipped to open this one."""
    started: x3dh.InitialHeader | None
    """The header of the session this message started, if it started one."""


class Sessions:
    def __init__(
        self,
        own: Callable[[], x3dh.DeviceSecrets],
        state: E2eState,
        prekeys: Prekeys,
        kem: Kem | None,
        config: RatchetConfig | None = None,
    ) -> None:
        self._own = own
        self._state = state
        self._prekeys = prekeys
        self._kem = kem
        self._config = config or RatchetConfig()
        self._loaded: dict[str, list[Session]] = {}

    def active(self, device_id: str) -> Session | None:
        sessions = self._of(device_id)
        return sessions[0] if sessions else None

    def start(self, bundle: x3dh.PrekeyBundle, peer_user_id: str) -> Session:
        """A new session with the bundle's device (its signatures checked), active from now on."""
        own = self._own()
        initiated = x3dh.initiate(own, bundle, kem=self._kem)
        ratchet = DoubleRatchet.initiator(
            initiated.shared_secret,
            initiated.peer_ratchet_key,
            initiated.associated_data,
            local_device_id=own.keys.device_id,
            remote_device_id=bundle.device.device_id,
            config=self._config,
        )
        session = Session(
            ratchet, initiated.header.ephemeral_key, peer_user_id, bundle.device, initiated.header.to_bytes()
        )
        self._keep(bundle.device.device_id, session)
        return session

    def drop(self, device_id: str) -> None:
        """Forgets every session with a device (it is no longer the peer's, or its keys changed)."""
        self._loaded.pop(device_id, None)
        self._state.delete(_SESSIONS, device_id)

    def seal(self, device_id: str, plaintext: bytes) -> bytes:
        """The envelope of `plaintext` on the device's active session."""
        session = self.active(device_id)
        if session is None:
            raise NoSessionError(f"no session with device {device_id}")
        message = session.ratchet.encrypt(plaintext)
        self._save(device_id)
        return DirectEnvelope(session.initial_header, message).to_bytes()

    def open(self, sender_device_id: str, data: bytes, now: float) -> Opened:
        """Decrypts an envelope from `sender_device_id` without keeping anything (see `commit`)."""
        envelope = DirectEnvelope.from_bytes(data)
        sessions = self._of(sender_device_id)
        if envelope.initial_header:
            header = x3dh.InitialHeader.from_bytes(envelope.initial_header)
            if header.initiator.device_id != sender_device_id:
                raise ForgedSenderError("the initial header names another device than the envelope's sender")
            existing = next((s for s in sessions if s.base_key == header.ephemeral_key), None)
            if existing is not None:
                return self._try(existing, sender_device_id, envelope.message, now)
            return self._respond(header, sender_device_id, envelope.message, now)
        if not sessions:
            raise NoSessionError(f"no session with device {sender_device_id}")
        failures: list[CryptoError] = []
        for session in sessions:
            try:
                return self._try(session, sender_device_id, envelope.message, now)
            except CryptoError as error:
                failures.append(error)
        raise next((e for e in failures if isinstance(e, DuplicateMessageError)), failures[0])

    def commit(self, opened: Opened, sender_user_id: str) -> None:
        """Keeps what `open` found, once the sender is known to be `sender_user_id`: the session's new state,
        a new session, the used one-time prekey gone."""
        opened.session.ratchet = opened.trial
        opened.session.peer_user_id = sender_user_id
        if opened.started is not None:
            self._prekeys.used(opened.started)
        elif opened.session.initial_header:
            opened.session.initial_header = b""  # the peer answered: it has the session
        self._keep(opened.sender_device_id, opened.session)

    def _respond(self, header: x3dh.InitialHeader, sender_device_id: str, message: bytes, now: float) -> Opened:
        self._prekeys.check_fresh(header)
        own = self._own()
        responded = x3dh.respond(own, header, self._prekeys.secrets())
        ratchet = DoubleRatchet.responder(
            responded.shared_secret,
            responded.ratchet_key_pair,
            responded.associated_data,
            local_device_id=own.keys.device_id,
            remote_device_id=sender_device_id,
            config=self._config,
        )
        session = Session(ratchet, header.ephemeral_key, "", header.initiator, b"")
        opened = self._try(session, sender_device_id, message, now)
        return dataclasses.replace(opened, started=header)

    @staticmethod
    def _try(session: Session, sender_device_id: str, message: bytes, now: float) -> Opened:
        trial = session.ratchet.copy()
        plaintext = trial.decrypt(message, now=now)
        missed = max(0, trial.skipped_keys - session.ratchet.skipped_keys)
        return Opened(plaintext, sender_device_id, session, trial, missed, None)

    def _of(self, device_id: str) -> list[Session]:
        if device_id not in self._loaded:
            stored = self._state.get_json(_SESSIONS, device_id) or []
            self._loaded[device_id] = [Session.from_json(s, self._config) for s in stored]
        return self._loaded[device_id]

    def _keep(self, device_id: str, session: Session) -> None:
        sessions = [s for s in self._of(device_id) if s is not session]
        self._loaded[device_id] = [session, *sessions][:MAX_SESSIONS_PER_DEVICE]
        self._save(device_id)

    def _save(self, device_id: str) -> None:
        self._state.put_json(_SESSIONS, device_id, [s.to_json() for s in self._loaded[device_id]])
