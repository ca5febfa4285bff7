"""One channel's keys on this device: the verified commit chain, the epoch secrets it holds, counters, replays.

`sync()` reads the chain from the channel service and verifies every commit
from the first (so the roster and its admins are the clients' own
conclusion, not the server's word), then opens the wraps made for this
device. `seal` and `open` use the newest epoch this device holds, or the
message's. `commit(roster)` moves the channel to a new epoch with a fresh
secret for exactly the devices of `roster`. Everything is kept in the key
store (sections "channels" and "channel_counters").
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from parley.auth import Auth
from parley.crypto import group
from parley.crypto.encoding import b64, unb64
from parley.crypto.primitives import constant_time_equal
from parley.crypto.x3dh import DeviceKeys, DeviceSecrets
from parley.device_identity import DeviceIdentity
from parley.e2e_state import E2eState
from parley.errors import ParleyError
from parley.room.v1 import channel_pb2, channel_pb2_grpc

_CHANNELS = "channels"
# Commits made again when another one took the epoch first.
COMMIT_ATTEMPTS = 3
_COUNTERS = "channel_counters"


def member_device(keys: DeviceKeys) -> group.MemberDevice:
    return group.MemberDevice(keys.device_id, keys.device_signing_key, keys.device_dh_key, keys.certificate)


@dataclasses.dataclass
class _Held:
    """What this device holds of one channel: the epochs (saved when they change) and the counters and replay
    guards (saved with every message, apart, so a message does not rewrite every roster held)."""

    states: dict[int, group.ChannelState]
    secrets: dict[int, bytes]
    counters: dict[int, int]
    guard: group.ReplayGuard
    signal_guard: group.ReplayGuard

    def epochs_json(self) -> dict[str, Any]:
        return {
            "states": {str(e): b64(s.to_bytes()) for e, s in self.states.items()},
            "secrets": {str(e): b64(s) for e, s in self.secrets.items()},
        }

    def counters_json(self) -> dict[str, Any]:
        return {
            "counters": {str(e): n for e, n in self.counters.items()},
            "guard": self.guard.to_dict(),
            "signal_guard": self.signal_guard.to_dict(),
        }

    @classmethod
    def from_json(cls, epochs: dict[str, Any] | None, counters: dict[str, Any] | None) -> _Held:
        held = cls({}, {}, {}, group.ReplayGuard(), group.ReplayGuard())
        if epochs is not None:
            held.states = {int(e): group.ChannelState.from_bytes(unb64(s)) for e, s in epochs["states"].items()}
            held.secrets = {int(e): unb64(s) for e, s in epochs["secrets"].items()}
        if counters is not None:
            held.counters = {int(e): int(n) for e, n in counters["counters"].items()}
            held.guard = group.ReplayGuard.from_dict(counters["guard"])
            held.signal_guard = group.ReplayGuard.from_dict(counters["signal_guard"])
        return held


class ChannelKeys:
    def __init__(self, auth: Auth, state: E2eState, own: DeviceSecrets, space_id: str) -> None:
        self._auth = auth
        self._state = state
        self._own = own
        self.space_id = space_id
        self._held = _Held.from_json(state.get_json(_CHANNELS, space_id), state.get_json(_COUNTERS, space_id))
        # Keys derived once per epoch (the secrets do not change).
        self._derived: dict[int, group.EpochKeys] = {}
        self._syncing = asyncio.Lock()

    @property
    def _stub(self) -> channel_pb2_grpc.ChannelServiceAsyncStub:
        return channel_pb2_grpc.ChannelServiceStub(self._auth.channel())

    @property
    def _identity(self) -> DeviceIdentity:
        return self._auth.identity

    @property
    def latest(self) -> group.ChannelState | None:
        return self._held.states[max(self._held.states)] if self._held.states else None

    @property
    def roster(self) -> group.Roster:
        latest = self.latest
        if latest is None:
            raise group.UnknownEpochError(f"no epoch of {self.space_id} is known yet")
        return latest.roster

    @property
    def sealing_epoch(self) -> int | None:
        """The newest epoch whose secret this device holds: the one it seals in."""
        return max(self._held.secrets, default=None)

    def authenticator(self) -> bytes:
        """The current epoch's authenticator: every member device that holds the epoch derives the same."""
        epoch = self._newest_held()
        return self._keys(epoch).authenticator

    async def create(
        self, roster: group.Roster, name: str, history_policy: str, kind: int = channel_pb2.CHANNEL_KIND_E2E
    ) -> channel_pb2.Channel:
        """A new channel (a space when `name` is empty) for `roster`, this device's user its admin."""
        committed = group.commit_epoch(
            None,
            roster,
            channel_id=self.space_id,
            committer_device_id=self._own.keys.device_id,
            signing_key=self._identity.device_signing_key,
            admission="create",
            history_policy=history_policy,
        )
        request = channel_pb2.CreateChannelRequest(
            name=name,
            kind=channel_pb2.ChannelKind.ValueType(kind),
            commit=_signed_proto(committed.signed),
            wraps=_wrap_protos(committed.wraps),
        )
        response = await self._auth.call(self._stub.CreateChannel, request)
        self._keep(committed.epoch)
        await self._state.persist()
        return response.channel

    async def settled(self) -> None:
        """Returns once no sync is under way (a message sealed now uses what that sync found)."""
        async with self._syncing:
            return

    async def sync(self) -> None:
        """Verifies the commits this device has not seen and opens the wraps made for it (one sync at a time)."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        latest = self.latest
        first = self._first_missing()
        listed = await self._auth.call(
            self._stub.ListCommits, channel_pb2.ListCommitsRequest(space_id=self.space_id, from_epoch=first)
        )
        commits: dict[int, group.Commit] = {}
        for proto in listed.commits:
            signed = group.SignedCommit(proto.commit, proto.signature)
            commit = signed.commit()
            if commit.channel_id != self.space_id:
                raise group.BrokenChainError(
                    f"the service gave a commit of {commit.channel_id!r} for {self.space_id!r}"
                )
            held = self._held.states.get(commit.epoch)
            if held is None:
                held = group.verify_commit(self.latest, signed)
                self._held.states[held.epoch] = held
            elif not constant_time_equal(held.commit_hash, signed.commit_hash):
                raise group.BrokenChainError(f"the service now shows another commit for epoch {commit.epoch}")
            commits[commit.epoch] = commit
        if latest is not None and latest.epoch not in self._held.states:
            raise group.BrokenChainError("the chain the service shows does not continue the one held")
        wraps = await self._auth.call(
            self._stub.GetWraps, channel_pb2.GetWrapsRequest(space_id=self.space_id, from_epoch=first)
        )
        for wrap in wraps.wraps:
            self._open_wrap(wrap, commits)
        self._save()
        await self._state.persist()

    async def commit(
        self,
        change: Callable[[group.Roster], group.Roster],
        *,
        admission: str = "admin",
        prove: Callable[[group.ChannelState], bytes] | None = None,
    ) -> channel_pb2.Channel:
        """Moves the channel to a new epoch for the roster `change` makes of the latest one: as an admin's device,
        or with another admission (a guest's "invitation" with its proof, a member's new "device"). When another
        commit takes the epoch first, the change is made again on top of it (up to COMMIT_ATTEMPTS times)."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            await self.sync()
            async with self._syncing:  # no sync (of a commit notice) between reading the roster and keeping
                result = await self._commit_once(change, admission, prove)
            if result is not None:
                return result
            if attempt == COMMIT_ATTEMPTS:
                break
        raise ParleyError(grpc.StatusCode.ABORTED, "VALIDATION_FAILED", "other commits kept taking the epoch first")

    async def _commit_once(
        self,
        change: Callable[[group.Roster], group.Roster],
        admission: str,
        prove: Callable[[group.ChannelState], bytes] | None,
    ) -> channel_pb2.Channel | None:
        """One attempt: the channel after it, or None when another commit took the epoch first."""
        latest = self.latest
        committed = group.commit_epoch(
            latest,
            change(self.roster),
            channel_id=self.space_id,
            committer_device_id=self._own.keys.device_id,
            signing_key=self._identity.device_signing_key,
            admission=admission,
            history_policy=latest.history_policy if latest else group.MEMBERS_SINCE_JOIN,
            proof=prove(latest) if prove is not None and latest is not None else b"",
        )
        request = channel_pb2.CommitRequest(
            space_id=self.space_id, commit=_signed_proto(committed.signed), wraps=_wrap_protos(committed.wraps)
        )
        try:
            response = await self._auth.call(self._stub.Commit, request)
        except ParleyError as error:
            if error.code != grpc.StatusCode.ABORTED:
                raise
            return None
        self._keep(committed.epoch)
        await self._state.persist()
        return response.channel

    def member(self, user_id: str, user_key: bytes, devices: tuple[DeviceKeys, ...], role: str) -> group.Member:
        return group.Member(
            user_id, user_key, role, tuple(sorted((member_device(d) for d in devices), key=lambda d: d.device_id))
        )

    def seal(self, content_type: str, body: bytes, *, signal: bool = False) -> bytes:
        """`body` sealed with the newest epoch this device holds, signed by this device."""
        epoch = self._newest_held()
        counters = self._held.counters
        slot = epoch if not signal else -1 - epoch
        # A device whose key store was lost starts above what it sent before (so members do not take its
        # messages for replays): from the clock, 2**20 counters a second.
        counter = counters.get(slot, int(time.time()) << 20)
        counters[slot] = counter + 1
        seal = group.seal_group_signal if signal else group.seal_group_message
        sealed = seal(
            self._keys(epoch),
            self.space_id,
            epoch,
            member_device(self._own.keys),
            self._identity.device_signing_key,
            message_id=secrets.token_hex(16),
            content_type=content_type,
            counter=counter,
            plaintext=body,
        )
        self._save_counters()
        return sealed

    def open(self, data: bytes, *, signal: bool = False, replay_check: bool = True) -> group.OpenedGroupMessage:
        """Opens a message (or signal) of an epoch this device holds; `replay_check=False` for history reads."""
        epochs = {e: (self._held.states[e], self._keys(e)) for e in self._held.secrets}
        guard = (self._held.signal_guard if signal else self._held.guard) if replay_check else group.ReplayGuard()
        opened = (group.open_group_signal if signal else group.open_group_message)(epochs, data, guard)
        if replay_check:
            self._save_counters()
        return opened

    async def persist(self) -> None:
        """Counters and replay guards on disk: before a sealed message leaves, and once one has opened."""
        await self._state.persist()

    def holds_commit(self, commit_hash: bytes) -> bool:
        """Whether the verified chain held has a commit with this hash."""
        return any(constant_time_equal(s.commit_hash, commit_hash) for s in self._held.states.values())

    def knows_epoch(self, epoch: int) -> bool:
        return epoch in self._held.secrets

    def _open_wrap(self, wrap: channel_pb2.EpochWrap, commits: Mapping[int, group.Commit]) -> None:
        state = self._held.states.get(wrap.epoch)
        if state is None or wrap.epoch in self._held.secrets:
            return
        own_id = self._own.keys.device_id
        if wrap.signed_wrap:
            signed = group.SignedWrap.from_bytes(wrap.signed_wrap)
            latest = self.latest
            assert latest is not None
            sealed = group.verify_signed_wrap(latest, signed, state)
        else:
            commit = commits.get(wrap.epoch)
            if commit is None:
                return  # its commit was not read in this pass: the next sync reads both
            group.verify_own_wrap(commit, own_id, wrap.wrap, dict(wrap.digests))
            sealed = wrap.wrap
        secret = group.unwrap_epoch_secret(
            sealed, own_id, self._own.dh_private_key, state.channel_id, state.epoch, state.content_hash
        )
        self._held.secrets[state.epoch] = secret

    def _first_missing(self) -> int:
        """The first epoch to read again: the oldest one since this device joined whose secret it lacks, or the
        one after the newest commit held (0 for a channel not read yet)."""
        joined = min(self._held.secrets, default=0)
        lacking = [e for e in self._held.states if e >= joined and e not in self._held.secrets]
        return min(lacking, default=max(self._held.states, default=-1) + 1)

    def _newest_held(self) -> int:
        if not self._held.secrets:
            raise group.UnknownEpochError(f"this device holds no epoch of {self.space_id}")
        return max(self._held.secrets)

    def _keys(self, epoch: int) -> group.EpochKeys:
        keys = self._derived.get(epoch)
        if keys is None:
            state = self._held.states[epoch]
            keys = self._derived[epoch] = group.epoch_keys(
                self._held.secrets[epoch], self.space_id, epoch, state.commit_hash
            )
        return keys

    def _keep(self, epoch: group.Epoch) -> None:
        self._held.states[epoch.state.epoch] = epoch.state
        self._held.secrets[epoch.state.epoch] = epoch.secret
        self._save()

    def _save(self) -> None:
        self._state.put_json(_CHANNELS, self.space_id, self._held.epochs_json())
        self._save_counters()

    def _save_counters(self) -> None:
        self._state.put_json(_COUNTERS, self.space_id, self._held.counters_json())


def _signed_proto(signed: group.SignedCommit) -> channel_pb2.SignedCommit:
    return channel_pb2.SignedCommit(commit=signed.commit_bytes, signature=signed.signature)


def _wrap_protos(wraps: Mapping[str, bytes]) -> list[channel_pb2.DeviceWrap]:
    return [channel_pb2.DeviceWrap(device_id=d, wrap=w) for d, w in sorted(wraps.items())]
