"""A hypothesis state machine over a Double Ratchet session between two devices and an unreliable,
hostile network that drops, reorders, duplicates, replays and corrupts messages, and a device that
is saved and restored mid-session. Every message delivered decrypts exactly once, to its plaintext;
every other delivery is rejected without changing the receiver's state."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from parley.crypto.errors import CryptoError, DecryptionError
from parley.crypto.ratchet import DoubleRatchet
from tests.unit.test_crypto_x3dh import counter_rng, make_device, start_session

NOW = 1_000_000.0
PARTIES = ("alice", "bob")


@dataclass(frozen=True)
class Packet:
    message_id: int
    recipient: str
    plaintext: bytes
    wire: bytes


class UnreliableConversation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        rng = counter_rng(b"property")
        session = start_session(make_device(rng), make_device(rng), rng)
        self.parties: dict[str, DoubleRatchet] = {"alice": session.alice, "bob": session.bob}
        self.rng = rng
        self.network: list[Packet] = []
        self.sent: list[Packet] = []
        self.decrypted: dict[int, int] = {}

    # --- sending ---------------------------------------------------------------

    @rule(sender=st.sampled_from(PARTIES), text=st.binary(max_size=40))
    def send(self, sender: str, text: bytes) -> None:
        ratchet = self.parties[sender]
        if not ratchet.can_send:
            with pytest.raises(CryptoError, match="cannot send"):
                ratchet.encrypt(text)
            return
        message_id = len(self.sent)
        plaintext = message_id.to_bytes(4, "big") + text
        packet = Packet(message_id, "bob" if sender == "alice" else "alice", plaintext, ratchet.encrypt(plaintext))
        self.sent.append(packet)
        self.network.append(packet)

    # --- the network -------------------------------------------------------------

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver any packet in flight: delivery order is arbitrary."""
        packet = self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))
        receiver = self.parties[packet.recipient]
        if packet.message_id in self.decrypted:
            before = receiver.to_bytes()
            with pytest.raises(DecryptionError):
                receiver.decrypt(packet.wire, now=NOW)
            assert receiver.to_bytes() == before
            return
        assert receiver.decrypt(packet.wire, now=NOW) == packet.plaintext
        self.decrypted[packet.message_id] = self.decrypted.get(packet.message_id, 0) + 1

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        self.network.append(data.draw(st.sampled_from(self.network)))

    @precondition(lambda self: self.decrypted)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """An attacker re-sends a message that was already delivered."""
        message_id = data.draw(st.sampled_from(sorted(self.decrypted)))
        self.network.append(self.sent[message_id])

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def corrupt(self, data: st.DataObject) -> None:
        """A flipped bit anywhere is rejected and leaves the receiver unchanged; the original stays in flight."""
        packet = data.draw(st.sampled_from(self.network))
        bit = data.draw(st.integers(0, len(packet.wire) * 8 - 1))
        flipped = bytearray(packet.wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        receiver = self.parties[packet.recipient]
        before = receiver.to_bytes()
        with pytest.raises(CryptoError):
            receiver.decrypt(bytes(flipped), now=NOW)
        assert receiver.to_bytes() == before

    # --- devices -----------------------------------------------------------------

    @rule(party=st.sampled_from(PARTIES))
    def restart(self, party: str) -> None:
        """The device stores its state and loads it again (e.g. an app restart)."""
        self.parties[party] = DoubleRatchet.from_bytes(self.parties[party].to_bytes(), rng=self.rng)

    @invariant()
    def every_message_decrypted_at_most_once(self) -> None:
        assert all(count == 1 for count in self.decrypted.values())
        assert set(self.decrypted) <= {packet.message_id for packet in self.sent}


UnreliableConversation.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_unreliable_conversation = UnreliableConversation.TestCase
