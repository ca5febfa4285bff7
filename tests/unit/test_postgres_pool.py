"""The PostgreSQL pool as the storages use it: a cancelled wait for a connection stays cancelled."""

from __future__ import annotations

import asyncio

from services.runtime.postgres import PostgresDatabase

pytest_plugins = ["tests.storage_backends"]


async def hold(db: PostgresDatabase, held: asyncio.Event, release: asyncio.Event) -> None:
    async with db.connection():
        held.set()
        await release.wait()


async def use_a_connection(db: PostgresDatabase) -> None:
    async with db.connection() as connection:
        await connection.execute("SELECT 1")


async def test_a_caller_cancelled_while_a_connection_is_handed_to_it_is_cancelled(postgres_url: str) -> None:
    # Python 3.11's asyncio.wait_for, under the pool's wait for a free connection, can return the
    # connection to a caller cancelled in the same moment: the cancellation would be lost (a
    # background task that is stopped keeps running).
    db = PostgresDatabase(postgres_url, "parley_pool_test", [], max_connections=1)
    await db.open()
    try:
        raced = 0
        for steps in range(8):  # the cancellation lands at each point of the hand-over in turn
            held, release = asyncio.Event(), asyncio.Event()
            holder = asyncio.ensure_future(hold(db, held, release))
            await held.wait()
            waiter = asyncio.ensure_future(use_a_connection(db))
            await asyncio.sleep(0.01)  # it waits for the only connection
            release.set()
            for _ in range(steps):
                await asyncio.sleep(0)
            if not waiter.done():
                raced += 1
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
                assert waiter.cancelled(), f"the cancellation was lost {steps} steps into the hand-over"
            await holder
        assert raced >= 3
    finally:
        await db.close()
