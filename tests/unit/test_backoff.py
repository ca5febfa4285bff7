"""Reconnection backoff: full jitter under an exponential ceiling, a cap, and an attempt limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.backoff import CONNECT_ATTEMPT_MS, Backoff


def test_the_ceiling_doubles_up_to_the_cap() -> None:
    policy = Backoff(initial=0.1, cap=1.0)
    assert [policy.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@given(
    initial=st.floats(0.001, 5.0),
    spread=st.floats(1.0, 100.0),
    attempt=st.integers(0, 10_000),
    fraction=st.floats(0.0, 1.0),
)
def test_every_wait_lies_between_zero_and_the_ceiling(
    initial: float, spread: float, attempt: int, fraction: float
) -> None:
    policy = Backoff(initial=initial, cap=initial * spread)
    wait = policy.delay(attempt, lambda low, high: low + (high - low) * fraction)
    assert 0.0 <= wait <= policy.ceiling(attempt) <= policy.cap


def test_full_jitter_draws_from_the_whole_window() -> None:
    drawn: list[tuple[float, float]] = []
    Backoff(initial=0.5, cap=4.0).delay(3, lambda low, high: drawn.append((low, high)) or high)
    assert drawn == [(0.0, 4.0)]


def test_the_attempt_limit() -> None:
    assert not Backoff().gives_up_after(10**6)
    limited = Backoff(max_attempts=3)
    assert [limited.gives_up_after(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


@pytest.mark.parametrize(("initial", "cap", "max_attempts"), [(0.0, 1.0, None), (2.0, 1.0, None), (0.1, 1.0, 0)])
def test_nonsense_is_refused(initial: float, cap: float, max_attempts: int | None) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, cap=cap, max_attempts=max_attempts)


def test_the_channels_own_reconnection_keeps_the_same_pace() -> None:
    assert dict(Backoff(initial=0.1, cap=10.0).channel_options()) == {
        "grpc.initial_reconnect_backoff_ms": 100,
        # gRPC's least time for one connection attempt, not a backoff (tests/e2e/test_slow_link.py).
        "grpc.min_reconnect_backoff_ms": CONNECT_ATTEMPT_MS,
        "grpc.max_reconnect_backoff_ms": 10_000,
    }
