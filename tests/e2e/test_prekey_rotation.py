"""A device's prekeys over time (issue 12 part 1, the client side): published on first use, the signed prekey
rotated after SIGNED_PREKEY_ROTATION with the old private key kept for SIGNED_PREKEY_GRACE, so a session started
just before a rotation still opens; one-time prekeys refilled when few are left."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley import Client
from parley import prekeys as rules
from parley.crypto.direct_envelope import DirectPlaintext
from parley.crypto.x3dh import DeviceSecrets
from parley.direct_messages import _bundle
from parley.direct_sessions import Sessions
from parley.e2e_state import E2eState
from parley.identity.v1 import identity_pb2
from parley.keystore import KeyStore
from parley.prekeys import Prekeys
from parley.trust import Trust
from tests.support import FakeClock

pytestmark = pytest.mark.timeout(60)


async def count(client: Client) -> identity_pb2.CountPrekeysResponse:
    metadata = [("authorization", f"Bearer {await client.access_token()}")]
    return await client.identity_stub.CountPrekeys(identity_pb2.CountPrekeysRequest(), metadata=metadata)


async def device_secrets(client: Client, state: E2eState) -> DeviceSecrets:
    keys = await Trust(client._auth, state).own_device(client.user_id, client.device_id)
    return DeviceSecrets(keys, bytes(client.identity.device_dh_key))


async def test_rotation_keeps_the_old_signed_prekey_for_the_grace_period(server_address: str, tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    async with (
        Client(server_address, username="rita", key_file=tmp_path / "r.json") as rita,
        Client(server_address, username="sam", key_file=tmp_path / "s.json") as sam,
    ):
        rita_state = E2eState(KeyStore.in_memory())
        rita_prekeys = Prekeys(rita._auth, rita_state, None, clock)
        assert await rita_prekeys.publish() == rules.ONE_TIME_PREKEYS
        first_signed = set(rita_prekeys.secrets().signed_prekeys)
        assert len(first_signed) == 1

        # sam fetches rita's bundle now and starts a session; his first message arrives after a rotation
        sam_state = E2eState(KeyStore.in_memory())
        sam_sessions = Sessions(
            lambda: own,
            sam_state,
            Prekeys(sam._auth, sam_state, None),
            None,  # sam only sends here
        )
        own = await device_secrets(sam, sam_state)
        rita_keys = await Trust(sam._auth, sam_state).peer(rita.user_id)
        bundles = await sam.identity_stub.FetchPrekeyBundles(
            identity_pb2.FetchPrekeyBundlesRequest(user_id=rita.user_id),
            metadata=[("authorization", f"Bearer {await sam.access_token()}")],
        )
        bundle = _bundle(bundles.bundles[0], rita_keys.devices[0])
        assert bundle is not None
        sam_sessions.start(bundle, rita.user_id)
        plaintext = DirectPlaintext(sam.user_id, sam.device_id, rita.user_id, "m1", 0, b'"late"')
        envelope = sam_sessions.seal(rita.device_id, plaintext.to_bytes())

        clock.advance(rules.SIGNED_PREKEY_ROTATION - 60)
        await rita_prekeys.publish()
        assert set(rita_prekeys.secrets().signed_prekeys) == first_signed, "not due yet"
        clock.advance(120)
        await rita_prekeys.publish()
        assert len(rita_prekeys.secrets().signed_prekeys) == 2, "rotated; the old one kept"
        assert (await count(rita)).signed_prekey_upload_time.seconds > 0

        rita_sessions = Sessions(lambda: rita_own, rita_state, rita_prekeys, None)
        rita_own = await device_secrets(rita, rita_state)
        opened = rita_sessions.open(sam.device_id, envelope, clock())
        assert DirectPlaintext.from_bytes(opened.plaintext).body == b'"late"'

        clock.advance(rules.SIGNED_PREKEY_GRACE + 60)
        await rita_prekeys.publish()  # the next rotation; the first key's grace is over
        assert first_signed.isdisjoint(rita_prekeys.secrets().signed_prekeys)


async def test_one_time_prekeys_are_refilled_when_few_are_left(
    server_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small numbers: fetches are rate limited per caller and target (10 a minute)
    monkeypatch.setattr(rules, "ONE_TIME_PREKEYS", 10)
    monkeypatch.setattr(rules, "REFILL_BELOW", 3)
    async with Client(server_address, username="tom", key_file=tmp_path / "t.json") as tom:
        prekeys = Prekeys(tom._auth, E2eState(KeyStore.in_memory()), None)
        assert await prekeys.publish() == rules.ONE_TIME_PREKEYS
        assert await prekeys.publish() == rules.ONE_TIME_PREKEYS, "nothing to do: no second upload"
        async with Client(server_address, username="uma", key_file=tmp_path / "u.json") as uma:
            metadata = [("authorization", f"Bearer {await uma.access_token()}")]
            for _ in range(rules.ONE_TIME_PREKEYS - rules.REFILL_BELOW + 1):
                await uma.identity_stub.FetchPrekeyBundles(
                    identity_pb2.FetchPrekeyBundlesRequest(user_id=tom.user_id), metadata=metadata
                )
        assert (await count(tom)).one_time_prekeys == rules.REFILL_BELOW - 1
        assert await prekeys.publish() == rules.ONE_TIME_PREKEYS
        assert len(prekeys.secrets().one_time_prekeys) == rules.ONE_TIME_PREKEYS + rules.ONE_TIME_PREKEYS - (
            rules.REFILL_BELOW - 1
        ), "the handed-out keys' private halves wait for their first message"
