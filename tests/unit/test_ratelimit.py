"""RateLimiter token buckets, driven by a fake clock."""

from __future__ import annotations

import pytest

from services.runtime.ratelimit import RateLimiter
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_burst_up_to_rate_then_limited(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=5, per_seconds=10, clock=clock)
    assert [limiter.try_acquire("alice") for _ in range(5)] == [0.0] * 5
    assert limiter.try_acquire("alice") > 0


def test_retry_after_is_time_until_next_token(clock: FakeClock) -> None:
    # 5 per 10 s: one token every 2 s.
    limiter = RateLimiter(rate=5, per_seconds=10, clock=clock)
    for _ in range(5):
        limiter.try_acquire("alice")
    assert limiter.try_acquire("alice") == pytest.approx(2.0)
    clock.advance(0.5)
    assert limiter.try_acquire("alice") == pytest.approx(1.5)
    clock.advance(1.0)
    assert limiter.try_acquire("alice") == pytest.approx(0.5)


def test_denied_attempts_do_not_consume_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1, per_seconds=1, clock=clock)
    assert limiter.try_acquire("k") == 0.0
    for _ in range(10):
        assert limiter.try_acquire("k") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.try_acquire("k") == 0.0


def test_waiting_the_retry_after_allows_the_next_call(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=3, per_seconds=1, clock=clock)
    for _ in range(3):
        limiter.try_acquire("k")
    wait = limiter.try_acquire("k")
    assert wait == pytest.approx(1 / 3)
    clock.advance(wait * 0.9)
    assert limiter.try_acquire("k") > 0
    clock.advance(wait * 0.11)
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") > 0


def test_refill_is_gradual(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=4, per_seconds=4, clock=clock)  # 1 token/s
    for _ in range(4):
        assert limiter.try_acquire("k") == 0.0
    clock.advance(2.0)  # two tokens back
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == pytest.approx(1.0)


def test_refill_is_capped_at_burst_size(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=3, per_seconds=1, clock=clock)
    limiter.try_acquire("k")
    clock.advance(3600)  # a long idle period does not bank more than `rate`
    assert [limiter.try_acquire("k") for _ in range(3)] == [0.0] * 3
    assert limiter.try_acquire("k") > 0


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=2, per_seconds=60, clock=clock)
    assert limiter.try_acquire("alice") == 0.0
    assert limiter.try_acquire("alice") == 0.0
    assert limiter.try_acquire("alice") > 0
    # Bob's bucket is untouched by Alice's.
    assert limiter.try_acquire("bob") == 0.0
    assert limiter.try_acquire("bob") == 0.0
    assert limiter.try_acquire("bob") > 0
    assert limiter.try_acquire("carol") == 0.0


def test_fractional_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1, per_seconds=60, clock=clock)
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == pytest.approx(60.0)
    clock.advance(59.0)
    assert limiter.try_acquire("k") == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.try_acquire("k") == 0.0


def test_forgetting_refilled_buckets_bounds_memory_without_changing_limits(clock: FakeClock) -> None:
    # White-box: reads the bucket table to see that idle keys are dropped. The
    # pruning threshold is an implementation detail, so the test only relies on
    # a prune happening at some point as the table grows.
    limiter = RateLimiter(rate=1, per_seconds=1, clock=clock)  # a bucket is full 1 s after use
    old = 50_000
    for i in range(old):
        limiter.try_acquire(f"old-{i}")
    clock.advance(5.0)  # every "old-*" bucket has refilled: forgetting it changes nothing
    assert limiter.try_acquire("hot") == 0.0
    assert limiter.try_acquire("hot") > 0  # "hot" is empty and must be remembered

    size = len(limiter._buckets)
    pruned = False
    for j in range(300_000):
        limiter.try_acquire(f"new-{j}")
        if len(limiter._buckets) < size:
            pruned = True
            break
        size = len(limiter._buckets)
    assert pruned, "the bucket table grew without bound"
    assert not any(key.startswith("old-") for key in limiter._buckets)
    # The recently used key survived the prune and is still limited...
    assert limiter.try_acquire("hot") > 0
    # ...while a forgotten key starts full, as it would have been anyway.
    assert limiter.try_acquire("old-0") == 0.0
    assert limiter.try_acquire("old-0") > 0


def test_default_clock_is_monotonic() -> None:
    limiter = RateLimiter(rate=1, per_seconds=3600)
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == pytest.approx(3600.0, abs=1.0)
