"""The mailbox RPCs' limits: envelope size, a full mailbox refused, pages that fit one message (issue 12)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.history.v1 import history_pb2
from services.history import mailboxes as limits
from services.history.mailbox_storage import open_mailbox_storage
from services.history.mailboxes import Mailboxes
from services.runtime.config import HistoryConfig
from services.runtime.errors import ServiceError
from tests.support import make_config


@pytest.fixture
async def mailboxes(tmp_path: Path) -> AsyncIterator[Mailboxes]:
    box = Mailboxes(await open_mailbox_storage(make_config(tmp_path)), HistoryConfig())
    try:
        yield box
    finally:
        await box.close()


def deposit(*ciphertexts: bytes, device: str = "dphone") -> history_pb2.DepositEnvelopesRequest:
    return history_pb2.DepositEnvelopesRequest(
        envelopes=[
            history_pb2.SealedEnvelope(
                device_id=device, sender_user_id="u1", sender_device_id="d1", message_id=f"m{n}", ciphertext=c
            )
            for n, c in enumerate(ciphertexts)
        ]
    )


async def test_an_envelope_over_the_size_limit_is_refused(mailboxes: Mailboxes) -> None:
    with pytest.raises(ServiceError) as big:
        await mailboxes.deposit(deposit(b"x" * (limits.MAX_ENVELOPE_BYTES + 1)))
    assert big.value.metadata["field"] == "envelopes[0].ciphertext"


async def test_a_full_mailbox_refuses_more_until_acknowledged(
    mailboxes: Mailboxes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_HELD_PER_DEVICE", 3)
    stored = await mailboxes.deposit(deposit(b"a", b"b", b"c"))
    with pytest.raises(ServiceError) as full:
        await mailboxes.deposit(deposit(b"d"))
    assert full.value.reason == "QUOTA_EXCEEDED"
    await mailboxes.ack(history_pb2.AckEnvelopesRequest(device_id="dphone", up_to_seq=stored.seqs[-1]))
    await mailboxes.deposit(deposit(b"d"))


async def test_a_page_of_the_largest_envelopes_fits_one_message(mailboxes: Mailboxes) -> None:
    await mailboxes.deposit(deposit(*(bytes([n]) * limits.MAX_ENVELOPE_BYTES for n in range(100))))
    page = await mailboxes.list(history_pb2.ListEnvelopesRequest(device_id="dphone", page_size=limits.MAX_PAGE))
    assert len(page.envelopes) == limits.MAX_PAGE
    assert page.ByteSize() < 4 * 1024 * 1024
    assert len((await mailboxes.list(history_pb2.ListEnvelopesRequest(device_id="dphone"))).envelopes) == 16
