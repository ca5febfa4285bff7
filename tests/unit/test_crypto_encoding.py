"""Reading back the labelled, length-prefixed encoding (parley.crypto.encoding.read_labelled): it
round-trips, and a truncated, extended, relabelled or miscounted input is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.crypto.encoding import labelled, read_labelled, read_u32, u32
from parley.crypto.errors import MalformedInputError

FIELDS = st.lists(st.binary(max_size=40), max_size=6)


@settings(max_examples=200, deadline=None)
@given(FIELDS)
def test_read_labelled_round_trips(fields: list[bytes]) -> None:
    assert read_labelled("thing", labelled("thing", *fields), len(fields)) == fields


@settings(max_examples=200, deadline=None)
@given(FIELDS, st.data())
def test_truncated_input_is_refused(fields: list[bytes], data: st.DataObject) -> None:
    encoded = labelled("thing", *fields)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(MalformedInputError):
        read_labelled("thing", encoded[:cut], len(fields))


def test_other_purpose_extra_or_missing_fields_are_refused() -> None:
    encoded = labelled("thing", b"a", b"b")
    with pytest.raises(MalformedInputError, match="not a parley/v1/other"):
        read_labelled("other", encoded, 2)
    with pytest.raises(MalformedInputError, match="has 2 fields, expected 3"):
        read_labelled("thing", encoded, 3)
    with pytest.raises(MalformedInputError, match="has 3 fields, expected 2"):
        read_labelled("thing", encoded + b"\x00\x00\x00\x00", 2)
    with pytest.raises(MalformedInputError, match="truncated length prefix"):
        read_labelled("thing", encoded + b"\x00", 2)


def test_u32_round_trips_and_refuses_other_sizes() -> None:
    assert read_u32(u32(0xDEADBEEF)) == 0xDEADBEEF
    for size in (0, 3, 5):
        with pytest.raises(MalformedInputError):
            read_u32(bytes(size))
