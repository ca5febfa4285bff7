"""How bus messages look on NATS: names as one token each, headers carried exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.nats_wire import (
    check_subject_prefix,
    decode_name,
    encode_name,
    pack,
    split_subject,
    unpack,
)

# What NATS gives a meaning to inside a subject, or does not allow in one.
NOT_IN_A_TOKEN = set(".*> \t\r\n\f\v")


@given(st.text(max_size=60))
def test_a_name_becomes_one_nats_token_and_comes_back(name: str) -> None:
    token = encode_name(name)
    assert token
    assert not NOT_IN_A_TOKEN & set(token)
    assert token.isascii()
    assert decode_name(token) == name


@given(st.text(max_size=30), st.text(max_size=30))
def test_different_names_never_share_a_token(first: str, second: str) -> None:
    if first != second:
        assert encode_name(first) != encode_name(second)


def test_common_names_stay_readable_and_look_alikes_stay_apart() -> None:
    assert encode_name("presence:lobby") == "presence:lobby"
    assert encode_name("user@example-1_x") == "user@example-1_x"
    names = ["a.b", "a_b", "~ab", "ab", "a b", "", "ÄÖ", "a>b", "a*", "~", "a.b.c", "a..b"]
    assert len({encode_name(name) for name in names}) == len(names)


@pytest.mark.parametrize("token", ["~!!", "~0", "a.b", "a b", "~" + "a" * 3])
def test_a_token_no_name_became_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="not an encoded subject name"):
        decode_name(token)


def test_a_subject_is_a_namespace_then_a_name_that_may_hold_dots() -> None:
    assert split_subject("room.chat.2024 q3") == ("room", "chat.2024 q3")
    assert split_subject("subject.") == ("subject", "")
    for subject in ("room", "ro om.x", ".x", "~r.x"):
        with pytest.raises(ValueError, match=r"<namespace>\.<name>"):
            split_subject(subject)


@pytest.mark.parametrize("prefix", ["parley", "t_1-a", "DEPLOY2"])
def test_a_subject_prefix_is_one_plain_token(prefix: str) -> None:
    check_subject_prefix(prefix)


@pytest.mark.parametrize("prefix", ["", "a.b", "a b", "a>", "*", "a:b", "a@b", "~x"])
def test_a_subject_prefix_that_is_not_one_plain_token_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        check_subject_prefix(prefix)


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6), st.binary(max_size=300))
def test_headers_and_body_come_back_exactly(headers: dict[str, str], body: bytes) -> None:
    assert unpack(pack(headers, body)) == (headers, body)


def test_headers_nats_would_trim_come_back_exactly() -> None:
    headers = {"kind": " event\r\n", "a b": "", "ключ": "x\ty", "": "empty name"}
    assert unpack(pack(headers, b"\x00body")) == (headers, b"\x00body")


def test_a_header_too_long_for_its_length_field_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 65535 bytes"):
        pack({"big": "x" * 65536}, b"")


@given(st.binary(max_size=64))
def test_a_payload_no_publisher_made_is_refused_or_read_but_never_crashes(payload: bytes) -> None:
    try:
        headers, body = unpack(payload)
    except ValueError:
        return
    assert pack(headers, body) == payload


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x09abc",
        b"\x00\x00\x00\x04\x00\x09\x00\x00",
        b"\x00\x00\x00\x06\x00\x01\x00\x01\xff\xfe",
    ],
)
def test_a_truncated_or_garbled_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a bus message"):
        unpack(payload)
