"""Page tokens and page sizes."""

from __future__ import annotations

import base64

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime.errors import ServiceError
from services.runtime.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    clamp_page_size,
    decode_page_token,
    encode_page_token,
)


def assert_invalid(error: ServiceError, field: str) -> None:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "VALIDATION_FAILED"
    assert error.metadata == {"field": field}
    assert error.message.startswith(f"{field}: ")


# --- tokens ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(after=st.text())
def test_token_round_trip(after: str) -> None:
    token = encode_page_token(after)
    assert decode_page_token(token) == after


@settings(max_examples=100, deadline=None)
@given(after=st.text(min_size=1))
def test_token_is_url_safe_ascii(after: str) -> None:
    token = encode_page_token(after)
    assert token.isascii()
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


def test_token_is_opaque() -> None:
    token = encode_page_token("user-123")
    assert "user-123" not in token
    assert token != ""


def test_empty_token_means_first_page() -> None:
    assert decode_page_token("") == ""


def test_distinct_keys_give_distinct_tokens() -> None:
    assert encode_page_token("a") != encode_page_token("b")
    assert encode_page_token("") != ""  # the token for key "" is not "first page"
    assert decode_page_token(encode_page_token("")) == ""


@pytest.mark.parametrize(
    "token",
    [
        "abc",  # bad padding
        "a",
        "!!!!",  # no base64 alphabet at all: decodes to nothing
        base64.urlsafe_b64encode(b"before:x").decode(),  # wrong prefix
        base64.urlsafe_b64encode(b"after").decode(),  # prefix without the colon
        base64.urlsafe_b64encode(b"AFTER:x").decode(),
        base64.urlsafe_b64encode(b"\xff\xfeafter:x").decode(),  # not UTF-8
        base64.urlsafe_b64encode(b"after:\xff").decode(),  # not UTF-8 after the prefix
    ],
)
def test_bad_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(ServiceError) as caught:
        decode_page_token(token)
    assert_invalid(caught.value, "page_token")


@settings(max_examples=300, deadline=None)
@given(token=st.text(min_size=1))
def test_arbitrary_tokens_decode_or_raise_service_error(token: str) -> None:
    # Whatever a client sends, the only failure is INVALID_ARGUMENT on page_token.
    try:
        after = decode_page_token(token)
    except ServiceError as error:
        assert_invalid(error, "page_token")
    else:
        # Anything accepted is a key the server could have issued itself.
        assert isinstance(after, str)
        assert decode_page_token(encode_page_token(after)) == after


def test_bad_token_error_becomes_a_rich_status() -> None:
    with pytest.raises(ServiceError) as caught:
        decode_page_token("abc")
    status = caught.value.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in status.details


# --- page sizes -----------------------------------------------------------------


def test_zero_means_default() -> None:
    assert clamp_page_size(0) == DEFAULT_PAGE_SIZE == 50


@pytest.mark.parametrize("size", [1, 2, 49, 50, 51, 99, 100])
def test_sizes_in_range_are_kept(size: int) -> None:
    assert clamp_page_size(size) == size


@pytest.mark.parametrize("size", [101, 1000, 2**31 - 1])
def test_large_sizes_are_capped(size: int) -> None:
    assert clamp_page_size(size) == MAX_PAGE_SIZE == 100


@pytest.mark.parametrize("size", [-1, -100, -(2**31)])
def test_negative_sizes_are_invalid(size: int) -> None:
    with pytest.raises(ServiceError) as caught:
        clamp_page_size(size)
    assert_invalid(caught.value, "page_size")


@settings(max_examples=200, deadline=None)
@given(size=st.integers(min_value=0, max_value=2**40))
def test_clamped_size_is_always_in_range(size: int) -> None:
    clamped = clamp_page_size(size)
    assert 1 <= clamped <= MAX_PAGE_SIZE
    assert clamped == (DEFAULT_PAGE_SIZE if size == 0 else min(size, MAX_PAGE_SIZE))
