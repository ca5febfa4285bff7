"""Whose keys to believe: pinned user keys, certified devices and signed device lists.

The identity service answers for a user's key; the first answer is pinned
(trust on first use) and a different one later raises `KeyChangedError`
until the user accepts it (`trust`) after comparing safety numbers. A
device counts only when its certificate verifies under the pinned user key
and, once the user has published a signed device list, when the newest list
seen names it; a list older than one seen before is refused
(`StaleDeviceListError`), so the service cannot bring back a removed device.
"""

from __future__ import annotations

import dataclasses
import time

from parley.auth import Auth
from parley.crypto import identity as proofs
from parley.crypto.errors import InvalidSignatureError, KeyChangedError, StaleDeviceListError
from parley.crypto.safety_numbers import KeyPinning, SafetyNumber, safety_number
from parley.crypto.x3dh import DeviceKeys
from parley.e2e_state import E2eState
from parley.errors import NotFoundError
from parley.identity.v1 import identity_pb2

_PINS = "pins"
_LISTS = "device_lists"
# The device list this device signed last (on a device holding the user key).
_OWN_LIST = "own_device_list"
# How long an answer about a user's keys and devices is used before asking again, in seconds.
PEER_MAX_AGE = 60.0


@dataclasses.dataclass(frozen=True)
class PeerKeys:
    """A user's pinned identity key and the devices it vouches for (`client.request_public_key`)."""

    user_id: str
    user_signing_key: bytes
    devices: tuple[DeviceKeys, ...]
    device_list_counter: int | None
    """The counter of the user's signed device list; None when they have published none."""
    rejected_device_ids: tuple[str, ...] = ()
    """Devices the service listed that the user's key does not vouch for (bad certificate, not in the list)."""

    def device(self, device_id: str) -> DeviceKeys | None:
        return next((d for d in self.devices if d.device_id == device_id), None)


