"""A change feed: watchers get every change after they registered, in order; one that lags is dropped, loudly."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.change_feed import ChangeFeed
from services.runtime.errors import ServiceError


async def test_a_watcher_gets_every_change_made_after_it_registered_in_batches() -> None:
    feed: ChangeFeed[int] = ChangeFeed("test watch")
    feed.announce(0)  # before anyone watches: nobody gets it
    async with feed.watching() as batches:
        feed.announce(1)
        feed.announce(2)
        first = await anext(batches)
        feed.announce(3)
        second = await anext(batches)
    assert (first, second) == ([1, 2], [3])


async def test_a_watcher_that_lags_is_dropped_and_told_even_mid_batch() -> None:
    feed: ChangeFeed[int] = ChangeFeed("test watch", limit=4)
    async with feed.watching() as lagging, feed.watching() as other:
        for change in range(3):
            feed.announce(change)
        assert await anext(other) == [0, 1, 2]
        for change in range(3, 6):
            feed.announce(change)  # `lagging` holds 3: the next one overflows it
        with pytest.raises(ServiceError) as ended:
            await asyncio.wait_for(anext(lagging), 1)
        assert ended.value.reason == "SLOW_CONSUMER"
        assert await anext(other) == [3, 4, 5]
        feed.announce(6)
        assert await anext(other) == [6]
