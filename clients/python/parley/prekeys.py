"""This device's prekeys: published so others can start sessions while it is offline, kept until used.

`publish()` brings the identity service up to date: a signed prekey (and an
ML-KEM-768 prekey when the KEM is available) rotated every
SIGNED_PREKEY_ROTATION, and one-time prekeys refilled to ONE_TIME_PREKEYS
when fewer than REFILL_BELOW are left. Private keys are saved before their
public halves are uploaded. A rotated-out signed or KEM prekey is kept for
SIGNED_PREKEY_GRACE, so sessions started against it just before still open;
a one-time prekey is deleted once the first message of its session decrypts
(`used`), or after ONE_TIME_PREKEY_LIFETIME if that message never comes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from parley.auth import Auth
from parley.crypto import identity as proofs
from parley.crypto.encoding import b64, unb64
from parley.crypto.errors import DuplicateMessageError
from parley.crypto.kem import Kem, KemKeyPair
from parley.crypto.primitives import X25519KeyPair
from parley.crypto.x3dh import InitialHeader, PrekeySecrets
from parley.device_identity import DeviceIdentity
from parley.e2e_state import E2eState
from parley.identity.v1 import identity_pb2

ONE_TIME_PREKEYS = 100
REFILL_BELOW = 25
SIGNED_PREKEY_ROTATION = 7 * 86_400.0
SIGNED_PREKEY_GRACE = 30 * 86_400.0
ONE_TIME_PREKEY_LIFETIME = 90 * 86_400.0

_SIGNED = "signed_prekeys"
_ONE_TIME = "one_time_prekeys"
_KEM = "kem_prekeys"
_META = "meta"
# Initiators' ephemeral keys of sessions started with us -> the signed prekey they used.
_ANSWERED = "answered_initial_messages"


class Prekeys:
    def __init__(
        self,
        auth: Auth,
        state: E2eState,
        kem: Kem | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._state = state
        self._kem = kem
        self._clock = clock

    @property
    def _identity(self) -> DeviceIdentity:
        return self._auth.identity

    async def publish(self) -> int:
        """Rotates and refills as needed; returns how many one-time prekeys the service holds now."""
        stub = self._auth.identity_stub
        count = await self._auth.call(stub.CountPrekeys, identity_pb2.CountPrekeysRequest())
        now = self._clock()
        request = identity_pb2.UploadPrekeysRequest()
        current = self._current(_SIGNED)
        if (
            current is None
            or not count.HasField("signed_prekey_upload_time")
            or now - current[1] > (SIGNED_PREKEY_ROTATION)
        ):
            request.signed_prekey.CopyFrom(self._new_signed_prekey(now))
            if self._kem is not None:
                request.kem_prekey.CopyFrom(self._new_kem_prekey(self._kem, now))
        held = count.one_time_prekeys
        if held < REFILL_BELOW:
            request.one_time_prekeys.extend(self._new_one_time_prekeys(ONE_TIME_PREKEYS - held, now))
        self._forget_old(now)
        if request.ByteSize() == 0:
            await self._state.persist()
            return held
        await self._state.persist()  # private halves on disk before the public ones are handed out
        response = await self._auth.call(stub.UploadPrekeys, request)
        return response.one_time_prekeys

    def secrets(self) -> PrekeySecrets:
        """Every private prekey still held, for answering an initial message."""
        signed = {
            int(key_id): X25519KeyPair.from_private_key(unb64(self._state.get_json(_SIGNED, key_id)["private"]))
            for key_id in self._state.names(_SIGNED)
        }
        one_time = {
            int(key_id): X25519KeyPair.from_private_key(unb64(self._state.get_json(_ONE_TIME, key_id)["private"]))
            for key_id in self._state.names(_ONE_TIME)
        }
        kem_pairs: dict[int, KemKeyPair] = {}
        if self._kem is not None:
            for key_id in self._state.names(_KEM):
                record = self._state.get_json(_KEM, key_id)
                seed = unb64(record["seed"])
                kem_pairs[int(key_id)] = KemKeyPair(seed=seed, public_key=unb64(record["public"]))
        return PrekeySecrets(signed, one_time, kem_pairs, self._kem)

    def check_fresh(self, header: InitialHeader) -> None:
        """`DuplicateMessageError` for the header of a session started before (a replayed first message,
        also one without a one-time prekey, after that session was dropped)."""
        if self._state.get(_ANSWERED, b64(header.ephemeral_key)) is not None:
            raise DuplicateMessageError("a session was started with this initial message before (a replay)")

    def used(self, header: InitialHeader) -> None:
        """The first message of a session started with `header` decrypted: its one-time prekey goes, and the
        header is remembered (until its signed prekey goes) so that it never starts a session again."""
        if header.one_time_prekey_id is not None:
            self._state.delete(_ONE_TIME, str(header.one_time_prekey_id))
        self._state.put(_ANSWERED, b64(header.ephemeral_key), str(header.signed_prekey_id).encode())

    def _current(self, section: str) -> tuple[int, float] | None:
        """The newest key of a section: (key id, created at)."""
        newest: tuple[int, float] | None = None
        for key_id in self._state.names(section):
            created = float(self._state.get_json(section, key_id)["created"])
            if newest is None or created >= newest[1]:
                newest = (int(key_id), created)
        return newest

    def _next_key_id(self) -> int:
        """Key ids count up from a random start, so a device whose key store was lost picks fresh ones."""
        stored = self._state.get(_META, "next_key_id")
        key_id = int(stored) if stored is not None else secrets.randbelow(2**30) + 1
        self._state.put(_META, "next_key_id", str(key_id + 1).encode())
        return key_id

    def _new_signed_prekey(self, now: float) -> identity_pb2.SignedPrekey:
        pair = X25519KeyPair.generate()
        key_id = self._next_key_id()
        self._state.put_json(_SIGNED, str(key_id), {"private": b64(pair.private_key), "created": now})
        message = proofs.signed_prekey_bytes(key_id, pair.public_key)
        signature = self._identity.device_signing_key.sign(message).signature
        return identity_pb2.SignedPrekey(key_id=key_id, public_key=pair.public_key, signature=signature)

    def _new_kem_prekey(self, kem: Kem, now: float) -> identity_pb2.KemPrekey:
        pair = kem.generate()
        key_id = self._next_key_id()
        record = {"seed": b64(pair.seed), "public": b64(pair.public_key), "created": now}
        self._state.put_json(_KEM, str(key_id), record)
        message = proofs.kem_prekey_bytes(kem.name, key_id, pair.public_key)
        signature = self._identity.device_signing_key.sign(message).signature
        return identity_pb2.KemPrekey(key_id=key_id, kem=kem.name, public_key=pair.public_key, signature=signature)

    def _new_one_time_prekeys(self, how_many: int, now: float) -> list[identity_pb2.OneTimePrekey]:
        keys = []
        for _ in range(how_many):
            pair = X25519KeyPair.generate()
            key_id = self._next_key_id()
            self._state.put_json(_ONE_TIME, str(key_id), {"private": b64(pair.private_key), "created": now})
            keys.append(identity_pb2.OneTimePrekey(key_id=key_id, public_key=pair.public_key))
        return keys

    def _forget_old(self, now: float) -> None:
        for section in (_SIGNED, _KEM):
            current = self._current(section)
            for key_id in self._state.names(section):
                if current is not None and int(key_id) == current[0]:
                    continue
                if now - self._retired_at(section, key_id) > SIGNED_PREKEY_GRACE:
                    self._state.delete(section, key_id)
                    if section == _SIGNED:  # no session can start with it any more: nothing to remember
                        for base in self._state.names(_ANSWERED):
                            if self._state.get(_ANSWERED, base) == key_id.encode():
                                self._state.delete(_ANSWERED, base)
        for key_id in self._state.names(_ONE_TIME):
            if now - float(self._state.get_json(_ONE_TIME, key_id)["created"]) > ONE_TIME_PREKEY_LIFETIME:
                self._state.delete(_ONE_TIME, key_id)

    def _retired_at(self, section: str, key_id: str) -> float:
        """When a key stopped being the newest: when the next one was made."""
        created = float(self._state.get_json(section, key_id)["created"])
        later: list[float] = [
            float(self._state.get_json(section, other)["created"])
            for other in self._state.names(section)
            if float(self._state.get_json(section, other)["created"]) > created
        ]
        return min(later, default=created)
