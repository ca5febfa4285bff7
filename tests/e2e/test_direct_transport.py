"""Sealed direct messages through the gateway: kept in each device's mailbox until it acknowledges, handed over
when the device connects or at once when it is connected, in order, never to a stranger's device; on one
all-in-one server and across two gateways on NATS (issue 12 part 4, the transport; the sealing is the SDK's)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from tests.scale_out import ScaleOut, scale_out
from tests.streams import Stream, stream

pytestmark = pytest.mark.timeout(120)


def direct(recipient: str, message_id: str, **ciphertexts: bytes) -> gateway_pb2.SendDirectCommand:
    return gateway_pb2.SendDirectCommand(
        recipient_user_id=recipient,
        message_id=message_id,
        envelopes=[gateway_pb2.DeviceCiphertext(device_id=d, ciphertext=c) for d, c in ciphertexts.items()],
    )


async def sealed(s: Stream) -> list[tuple[str, bytes, int]]:
    frame = (await s.next_other("sealed", within=5)).sealed
    return [(e.message_id, e.ciphertext, e.seq) for e in frame.envelopes]


async def check_mailboxes(send_to: str, laptop_at: str, phone_at: str, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    async with (
        Client(send_to, username=f"ann{tag}", key_file=tmp_path / "a.json") as ann,
        Client(laptop_at, username=f"bob{tag}", key_file=tmp_path / "b.json") as bob,
    ):
        phone = await bob.add_device("phone")
        phone.save(tmp_path / "phone.json")
        async with Client(phone_at, key_file=tmp_path / "phone.json") as bob_phone:
            laptop_id, phone_id = bob.device_id, bob_phone.device_id
            async with stream(send_to, await ann.access_token()) as sender:
                first = direct(bob.user_id, "m1", **{laptop_id: b"for laptop 1", phone_id: b"for phone 1"})
                sent = await sender.ok(send_direct=first)
                assert len(sent.direct.seqs) == 2
                again = await sender.ok(send_direct=first)  # a retry: kept once, same positions
                assert list(again.direct.seqs) == list(sent.direct.seqs)
                await sender.ok(send_direct=direct(bob.user_id, "m2", **{laptop_id: b"for laptop 2"}))
                stranger = direct(bob.user_id, "m3", **{"d" + "0" * 32: b"?"})
                refused = await sender.command(send_direct=stranger)
                assert refused.status.reason == "VALIDATION_FAILED"
                assert "not an active device" in refused.status.message

                async with stream(laptop_at, await bob.access_token()) as laptop:
                    got = await sealed(laptop)
                    assert [(m, c) for m, c, _ in got] == [("m1", b"for laptop 1"), ("m2", b"for laptop 2")]
                    await laptop.ok(ack_direct=gateway_pb2.AckDirectCommand(up_to_seq=got[0][2]))
                async with stream(laptop_at, await bob.access_token()) as laptop:
                    assert [m for m, _, _ in await sealed(laptop)] == ["m2"], "acknowledged ones are gone"
                    await sender.ok(send_direct=direct(bob.user_id, "m4", **{laptop_id: b"live"}))
                    assert [m for m, _, _ in await sealed(laptop)] == ["m4"], "handed over at once when connected"
                async with stream(phone_at, await bob_phone.access_token()) as on_phone:
                    assert [(m, c) for m, c, _ in await sealed(on_phone)] == [("m1", b"for phone 1")]


async def test_mailboxes_on_one_server(server_address: str, tmp_path: Path) -> None:
    await check_mailboxes(server_address, server_address, server_address, tmp_path)


async def test_only_a_stream_may_send_and_sends_are_checked(server_address: str, tmp_path: Path) -> None:
    async with Client(server_address, username="cyd", key_file=tmp_path / "c.json") as cyd:
        async with stream(server_address, await cyd.access_token()) as s:
            for command, field in (
                (gateway_pb2.SendDirectCommand(message_id="x"), "recipient_user_id"),
                (direct(cyd.user_id, ""), "message_id"),
                (direct(cyd.user_id, "x"), "envelopes"),
                (direct(cyd.user_id, "x", **{cyd.device_id: b"to myself"}), "envelopes"),
            ):
                reply = await s.command(send_direct=command)
                assert reply.status.reason == "VALIDATION_FAILED", command
                assert field in reply.status.message


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    with scale_out(tmp_path_factory.mktemp("direct"), "") as up:
        yield up


async def test_mailboxes_across_gateways(cluster: ScaleOut, tmp_path: Path) -> None:
    await check_mailboxes(cluster.gateway(1), cluster.gateway(2), cluster.gateway(1), tmp_path)


async def test_own_other_devices_get_their_copy_and_each_connection_of_a_device_gets_it(
    server_address: str, tmp_path: Path
) -> None:
    async with (
        Client(server_address, username="eve", key_file=tmp_path / "e.json") as eve,
        Client(server_address, username="fin", key_file=tmp_path / "f.json") as fin,
    ):
        tablet = await eve.add_device("tablet")
        tablet.save(tmp_path / "tablet.json")
        async with Client(server_address, key_file=tmp_path / "tablet.json") as eve_tablet:
            async with stream(server_address, await eve.access_token()) as sender:
                copies = {fin.device_id: b"for fin", eve_tablet.device_id: b"eve's own copy"}
                await sender.ok(send_direct=direct(fin.user_id, "hello", **copies))
            token = await eve_tablet.access_token()
            async with stream(server_address, token) as first, stream(server_address, token) as second:
                for connection in (first, second):  # once per connection, until acknowledged
                    assert [(m, c) for m, c, _ in await sealed(connection)] == [("hello", b"eve's own copy")]
