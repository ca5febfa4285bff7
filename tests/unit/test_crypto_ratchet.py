"""The Double Ratchet (parley.crypto.ratchet) in scenarios: the KDFs and AD as specified, out-of-order
delivery within and across DH steps, the MAX_SKIP boundary, the cap and expiry of skipped keys,
duplicates and a replayed first message rejected, failed decrypts leaving the state unchanged, bit
flips, state serialised mid-session, and a golden transcript from a deterministic RNG."""

from __future__ import annotations

import json

import pytest

from parley.crypto.encoding import labelled
from parley.crypto.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageError,
    TooManySkippedMessagesError,
    UnknownPrekeyError,
)
from parley.crypto.primitives import blake2b_256, hkdf_sha256, hmac_sha256, open_sealed, x25519
from parley.crypto.ratchet import (
    ROOT_INFO,
    DoubleRatchet,
    MessageHeader,
    RatchetConfig,
    RatchetMessage,
    RatchetState,
)
from parley.crypto.x3dh import initiate, respond
from tests.unit.test_crypto_x3dh import Device, Session, counter_rng, make_device, start_session

NOW = 1_000_000.0


@pytest.fixture
def alice() -> Device:
    return make_device(counter_rng(b"alice"))


@pytest.fixture
def bob() -> Device:
    return make_device(counter_rng(b"bob"))


@pytest.fixture
def session(alice: Device, bob: Device) -> Session:
    return start_session(alice, bob, counter_rng(b"session"))


def send(sender: DoubleRatchet, count: int, prefix: str) -> list[bytes]:
    return [sender.encrypt(f"{prefix}{i}".encode()) for i in range(count)]


def receive(receiver: DoubleRatchet, message: bytes) -> str:
    return receiver.decrypt(message, now=NOW).decode()


# --- the specified KDFs and AD -------------------------------------------------------


def test_kdfs_and_associated_data_are_as_specified(alice: Device, bob: Device) -> None:
    initiated = initiate(alice.secrets, bob.bundle(1), rng=counter_rng(b"x3dh"))
    ratchet = DoubleRatchet.initiator(
        initiated.shared_secret,
        initiated.peer_ratchet_key,
        initiated.associated_data,
        local_device_id="dA",
        remote_device_id="dB",
    )
    state = ratchet.snapshot()
    # KDF_RK: HKDF(salt = root key, ikm = DH output, info), split into root key || chain key.
    dh = x25519(state.own_ratchet_key.private_key, bob.signed_prekey.public_key)
    derived = hkdf_sha256(dh, salt=initiated.shared_secret, info=ROOT_INFO, length=64)
    assert (state.root_key, state.sending_chain_key) == (derived[:32], derived[32:])

    message = RatchetMessage.from_bytes(ratchet.encrypt(b"hi"))
    assert message.header == MessageHeader(state.own_ratchet_key.public_key, 0, 0)
    # KDF_CK: message key = HMAC(chain key, 0x01), next chain key = HMAC(chain key, 0x02).
    assert state.sending_chain_key is not None
    message_key = hmac_sha256(state.sending_chain_key, b"\x01")
    assert ratchet.snapshot().sending_chain_key == hmac_sha256(state.sending_chain_key, b"\x02")
    ad = labelled("ratchet-message-ad", initiated.associated_data, message.header.to_bytes(), b"dA", b"dB")
    assert open_sealed(message_key, message.sealed, ad) == b"hi"


def test_libsignal_style_info_label_is_a_parameter(alice: Device, bob: Device) -> None:
    config = RatchetConfig(root_info=b"WhisperRatchet")
    pair = start_session(alice, bob, counter_rng(b"s"), config=config)
    assert receive(pair.bob, pair.alice.encrypt(b"x")) == "x"
    default = start_session(alice, bob, counter_rng(b"s"))
    assert pair.alice.snapshot().root_key != default.alice.snapshot().root_key


# --- ordinary and out-of-order delivery ---------------------------------------------


def test_a_conversation_in_both_directions(session: Session) -> None:
    with pytest.raises(CryptoError, match="cannot send"):
        session.bob.encrypt(b"too early")
    for round_ in range(3):
        for message in send(session.alice, 2, f"a{round_}."):
            assert receive(session.bob, message).startswith(f"a{round_}.")
        for message in send(session.bob, 3, f"b{round_}."):
            assert receive(session.alice, message).startswith(f"b{round_}.")


def test_out_of_order_within_a_chain(session: Session) -> None:
    messages = send(session.alice, 5, "m")
    for index in [3, 0, 4, 1, 2]:
        assert receive(session.bob, messages[index]) == f"m{index}"
    assert session.bob.snapshot().skipped == {}