class Trust:
    def __init__(self, auth: Auth, state: E2eState) -> None:
        self._auth = auth
        self._state = state
        self._pinning = KeyPinning(self)
        self._peers: dict[str, tuple[PeerKeys, float]] = {}

    # PinnedKeys, kept in the key store
    def pinned_user_key(self, user_id: str) -> bytes | None:
        return self._state.get(_PINS, user_id)

    def pin_user_key(self, user_id: str, user_signing_key: bytes) -> None:
        self._state.put(_PINS, user_id, user_signing_key)

    async def peer(self, user_id: str, *, refresh: bool = False) -> PeerKeys:
        """The user's pinned key and the devices it vouches for: asked again with `refresh`, or once the last
        answer is PEER_MAX_AGE old (so a revoked device or a changed key counts within that time)."""
        known = self._peers.get(user_id)
        if known is not None and not refresh and time.monotonic() - known[1] < PEER_MAX_AGE:
            return known[0]
        self.forget(user_id)  # whatever the answer now, keys known before no longer count
        user = await self._user(user_id)
        self._pinning.verify(user_id, user.user.signing_key)
        user_key = user.user.signing_key
        listed, counter = await self._device_list(user_id, user_key)
        devices: list[DeviceKeys] = []
        rejected: list[str] = []
        for device in user.devices:
            keys = DeviceKeys(user_key, device.signing_key, device.dh_key, device.certificate)
            try:
                keys.verify()
            except (InvalidSignatureError, ValueError):
                rejected.append(device.device_id)
                continue
            if keys.device_id != device.device_id or (listed is not None and keys.device_id not in listed):
                rejected.append(device.device_id)
                continue
            devices.append(keys)
        peer = PeerKeys(user_id, user_key, tuple(devices), counter, tuple(rejected))
        self._peers[user_id] = (peer, time.monotonic())
        await self._state.persist()
        return peer

    async def own_device(self, user_id: str, device_id: str) -> DeviceKeys:
        """This device's certified keys as the service holds them (the user's key pinned on first use)."""
        user = await self._user(user_id)
        self._pinning.verify(user_id, user.user.signing_key)
        device = next((d for d in user.devices if d.device_id == device_id), None)
        if device is None:
            raise InvalidSignatureError(f"the service does not list this device ({device_id}) as {user_id!r}'s")
        keys = DeviceKeys(user.user.signing_key, device.signing_key, device.dh_key, device.certificate)
        keys.verify()
        return keys

    def forget(self, user_id: str) -> None:
        """Ask the service again next time (its devices changed)."""
        self._peers.pop(user_id, None)

    async def presented_key(self, user_id: str) -> bytes:
        """The user key the identity service gives for the user now, pinned or not."""
        return (await self._user(user_id)).user.signing_key

    async def trust(self, user_id: str, compared: tuple[str, bytes, str] | None = None) -> bytes:
        """Pins the key the service presents now (after the user compared safety numbers); returns it.

        `compared` = (our user id, our user key, the digits compared): the key must still give them.
        """
        key = await self.presented_key(user_id)
        if compared is not None:
            own_user_id, own_key, digits = compared
            number = safety_number(own_user_id, own_key, user_id, key)
            if number.digits != "".join(digits.split()):
                pinned = self.pinned_user_key(user_id) or b""
                raise KeyChangedError(user_id, pinned, key)
        self._pinning.accept(user_id, key)
        self.forget(user_id)
        await self._state.persist()
        return key

    async def safety_number(
        self, own_user_id: str, own_user_key: bytes, user_id: str, *, presented: bool = False
    ) -> SafetyNumber:
        """The number for our key and the key pinned for `user_id` (pinned now on first use); with `presented`,
        for the key the service presents now instead (to compare before `trust` accepts a changed key)."""
        key = await self.presented_key(user_id)
        if not presented:
            pinned = self.pinned_user_key(user_id)
            if pinned is None:
                self.pin_user_key(user_id, key)
                await self._state.persist()
            else:
                key = pinned
        return safety_number(own_user_id, own_user_key, user_id, key)

    async def publish_device_list(self, *, add: str = "", remove: str = "") -> None:
        """Signs and publishes this user's device list, when this device holds the user key.

        The list is the one this device signed last, with `add` and `remove` applied: the service's word on
        which devices are active is taken only for the very first list (a new user's, or one upgraded from
        before lists), so a service cannot slip a revoked or foreign device back in. Without a change it
        publishes only when the service does not hold the list signed last.
        """
        identity = self._auth.identity
        if identity.user_signing_key is None:
            return
        user_id, own_key = identity.user_id, identity.user_public_key
        served = await self._served_list(user_id, own_key)
        kept = self._state.get_json(_OWN_LIST, user_id)
        if kept is not None:
            devices, counter = set(kept["devices"]), int(kept["counter"])
        elif served is not None:
            devices, counter = set(served.device_ids), served.counter
        else:
            stub = self._auth.identity_stub
            listed = await self._auth.call(stub.ListDevices, identity_pb2.ListDevicesRequest(user_id=user_id))
            devices, counter = {d.device_id for d in listed.devices}, 0
        wanted = (devices | ({add} if add else set())) - {remove}
        up_to_date = served is not None and set(served.device_ids) == wanted and served.counter >= counter
        if up_to_date and kept is not None:
            return
        if not up_to_date:
            counter = max(counter, served.counter if served is not None else 0, _stored_counter(self._state, user_id))
            content = identity_pb2.DeviceListContent(
                user_id=user_id, counter=counter + 1, device_ids=sorted(wanted), issue_time_ms=_now_ms()
            )
            serialized = content.SerializeToString()
            signature = identity.user_signing_key.sign(proofs.device_list_bytes(serialized)).signature
            signed = identity_pb2.SignedDeviceList(list=serialized, signature=signature)
            await self._auth.call(
                self._auth.identity_stub.PublishDeviceList, identity_pb2.PublishDeviceListRequest(device_list=signed)
            )
            counter += 1
        self._state.put_json(_OWN_LIST, user_id, {"devices": sorted(wanted), "counter": counter})
        self._state.put(_LISTS, user_id, str(counter).encode())
        self.forget(user_id)
        await self._state.persist()

    async def _served_list(self, user_id: str, own_key: bytes) -> identity_pb2.DeviceListContent | None:
        """The list the service holds for this user, if the user key signed it (None otherwise)."""
        try:
            response = await self._auth.call(
                self._auth.identity_stub.GetDeviceList, identity_pb2.GetDeviceListRequest(user_id=user_id)
            )
        except NotFoundError:
            return None
        signed = response.device_list
        if not proofs.verify_signature(own_key, proofs.device_list_bytes(signed.list), signed.signature):
            return None
        content = identity_pb2.DeviceListContent.FromString(signed.list)
        return content if content.user_id == user_id else None

    async def _user(self, user_id: str) -> identity_pb2.GetUserResponse:
        request = identity_pb2.GetUserRequest(user_id=user_id)
        return await self._auth.call(self._auth.identity_stub.GetUser, request)

    async def _device_list(self, user_id: str, user_key: bytes) -> tuple[set[str] | None, int | None]:
        """The device ids of the user's newest signed list and its counter; (None, None) if there is none."""
        try:
            response = await self._auth.call(
                self._auth.identity_stub.GetDeviceList, identity_pb2.GetDeviceListRequest(user_id=user_id)
            )
        except NotFoundError:
            if _stored_counter(self._state, user_id):
                raise StaleDeviceListError(f"{user_id!r} had a device list; the service has none now") from None
            return None, None
        signed = response.device_list
        if not proofs.verify_signature(user_key, proofs.device_list_bytes(signed.list), signed.signature):
            raise InvalidSignatureError(f"the device list of {user_id!r} is not signed by their user key")
        content = identity_pb2.DeviceListContent.FromString(signed.list)
        if content.user_id != user_id:
            raise InvalidSignatureError(f"the device list given for {user_id!r} is another user's")
        seen = _stored_counter(self._state, user_id)
        if content.counter < seen:
            raise StaleDeviceListError(
                f"the device list of {user_id!r} is older ({content.counter}) than one seen ({seen})"
            )
        self._state.put(_LISTS, user_id, str(content.counter).encode())
        return set(content.device_ids), content.counter


def _stored_counter(state: E2eState, user_id: str) -> int:
    stored = state.get(_LISTS, user_id)
    return int(stored) if stored is not None else 0


def _now_ms() -> int:
    return int(time.time() * 1000)
