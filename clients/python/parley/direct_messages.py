"""End-to-end encrypted direct messages: `client.message.send("user:<id>", …)` and their receipt.

A send seals the payload once per device: every device of the recipient
that the recipient's key vouches for, and this user's own other devices,
each on its ratchet session (started from the device's prekey bundle when
there is none). The sealed envelopes go through the outbox like any send;
the gateway keeps each in its device's mailbox until that device
acknowledges it, and says which active devices the send left out, which get
their envelope in a second command with the same message id.

Received envelopes are handled one at a time, in mailbox order: opened,
their sender checked against the session and the pinned key, handed to the
handlers, the key store saved, and then acknowledged, so a crash before the
save hands the message over again. An envelope that fails a check goes to
`on_rejected` handlers and is acknowledged; one from a user whose key
changed waits, unacknowledged, until `trust(user)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from parley.auth import Auth
from parley.crypto import x3dh
from parley.crypto.direct_envelope import DirectPlaintext
from parley.crypto.errors import CryptoError, ForgedSenderError, KeyChangedError, MalformedInputError
from parley.crypto.kem import Kem, MlKem768, ml_kem_768_available
from parley.crypto.primitives import constant_time_equal
from parley.crypto.safety_numbers import SafetyNumber
from parley.direct_sessions import Opened, Sessions
from parley.e2e_state import E2eState
from parley.errors import NotFoundError, ParleyError, UnavailableError, ValidationError
from parley.files import Media, read_media
from parley.gateway.v1 import gateway_pb2
from parley.handlers import call_handler
from parley.history.v1 import history_pb2
from parley.identity.v1 import identity_pb2
from parley.keystore import KeyStore
from parley.outbox import Send
from parley.prekeys import Prekeys
from parley.sender import Sender
from parley.trust import PeerKeys, Trust

log = logging.getLogger("parley.client")
# Rounds of "the send left out these devices" followed before giving up on them.
MAX_DEVICE_ROUNDS = 3
# Envelopes kept while no handler is subscribed (the mailbox keeps them all on the server).
UNSUBSCRIBED_BACKLOG = 1000
# After the identity service could not be asked about a sender.
RETRY_SECONDS = 2.0
# Envelopes from users whose key changed, by mailbox position, until `trust`.
_HELD = "held_envelopes"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MalformedInputError(f"the sealed payload is not JSON: {type(error).__name__}") from None


@dataclasses.dataclass(frozen=True)
class DirectMessage:
    """A decrypted direct message, its sender verified."""

    sender_user_id: str
    sender_device_id: str
    peer_user_id: str
    """The conversation's other user: the sender, or for a copy of your own message, its recipient."""
    message_id: str
    data: Any
    sent_at_ms: int
    """The sender's clock, in milliseconds since the Unix epoch."""
    missed_before: int
    """Earlier messages from this sender device that have not arrived (yet)."""
    media: Media | None = None
    """The file the message carries (`client.message.send_file`): fetch it with `client.files.get(media.file)`."""


@dataclasses.dataclass(frozen=True)
class RejectedEnvelope:
    """An envelope that did not open, or did not come from whom it says (see the error)."""

    seq: int
    sender_user_id: str
    sender_device_id: str
    message_id: str


@dataclasses.dataclass(frozen=True)
class DirectSent:
    """Where a direct message was stored: one envelope per device."""

    message_id: str
    device_ids: tuple[str, ...]
    unreachable_device_ids: tuple[str, ...]
    """Devices that could not get it: no prekeys published yet, or keys their user's key does not vouch for."""


DirectHandler = Callable[[DirectMessage], Awaitable[None] | None]
RejectedHandler = Callable[[RejectedEnvelope, CryptoError], Awaitable[None] | None]


@dataclasses.dataclass
class _Parts:
    state: E2eState
    trust: Trust
    prekeys: Prekeys
    sessions: Sessions
    own: x3dh.DeviceSecrets