def test_out_of_order_across_dh_steps(session: Session) -> None:
    first_chain = send(session.alice, 3, "a")
    assert receive(session.bob, first_chain[0]) == "a0"
    reply = send(session.bob, 2, "b")
    assert receive(session.alice, reply[1]) == "b1"  # Alice steps her DH ratchet
    second_chain = send(session.alice, 3, "c")
    assert RatchetMessage.from_bytes(second_chain[0]).header.previous_chain_length == 3
    # Bob gets the new chain first: a1 and a2 (old chain) and c0, c1 (new chain) become skipped keys.
    assert receive(session.bob, second_chain[2]) == "c2"
    assert len(session.bob.snapshot().skipped) == 4
    for message, text in [(first_chain[2], "a2"), (second_chain[0], "c0"), (first_chain[1], "a1")]:
        assert receive(session.bob, message) == text
    assert receive(session.alice, reply[0]) == "b0"
    assert receive(session.bob, second_chain[1]) == "c1"
    assert session.bob.snapshot().skipped == {}
    assert session.alice.snapshot().skipped == {}


# --- bounds on skipped keys ----------------------------------------------------------


def test_max_skip_boundary(session: Session) -> None:
    assert RatchetConfig().max_skip == 1000
    messages = send(session.alice, 1002, "m")
    before = session.bob.to_bytes()
    with pytest.raises(TooManySkippedMessagesError):
        session.bob.decrypt(messages[1001], now=NOW)  # would skip 1001 keys
    assert session.bob.to_bytes() == before
    assert receive(session.bob, messages[1000]) == "m1000"  # skips exactly 1000
    assert len(session.bob.snapshot().skipped) == 1000
    assert receive(session.bob, messages[1001]) == "m1001"
    for index in range(1000):
        assert receive(session.bob, messages[index]) == f"m{index}"


def test_max_skip_applies_to_the_previous_chain_too(session: Session) -> None:
    config = RatchetConfig(max_skip=5)
    alice = DoubleRatchet(session.alice.snapshot(), config=config)
    bob = DoubleRatchet(session.bob.snapshot(), config=config)
    old_chain = send(alice, 7, "a")
    assert receive(bob, old_chain[0]) == "a0"
    assert receive(alice, bob.encrypt(b"b0")) == "b0"
    new_chain = alice.encrypt(b"c0")  # says the previous chain had 7 messages: 6 to skip
    with pytest.raises(TooManySkippedMessagesError):
        bob.decrypt(new_chain, now=NOW)
    assert receive(bob, old_chain[6]) == "a6"  # the old chain is now fully received
    assert receive(bob, new_chain) == "c0"


def test_at_most_2000_skipped_keys_oldest_evicted_first(session: Session) -> None:
    assert RatchetConfig().max_skipped_keys == 2000
    chains = []
    for round_ in range(3):
        chain = send(session.alice, 1001, f"r{round_}.")
        assert receive(session.bob, chain[1000]) == f"r{round_}.1000"
        assert receive(session.alice, session.bob.encrypt(b"ack")) == "ack"
        chains.append(chain)
        assert len(session.bob.snapshot().skipped) == min(1000 * (round_ + 1), 2000)
    # The first chain's keys were evicted; the two later chains' keys remain.
    with pytest.raises(DecryptionError):
        session.bob.decrypt(chains[0][0], now=NOW)
    assert receive(session.bob, chains[1][0]) == "r1.0"
    assert receive(session.bob, chains[2][999]) == "r2.999"


def test_skipped_keys_expire(session: Session) -> None:
    lifetime = 3600.0
    bob = DoubleRatchet(session.bob.snapshot(), config=RatchetConfig(skipped_key_lifetime=lifetime))
    messages = send(session.alice, 4, "m")
    assert bob.decrypt(messages[3], now=NOW).decode() == "m3"
    assert bob.decrypt(messages[0], now=NOW + lifetime).decode() == "m0"  # still within its lifetime
    with pytest.raises(DuplicateMessageError):
        bob.decrypt(messages[1], now=NOW + lifetime + 1)
    assert bob.snapshot().skipped == {}


# --- rejection leaves the state as it was ----------------------------------------------


def test_duplicates_are_rejected(session: Session) -> None:
    messages = send(session.alice, 3, "m")
    assert receive(session.bob, messages[2]) == "m2"
    assert receive(session.bob, messages[0]) == "m0"
    for message in [messages[2], messages[0]]:
        before = session.bob.to_bytes()
        with pytest.raises(DuplicateMessageError):
            session.bob.decrypt(message, now=NOW)
        assert session.bob.to_bytes() == before
    assert receive(session.bob, messages[1]) == "m1"


def test_a_message_from_an_earlier_chain_is_rejected_after_its_chain_moved_on(session: Session) -> None:
    old = session.alice.encrypt(b"a0")
    assert receive(session.bob, old) == "a0"
    assert receive(session.alice, session.bob.encrypt(b"b0")) == "b0"
    assert receive(session.bob, session.alice.encrypt(b"a1")) == "a1"
    before = session.bob.to_bytes()
    with pytest.raises(DecryptionError):
        session.bob.decrypt(old, now=NOW)
    assert session.bob.to_bytes() == before


