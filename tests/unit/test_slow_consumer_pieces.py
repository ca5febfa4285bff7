"""The pieces behind a slow consumer's end: the SDK's handler backlog, its typed error, the gateway's release."""

from __future__ import annotations

import asyncio

import grpc

from parley.api.v1 import status_pb2
from parley.backlog import HandlerBacklog
from parley.errors import SlowConsumerError, error_from_status
from services.gateway.stream_release import StreamRelease


async def _done_soon(gate: asyncio.Event) -> None:
    await gate.wait()


async def test_a_frame_counts_until_every_handler_call_it_started_returned() -> None:
    backlog = HandlerBacklog(max_bytes=100)
    first, second = asyncio.Event(), asyncio.Event()
    with backlog.dispatching(60):
        calls = [asyncio.create_task(_done_soon(first)), asyncio.create_task(_done_soon(second))]
        for call in calls:
            backlog.track(call)
    assert backlog.bytes == 60  # once per frame, however many handlers
    first.set()
    await calls[0]
    assert backlog.bytes == 60
    second.set()
    await calls[1]
    await asyncio.sleep(0)  # done callbacks run on the next turn
    assert backlog.bytes == 0


async def test_the_reader_waits_while_handlers_hold_more_than_the_limit() -> None:
    backlog = HandlerBacklog(max_bytes=100)
    gate = asyncio.Event()
    for _ in range(3):
        with backlog.dispatching(40):
            backlog.track(asyncio.create_task(_done_soon(gate)))
    assert backlog.bytes == 120
    waiting = asyncio.create_task(backlog.caught_up())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 1)
    assert backlog.bytes == 0


async def test_calls_not_started_by_a_frame_do_not_count() -> None:
    backlog = HandlerBacklog(max_bytes=10)
    backlog.track(asyncio.create_task(_done_soon(asyncio.Event())))
    with backlog.dispatching(50):
        pass  # a frame no handler took
    assert backlog.bytes == 0
    await asyncio.wait_for(backlog.caught_up(), 1)


def test_slow_consumer_is_its_own_retryable_error() -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], reason="SLOW_CONSUMER", message="fell behind"
    )
    error = error_from_status(status)
    assert type(error) is SlowConsumerError
    assert error.retryable
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_stream_is_let_go_once_even_if_its_handler_is_cancelled_meanwhile() -> None:
    gate = asyncio.Event()
    runs: list[str] = []

    async def let_go() -> None:
        runs.append("started")
        await gate.wait()
        runs.append("done")

    release = StreamRelease(let_go)
    release.now()
    release.now()
    waiter = asyncio.create_task(release.finished())
    await asyncio.sleep(0.01)
    waiter.cancel()  # the stream's handler is cancelled (the client went away): letting go goes on
    gate.set()
    await asyncio.sleep(0.01)
    await release.finished()
    assert runs == ["started", "done"]
