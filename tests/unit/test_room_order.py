"""RoomOrder: writes announced in sequence order, whatever order their answers come in."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.ordering import RoomOrder


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.tuples(st.permutations([w for w in range(n) for _ in range(3)]), st.sets(st.integers(0, n - 1)))
    )
)
def test_writes_are_announced_in_sequence_order_whatever_the_schedule(case: tuple[list[int], set[int]]) -> None:
    """Each write is begun, committed (taking the next sequence) and answered, interleaved at random.

    Writes begun after an answer arrived commit after it, as in the history
    service; some answers are failures (abandoned writes).
    """
    schedule, failing = case

    async def scenario() -> tuple[list[int], list[int]]:
        order = RoomOrder()
        writes, seqs, releases = {}, {}, []
        announced: list[int] = []
        steps: dict[int, int] = {}
        next_seq = 0
        for w in schedule:
            step = steps[w] = steps.get(w, -1) + 1
            if step == 0:
                writes[w] = order.begin("r")
            elif step == 1:
                next_seq += 1
                seqs[w] = next_seq
            elif w in failing:
                order.abandon(writes[w])  # it committed but the gateway never heard
            else:
                seq = seqs[w]
                releases.append(
                    asyncio.ensure_future(order.release(writes[w], seq, seq, lambda s=seq: announced.append(s)))
                )
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*releases), 5)
        assert order.waiting("r") == 0
        return announced, sorted(seqs[w] for w in seqs if w not in failing)

    announced, expected = asyncio.run(scenario())
    assert announced == expected


async def test_a_write_begun_after_a_sequence_was_known_does_not_hold_it_back() -> None:
    order = RoomOrder()
    announced: list[int] = []
    first, second = order.begin("r"), order.begin("r")
    # The second write's answer (seq 3) comes first: the first write may still hold a smaller one.
    waiting = asyncio.ensure_future(order.release(second, 3, 3, lambda: announced.append(3)))
    await asyncio.sleep(0)
    assert (announced, order.waiting("r")) == ([], 1)
    third = order.begin("r")  # begun once 3 was known: its sequence will be above 3
    await order.release(first, 2, 2, lambda: announced.append(2))
    await waiting
    assert announced == [2, 3]  # 3 did not wait for the third write
    order.abandon(third)


async def test_rooms_do_not_wait_for_each_other_and_foreign_sequences_are_not_awaited() -> None:
    order = RoomOrder()
    stuck = order.begin("a")  # never answered during this test
    announced: list[str] = []
    write = order.begin("b")
    # Sequence 7: 1..6 were taken elsewhere (a backend, another gateway); nothing waits for them.
    await order.release(write, 7, 7, lambda: announced.append("b7"))
    assert announced == ["b7"]
    order.abandon(stuck)
    assert order.waiting("a") == 0


async def test_an_announcement_runs_even_if_its_writer_stopped_waiting() -> None:
    order = RoomOrder()
    earlier, later = order.begin("r"), order.begin("r")
    announced: list[int] = []
    waiting = asyncio.ensure_future(order.release(later, 2, 2, lambda: announced.append(2)))
    await asyncio.sleep(0)
    waiting.cancel()  # the publisher's caller went away
    await asyncio.sleep(0)
    await order.release(earlier, 1, 1, lambda: announced.append(1))
    assert announced == [1, 2]


async def test_a_failing_announcement_reaches_its_writer_and_does_not_block_the_next() -> None:
    order = RoomOrder()
    first, second = order.begin("r"), order.begin("r")

    def broken() -> None:
        raise RuntimeError("bus down")

    failing = asyncio.ensure_future(order.release(first, 1, 1, broken))
    assert await order.release(second, 2, 2, lambda: "sent") == "sent"
    with pytest.raises(RuntimeError, match="bus down"):
        await failing