def test_a_failed_decrypt_leaves_the_state_unchanged(session: Session) -> None:
    messages = send(session.alice, 3, "m")
    assert receive(session.bob, messages[0]) == "m0"
    forger = start_session(make_device(counter_rng(b"mallory")), make_device(counter_rng(b"x")), counter_rng(b"f"))
    forged = [
        forger.alice.encrypt(b"forged"),  # a new ratchet key: Bob tries a DH step on a copy
        RatchetMessage(RatchetMessage.from_bytes(messages[2]).header, b"\x00" * 60).to_bytes(),
    ]
    for message in forged:
        before = session.bob.to_bytes()
        with pytest.raises(DecryptionError):
            session.bob.decrypt(message, now=NOW)
        assert session.bob.to_bytes() == before
    assert receive(session.bob, messages[2]) == "m2"
    assert receive(session.bob, messages[1]) == "m1"


def test_every_bit_flip_is_rejected(session: Session) -> None:
    assert receive(session.bob, session.alice.encrypt(b"first")) == "first"
    message = session.alice.encrypt(b"attack at dawn")
    before = session.bob.to_bytes()
    for bit in range(len(message) * 8):
        flipped = bytearray(message)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CryptoError):
            session.bob.decrypt(bytes(flipped), now=NOW)
    assert session.bob.to_bytes() == before
    assert receive(session.bob, message) == "attack at dawn"


def test_messages_are_bound_to_the_device_pair(session: Session) -> None:
    message = session.alice.encrypt(b"for bob's phone")
    state = session.bob.snapshot().to_dict()
    state["local_device_id"] = "d-other"
    elsewhere = DoubleRatchet(RatchetState.from_dict(state))
    with pytest.raises(DecryptionError):
        elsewhere.decrypt(message, now=NOW)
    assert receive(session.bob, message) == "for bob's phone"


def test_a_replayed_first_message_is_rejected(alice: Device, bob: Device) -> None:
    rng = counter_rng(b"replay")
    initiated = initiate(alice.secrets, bob.bundle(1), rng=rng)
    alice_ratchet = DoubleRatchet.initiator(
        initiated.shared_secret,
        initiated.peer_ratchet_key,
        initiated.associated_data,
        local_device_id=alice.keys.device_id,
        remote_device_id=bob.keys.device_id,
        rng=rng,
    )
    first = (initiated.header, alice_ratchet.encrypt(b"hello bob"))

    responded = respond(bob.secrets, first[0], bob.prekey_secrets())
    bob_ratchet = DoubleRatchet.responder(
        responded.shared_secret,
        responded.ratchet_key_pair,
        responded.associated_data,
        local_device_id=bob.keys.device_id,
        remote_device_id=alice.keys.device_id,
        rng=rng,
    )
    assert receive(bob_ratchet, first[1]) == "hello bob"
    bob.used_one_time_prekeys.add(1)  # the caller deletes the one-time prekey once the first message decrypts

    # Replayed into the session it started: a duplicate.
    with pytest.raises(DuplicateMessageError):
        bob_ratchet.decrypt(first[1], now=NOW)
    # Replayed as a new session: its one-time prekey is gone.
    with pytest.raises(UnknownPrekeyError):
        respond(bob.secrets, first[0], bob.prekey_secrets())


# --- serialisation --------------------------------------------------------------------


def test_state_survives_serialisation_mid_session(session: Session) -> None:
    messages = send(session.alice, 4, "m")
    assert receive(session.bob, messages[3]) == "m3"  # three skipped keys pending
    rng = counter_rng(b"restored")
    bob = DoubleRatchet.from_bytes(session.bob.to_bytes(), rng=rng)
    alice = DoubleRatchet(RatchetState.from_dict(json.loads(json.dumps(session.alice.snapshot().to_dict()))))
    assert bob.snapshot() == session.bob.snapshot()
    assert [receive(bob, messages[i]) for i in (1, 0, 2)] == ["m1", "m0", "m2"]
    assert receive(alice, bob.encrypt(b"reply")) == "reply"
    assert receive(bob, alice.encrypt(b"again")) == "again"


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b'{"version": 2}', b'{"version": 1}', b'{"version": 1, "root_key": 5}']
)
def test_malformed_state_is_refused(data: bytes) -> None:
    with pytest.raises(CryptoError):
        DoubleRatchet.from_bytes(data)


# --- golden transcript -------------------------------------------------------------------

GOLDEN_TRANSCRIPT = "c64ac4dc128e972acd3f05873d4c5937501bd49a95631ac51b07f6c75818e2be"


def test_golden_transcript_from_a_deterministic_rng() -> None:
    alice, bob = make_device(counter_rng(b"golden alice")), make_device(counter_rng(b"golden bob"))
    pair = start_session(alice, bob, counter_rng(b"golden session"))
    wire = [pair.header.to_bytes()]
    for round_ in range(3):
        wire.append(pair.alice.encrypt(f"alice {round_}".encode()))
        assert receive(pair.bob, wire[-1]) == f"alice {round_}"
        wire.append(pair.bob.encrypt(f"bob {round_}".encode()))
        assert receive(pair.alice, wire[-1]) == f"bob {round_}"
    assert blake2b_256(labelled("test-transcript", *wire)).hex() == GOLDEN_TRANSCRIPT
