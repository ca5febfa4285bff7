"""Properties of sealed group channels (parley.crypto.group*): commits, states and messages decode
to what was encoded; a message with any bit flipped is refused; the replay guard accepts a
(device, epoch, counter) at most once, and every first delivery inside its window, under any
delivery order and across save and restore."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.crypto.errors import CryptoError
from parley.crypto.group import (
    ADMISSIONS,
    HISTORY_POLICIES,
    ROLES,
    ChannelState,
    Commit,
    GroupMessageHeader,
    Member,
    MemberDevice,
    ReplayedGroupMessageError,
    ReplayGuard,
    Roster,
    SignedCommit,
    open_group_message,
    seal_group_message,
)
from parley.crypto.group_encoding import U64_MAX
from tests.unit.test_crypto_group import CHANNEL, make_channel

CHANNEL_WITH_MEMBERS = make_channel(b"property")
ids = st.text(max_size=12)
u64s = st.integers(min_value=0, max_value=U64_MAX)


@st.composite
def rosters(draw: st.DrawFn) -> Roster:
    user_ids = draw(st.lists(ids, unique=True, max_size=4))
    device_ids = iter(draw(st.lists(ids, unique=True, min_size=3 * len(user_ids), max_size=3 * len(user_ids))))
    members = []
    for user_id in user_ids:
        devices = tuple(
            MemberDevice(next(device_ids), draw(st.binary(max_size=32)), draw(st.binary(max_size=32)), b"c" * 64)
            for _ in range(draw(st.integers(0, 3)))
        )
        members.append(Member(user_id, draw(st.binary(max_size=32)), draw(st.sampled_from(sorted(ROLES))), devices))
    return Roster(tuple(draw(st.permutations(members))))


commits = st.builds(
    Commit,
    channel_id=ids,
    epoch=u64s,
    previous_hash=st.binary(max_size=32),
    roster=rosters(),
    history_policy=st.sampled_from(sorted(HISTORY_POLICIES)),
    committer_device_id=ids,
    admission=st.sampled_from(sorted(ADMISSIONS)),
    proof=st.binary(max_size=16),
    wraps_hash=st.binary(max_size=32),
)


@settings(max_examples=100, deadline=None)
@given(commit=commits, signature=st.binary(max_size=64))
def test_commits_signed_commits_and_states_decode_to_what_was_encoded(commit: Commit, signature: bytes) -> None:
    assert Commit.from_bytes(commit.to_bytes()) == commit
    assert Roster.from_bytes(commit.roster.to_bytes()) == commit.roster
    signed = SignedCommit(commit.to_bytes(), signature)
    assert SignedCommit.from_bytes(signed.to_bytes()) == signed
    assert signed.commit() == commit
    state = ChannelState(
        commit.channel_id, commit.epoch, commit.roster, signed.commit_hash, commit.content_hash(), commit.history_policy
    )
    assert ChannelState.from_bytes(state.to_bytes()) == state


@settings(max_examples=100, deadline=None)
@given(message_id=ids, content_type=ids, counter=u64s, plaintext=st.binary(max_size=64))
def test_messages_open_to_what_was_sealed(message_id: str, content_type: str, counter: int, plaintext: bytes) -> None:
    channel = CHANNEL_WITH_MEMBERS
    sender = channel.devices["carol-phone"]
    data = seal_group_message(
        channel.epoch.keys,
        CHANNEL,
        channel.state.epoch,
        sender.entry,
        sender.signing_key,
        message_id=message_id,
        content_type=content_type,
        counter=counter,
        plaintext=plaintext,
        rng=channel.rng,
    )
    opened = open_group_message(channel.held(), data, ReplayGuard())
    assert (opened.message_id, opened.content_type, opened.counter, opened.plaintext) == (
        message_id,
        content_type,
        counter,
        plaintext,
    )
    assert (opened.sender_device_id, opened.sender_user_id, opened.epoch) == (sender.device_id, "carol", 1)
    header = GroupMessageHeader(CHANNEL, 1, sender.device_id, message_id, content_type, counter)
    assert GroupMessageHeader.from_bytes(header.to_bytes()) == header


MESSAGE = CHANNEL_WITH_MEMBERS.seal("bob-phone", b"a message worth forging", counter=7)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(MESSAGE) - 1), bit=st.integers(0, 7))
def test_a_message_with_any_bit_flipped_is_refused(index: int, bit: int) -> None:
    flipped = bytearray(MESSAGE)
    flipped[index] ^= 1 << bit
    guard = ReplayGuard()
    with pytest.raises(CryptoError):
        open_group_message(CHANNEL_WITH_MEMBERS.held(), bytes(flipped), guard)
    assert open_group_message(CHANNEL_WITH_MEMBERS.held(), MESSAGE, guard).plaintext == b"a message worth forging"


deliveries = st.lists(
    st.tuples(st.sampled_from(["d1", "d2"]), st.integers(0, 1), st.integers(0, 40), st.booleans()), max_size=120
)


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 16), deliveries=deliveries)
def test_the_replay_guard_accepts_each_counter_at_most_once(
    window: int, deliveries: list[tuple[str, int, int, bool]]
) -> None:
    guard = ReplayGuard(window)
    accepted: defaultdict[tuple[str, int], set[int]] = defaultdict(set)
    for device, epoch, counter, save_and_restore in deliveries:
        seen = accepted[(device, epoch)]
        expected = counter not in seen and (not seen or counter > max(seen) - window)
        try:
            guard.accept(device, epoch, counter)
        except ReplayedGroupMessageError:
            assert not expected
        else:
            assert expected, f"accepted {(device, epoch, counter)} again"
            seen.add(counter)
        if save_and_restore:
            guard = ReplayGuard.from_dict(json.loads(json.dumps(guard.to_dict())))


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(list(range(24)) * 2), window=st.integers(24, 64))
def test_any_order_inside_the_window_opens_every_counter_exactly_once(order: list[int], window: int) -> None:
    guard = ReplayGuard(window)
    accepted = []
    for counter in order:
        try:
            guard.accept("d1", 3, counter)
        except ReplayedGroupMessageError:
            continue
        accepted.append(counter)
    assert sorted(accepted) == list(range(24))