class DirectMessages:
    def __init__(
        self,
        auth: Auth,
        sender: Sender,
        keystore_file: Path | None,
        keystore_passphrase: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._sender = sender
        self._keystore_file = keystore_file
        self._passphrase = keystore_passphrase
        self._clock = clock
        self._parts: _Parts | None = None
        self._starting = asyncio.Lock()
        self._handlers: list[DirectHandler] = []
        self._rejected_handlers: list[RejectedHandler] = []
        self._sealing: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._turns = _Turns()
        self._inbox: deque[history_pb2.SealedEnvelope] = deque()
        # Envelopes handed over while nobody listened that did not fit: acknowledgements stop below them.
        self._not_taken: set[int] = set()
        self._late: set[int] = set()
        self._handled_up_to = 0
        # Held envelopes handed back by `trust`, to handle although later ones were handled before.
        self._released: set[int] = set()
        self._acked_up_to = 0
        self._worker: asyncio.Task[None] | None = None

    # Sending

    async def send(self, user_id: str, data: Any, *, message_id: str | None = None) -> DirectSent:
        parts = await self.ready()
        message_id = message_id or secrets.token_hex(16)
        me = self._auth.identity
        body = json.dumps(data, separators=(",", ":")).encode()
        plaintext = DirectPlaintext(me.user_id, me.device_id, user_id, message_id, int(self._clock() * 1000), body)
        stored: list[str] = []
        unreachable: set[str] = set()
        only: set[str] | None = None
        for _ in range(MAX_DEVICE_ROUNDS):
            async with self._sealing[user_id]:  # sealed in the order sent
                targets, refused = await self._targets(parts, user_id, only)
                unreachable |= refused
                if only is not None:  # active, the gateway says, but not vouched for by the user's key
                    unreachable |= only - {device.device_id for _, device in targets}
                unreachable |= await self._start_sessions(parts, targets)
                envelopes = {
                    device.device_id: parts.sessions.seal(device.device_id, plaintext.to_bytes())
                    for _, device in targets
                    if device.device_id not in unreachable
                }
                turn = self._turns.take(user_id)
            if not envelopes:
                turn.done()
                break
            try:
                await parts.state.persist()  # a ratchet step is on disk before its message leaves (saves are shared)
                await turn.ready()  # and queued in the order sealed
                send = self._sender.send("", send_direct=_command(user_id, message_id, envelopes))
            finally:
                turn.done()
            missing, dropped = await self._deposit(parts, user_id, message_id, envelopes, send)
            unreachable |= dropped
            stored.extend(envelopes)
            only = set(missing) - set(stored) - unreachable
            if not only:
                break
            for user in {user_id, me.user_id}:
                parts.trust.forget(user)
        else:
            unreachable |= only or set()
        return DirectSent(message_id, tuple(stored), tuple(sorted(unreachable)))

    async def _targets(
        self, parts: _Parts, user_id: str, only: set[str] | None
    ) -> tuple[list[tuple[str, x3dh.DeviceKeys]], set[str]]:
        """(user, device) for the recipient's devices and our own other devices (`only` these, if given),
        and the devices the service lists that the users' keys do not vouch for."""
        me = self._auth.identity
        users = [user_id] if user_id == me.user_id else [user_id, me.user_id]
        targets: list[tuple[str, x3dh.DeviceKeys]] = []
        refused: set[str] = set()
        for user in users:
            peer = await parts.trust.peer(user)
            targets.extend((user, d) for d in peer.devices if d.device_id != me.device_id)
            refused.update(peer.rejected_device_ids)
        wanted = [t for t in targets if only is None or t[1].device_id in only]
        return wanted, {d for d in refused if only is None or d in only}

    async def _start_sessions(self, parts: _Parts, targets: list[tuple[str, x3dh.DeviceKeys]]) -> set[str]:
        """Sessions with every target that has none (or one with keys other than the vouched ones);
        returns the devices that have no prekeys or whose bundle does not check out."""
        wanted: dict[str, dict[str, x3dh.DeviceKeys]] = defaultdict(dict)
        for user, device in targets:
            session = parts.sessions.active(device.device_id)
            if session is not None and session.peer == device:
                continue
            if session is not None:
                parts.sessions.drop(device.device_id)
            wanted[user][device.device_id] = device
        unreachable: set[str] = set()
        for user, devices in wanted.items():
            request = identity_pb2.FetchPrekeyBundlesRequest(user_id=user, device_ids=sorted(devices))
            response = await self._auth.call(self._auth.identity_stub.FetchPrekeyBundles, request)
            unreachable |= set(response.devices_without_prekeys)
            for proto in response.bundles:
                bundle = _bundle(proto, devices.get(proto.device.device_id))
                try:
                    if bundle is None:
                        raise ForgedSenderError("the bundle's device keys are not the ones the user's key vouches for")
                    parts.sessions.start(bundle, user)
                except (CryptoError, ValueError) as error:
                    log.warning("a prekey bundle of %s's device %s is refused: %s", user, proto.device.device_id, error)
                    unreachable.add(proto.device.device_id)
            unreachable |= set(devices) - {b.device.device_id for b in response.bundles}
        return unreachable

    async def _deposit(
        self, parts: _Parts, user_id: str, message_id: str, envelopes: dict[str, bytes], send: Send
    ) -> tuple[list[str], set[str]]:
        """The devices the gateway says the send left out, and those it refused as no longer active (the rest
        are sent again without them; `envelopes` keeps what was stored)."""
        dropped: set[str] = set()
        while True:
            try:
                reply = await send
                return list(reply.direct.missing_device_ids), dropped
            except ValidationError as error:
                if error.field != "send_direct.envelopes" or "not an active device" not in error.message:
                    raise
            active = await self._active_devices(parts, user_id)
            for device_id in set(envelopes) - active:
                parts.sessions.drop(device_id)
                del envelopes[device_id]
                dropped.add(device_id)
            if not envelopes:
                return [], dropped
            send = self._sender.send("", send_direct=_command(user_id, message_id, envelopes))

    async def _active_devices(self, parts: _Parts, user_id: str) -> set[str]:
        me = self._auth.identity
        active: set[str] = set()
        for user in {user_id, me.user_id}:
            parts.trust.forget(user)
            active |= {d.device_id for d in (await parts.trust.peer(user)).devices}
        return active

    # Receiving

    async def subscribe(self, handler: DirectHandler) -> None:
        """Calls `handler(message)` for each direct message to this user (also copies of our own); messages
        held on an earlier run are looked at again (those whose sender is trusted by now are handed over)."""
        self._handlers.append(handler)
        parts = await self.ready()
        if len(self._handlers) == 1:
            self._release_held(parts, lambda sender: True)
        self._wake()

    def on_rejected(self, handler: RejectedHandler) -> None:
        self._rejected_handlers.append(handler)

    async def held(self) -> dict[str, int]:
        """How many messages wait for `trust`, by sender user id (kept in the key store across restarts)."""
        parts = await self.ready()
        counts: dict[str, int] = defaultdict(int)
        for name in parts.state.names(_HELD):
            counts[history_pb2.SealedEnvelope.FromString(parts.state.get(_HELD, name) or b"").sender_user_id] += 1
        return dict(counts)

    def received(self, frame: gateway_pb2.SealedEnvelopes) -> None:
        """Envelopes from the stream (a new stream hands over again what was not acknowledged)."""
        queued = {e.seq for e in self._inbox}
        fresh = [
            e
            for e in frame.envelopes
            if (e.seq > self._handled_up_to or e.seq in self._not_taken) and e.seq not in queued
        ]
        if not self._handlers:  # nobody listens yet: keep a bounded number; the rest come on a later stream
            room = max(0, UNSUBSCRIBED_BACKLOG - len(self._inbox))
            self._not_taken.update(e.seq for e in fresh[room:])
            fresh = fresh[:room]
        late = {e.seq for e in fresh} & self._not_taken
        self._late.update(late)  # left out before, handed over again: handled although later ones were
        self._not_taken -= late
        self._inbox.extend(fresh)
        self._wake(acknowledge=len(fresh) < len(frame.envelopes))

    def _wake(self, *, acknowledge: bool = False) -> None:
        """Starts the worker when there is work: envelopes to handle, or an acknowledgement a stream lost."""
        if not self._handlers or (self._worker is not None and not self._worker.done()):
            return
        if self._inbox or (acknowledge and self._ack_bound() > self._acked_up_to):
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            parts = await self.ready()
            while True:
                started = False
                while self._inbox:
                    envelope = self._inbox.popleft()
                    released = envelope.seq in self._released
                    if envelope.seq <= self._handled_up_to and not released and envelope.seq not in self._late:
                        continue  # handed over again by a new stream: handled already
                    if released:  # held before: handled now (and held again if its sender's key still differs)
                        self._released.discard(envelope.seq)
                        parts.state.delete(_HELD, str(envelope.seq))
                    try:
                        started |= await self._handle(parts, envelope)
                    except ParleyError as error:
                        if not error.retryable:
                            raise
                        self._inbox.appendleft(envelope)  # keeps its place
                        if released:
                            self._released.add(envelope.seq)
                            parts.state.put(_HELD, str(envelope.seq), envelope.SerializeToString())
                        log.warning("could not check a direct message's sender (%s); trying again shortly", error)
                        asyncio.get_running_loop().call_later(RETRY_SECONDS, self._wake)
                        return
                    self._handled_up_to = max(self._handled_up_to, envelope.seq)
                    self._late.discard(envelope.seq)
                await parts.state.persist()
                await self._acknowledge()
                if started:
                    await self._refill(parts)
                if not self._inbox:
                    return
        except Exception:
            log.exception("direct messages could not be handled; trying again shortly")
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._wake)

    async def _handle(self, parts: _Parts, envelope: history_pb2.SealedEnvelope) -> bool:
        """Opens, checks and hands over one envelope; True when it started a session (a prekey was used).

        An envelope from a user whose key changed is kept in the key store (and acknowledged with the rest)
        until `trust`; one that fails a check is reported and dropped.
        """
        try:
            opened = parts.sessions.open(envelope.sender_device_id, envelope.ciphertext, self._clock())
            plaintext = DirectPlaintext.from_bytes(opened.plaintext)
            data = _json(plaintext.body)
            await self._check_sender(parts, envelope, opened, plaintext)
            media = read_media(data, plaintext.sender_device_id)
        except KeyChangedError as error:
            parts.state.put(_HELD, str(envelope.seq), envelope.SerializeToString())
            self._reject(envelope, error)
            return False
        except CryptoError as error:
            self._reject(envelope, error)
            return False
        except ParleyError as error:
            if error.retryable:
                raise
            self._reject(envelope, CryptoError(f"the sender could not be checked: {error}"))
            return False
        parts.sessions.commit(opened, envelope.sender_user_id)
        me = self._auth.identity.user_id
        message = DirectMessage(
            sender_user_id=plaintext.sender_user_id,
            sender_device_id=plaintext.sender_device_id,
            peer_user_id=plaintext.sender_user_id if plaintext.sender_user_id != me else plaintext.peer_user_id,
            message_id=plaintext.message_id,
            data=data,
            sent_at_ms=plaintext.sent_at_ms,
            missed_before=opened.missed_before,
            media=media,
        )
        await asyncio.gather(*(call_handler(h, message) for h in self._handlers))
        return opened.started is not None

    async def _check_sender(
        self, parts: _Parts, envelope: history_pb2.SealedEnvelope, opened: Opened, plaintext: DirectPlaintext
    ) -> None:
        """The sealed sender must be the server's stamp and the session's peer, and the sender's pinned key must
        vouch for the session's device now (a revoked device, or one whose keys changed, is refused)."""
        me = self._auth.identity.user_id
        if (plaintext.sender_user_id, plaintext.sender_device_id, plaintext.message_id) != (
            envelope.sender_user_id,
            envelope.sender_device_id,
            envelope.message_id,
        ):
            raise ForgedSenderError("the sealed sender or message id differs from the envelope's")
        if plaintext.sender_user_id != me and plaintext.peer_user_id != me:
            raise ForgedSenderError("the message was sealed for another conversation")
        if opened.started is None and opened.session.peer_user_id != envelope.sender_user_id:
            raise ForgedSenderError("the session belongs to another user than the envelope's sender")
        device = opened.started.initiator if opened.started is not None else opened.session.peer
        try:
            peer = await parts.trust.peer(envelope.sender_user_id)
            if peer.device(envelope.sender_device_id) != device and opened.started is not None:
                peer = await parts.trust.peer(envelope.sender_user_id, refresh=True)  # maybe a device added since
        except NotFoundError:
            raise ForgedSenderError(f"the identity service knows no user {envelope.sender_user_id!r}") from None
        if not constant_time_equal(device.user_signing_key, peer.user_signing_key):
            raise ForgedSenderError("the session was started with another user key than the sender's")
        if peer.device(envelope.sender_device_id) != device:
            raise ForgedSenderError("the sender's user key does not vouch for this device (revoked, or other keys)")

    def _reject(self, envelope: history_pb2.SealedEnvelope, error: CryptoError) -> None:
        log.warning(
            "a direct message from %s/%s was rejected: %s", envelope.sender_user_id, envelope.sender_device_id, error
        )
        rejected = RejectedEnvelope(
            envelope.seq, envelope.sender_user_id, envelope.sender_device_id, envelope.message_id
        )
        for handler in self._rejected_handlers:
            asyncio.get_running_loop().create_task(call_handler(handler, rejected, error))

    def _ack_bound(self) -> int:
        """Everything up to here is handled (or kept aside): no envelope below it waits or was left out."""
        waiting = [e.seq for e in self._inbox if e.seq not in self._released] + [*self._not_taken, *self._late]
        return min([self._handled_up_to, *(seq - 1 for seq in waiting)])

    async def _acknowledge(self) -> None:
        up_to = self._ack_bound()
        if up_to <= self._acked_up_to:
            return
        with contextlib.suppress(UnavailableError):  # not connected: the next stream hands them over again
            await self._sender.command(wait=False, ack_direct=gateway_pb2.AckDirectCommand(up_to_seq=up_to))
            self._acked_up_to = up_to

    async def _refill(self, parts: _Parts) -> None:
        try:
            await parts.prekeys.publish()
        except ParleyError:
            log.warning("could not refill one-time prekeys; trying again after the next new session", exc_info=True)

    # Keys

    async def request_public_key(self, user_id: str) -> PeerKeys:
        parts = await self.ready()
        return await parts.trust.peer(user_id, refresh=True)

    async def safety_number(self, user_id: str, *, presented: bool = False) -> SafetyNumber:
        parts = await self.ready()
        me = self._auth.identity
        return await parts.trust.safety_number(
            me.user_id, parts.own.keys.user_signing_key, user_id, presented=presented
        )

    async def trust(self, user_id: str, compared: SafetyNumber | str | None = None) -> None:
        """Accepts the key the service presents for `user_id` now (if it gives the `compared` number, when
        given); messages held for it are handled."""
        parts = await self.ready()
        me = self._auth.identity.user_id
        await parts.trust.trust(user_id, (me, parts.own.keys.user_signing_key, str(compared)) if compared else None)
        self._release_held(parts, lambda sender: sender == user_id)
        self._wake()

    def _release_held(self, parts: _Parts, of_sender: Callable[[str], bool]) -> None:
        """Held envelopes go back to the front of the inbox, in mailbox order, to be handled again."""
        held = [
            history_pb2.SealedEnvelope.FromString(parts.state.get(_HELD, seq) or b"")
            for seq in parts.state.names(_HELD)
        ]
        queued = {e.seq for e in self._inbox}
        released = sorted((e for e in held if of_sender(e.sender_user_id) and e.seq not in queued), key=lambda e: e.seq)
        self._inbox.extendleft(reversed(released))
        self._released.update(e.seq for e in released)

    async def device_list_changed(self, *, added: str = "", revoked: str = "") -> None:
        """This user added or revoked a device: publish the signed list again (when this device holds the
        user key)."""
        parts = await self.ready()
        await parts.trust.publish_device_list(add=added, remove=revoked)

    async def ready(self) -> _Parts:
        """Opens the key store, pins our own key, publishes the device list and prekeys (once)."""
        if self._parts is not None:
            return self._parts
        async with self._starting:
            if self._parts is None:
                self._parts = await self._start()
        return self._parts

    async def _start(self) -> _Parts:
        identity = self._auth.identity
        if self._keystore_file is None:
            store = KeyStore.in_memory()
        else:
            store = await asyncio.to_thread(KeyStore.open, self._keystore_file, self._passphrase)
        state = E2eState(store)
        kem: Kem | None = MlKem768() if ml_kem_768_available() else None
        trust = Trust(self._auth, state)
        own_keys = await trust.own_device(identity.user_id, identity.device_id)
        own = x3dh.DeviceSecrets(own_keys, bytes(identity.device_dh_key))
        prekeys = Prekeys(self._auth, state, kem, self._clock)
        parts = _Parts(state, trust, prekeys, Sessions(lambda: own, state, prekeys, kem), own)
        await trust.publish_device_list()
        await prekeys.publish()
        return parts


def _command(user_id: str, message_id: str, envelopes: dict[str, bytes]) -> gateway_pb2.SendDirectCommand:
    return gateway_pb2.SendDirectCommand(
        recipient_user_id=user_id,
        message_id=message_id,
        envelopes=[gateway_pb2.DeviceCiphertext(device_id=d, ciphertext=c) for d, c in envelopes.items()],
    )


class _Turn:
    """One send's place in its recipient's queue: it goes out after the send sealed before it."""

    def __init__(self, previous: asyncio.Future[None] | None) -> None:
        self._previous = previous
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def ready(self) -> None:
        if self._previous is not None:
            await asyncio.shield(self._previous)

    def done(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


class _Turns:
    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[None]] = {}

    def take(self, key: str) -> _Turn:
        previous = self._last.get(key)
        turn = _Turn(previous if previous is not None and not previous.done() else None)
        self._last[key] = turn.finished
        turn.finished.add_done_callback(lambda done: self._last.pop(key) if self._last.get(key) is done else None)
        return turn


def _bundle(proto: identity_pb2.PrekeyBundle, vouched: x3dh.DeviceKeys | None) -> x3dh.PrekeyBundle | None:
    """The bundle, if its device keys are the ones the user's key vouches for."""
    if vouched is None:
        return None
    device = proto.device
    keys = x3dh.DeviceKeys(vouched.user_signing_key, device.signing_key, device.dh_key, device.certificate)
    if keys != vouched or not proto.HasField("signed_prekey"):
        return None
    spk = proto.signed_prekey
    otpk = proto.one_time_prekey if proto.HasField("one_time_prekey") else None
    kem = proto.kem_prekey if proto.HasField("kem_prekey") else None
    return x3dh.PrekeyBundle(
        device=keys,
        signed_prekey=x3dh.SignedPrekey(spk.key_id, spk.public_key, spk.signature),
        one_time_prekey=x3dh.OneTimePrekey(otpk.key_id, otpk.public_key) if otpk else None,
        kem_prekey=x3dh.KemPrekey(kem.kem, kem.key_id, kem.public_key, kem.signature) if kem else None,
    )
