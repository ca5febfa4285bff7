"""Chaos: a proxy cuts, stalls and delays the links of several SDK clients at random (seeded) moments
while they publish through their outboxes and receive; after healing nothing is lost or doubled (issue 11)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley import Client
from parley.backoff import Backoff
from parley.connection import ConnectionState, Heartbeat
from parley.outbox import Send, SendStatus
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.chaos_proxy import ChaosProxy, chaos_proxy
from tests.support import make_config, running, wait_until

ROOMS = [RoomDefinition(id="chat", events=[EventDefinition(name="message", history=HistorySettings(enabled=True))])]
CLIENTS = 3
SENDS_EACH = 30


@pytest.fixture
async def chat_server(data_dir: Path) -> AsyncIterator[str]:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        yield address


TROUBLES = ["cut", "stall", "delay", "stall replies"]


async def make_trouble(proxy: ChaosProxy, rng: random.Random, stop: asyncio.Event) -> list[str]:
    """Each kind of trouble once, then more at random, at random moments until told to stop; returns what it did."""
    done: list[str] = []
    while not stop.is_set() or len(done) < len(TROUBLES):
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        trouble = TROUBLES[len(done)] if len(done) < len(TROUBLES) else rng.choice(TROUBLES)
        done.append(trouble)
        if trouble == "cut":
            await proxy.cut()
        elif trouble == "stall":
            proxy.stall()
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            proxy.heal()
        elif trouble == "stall replies":
            proxy.stall(to_server=False)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await proxy.cut()
            proxy.heal()
        else:
            proxy.delay = rng.uniform(0.01, 0.1)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            proxy.delay = 0.0
    proxy.heal()
    return done


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_after_random_cuts_stalls_and_delays_every_event_arrives_once_in_order(
    chat_server: str, tmp_path: Path, seed: int
) -> None:
    rng, trouble_rng = random.Random(seed), random.Random(seed + 1000)
    async with chaos_proxy(chat_server) as proxy:
        clients = [
            Client(
                proxy.address,
                username=f"c{seed}x{n}",
                key_file=tmp_path / f"{n}.json",
                backoff=Backoff(initial=0.02, cap=0.3),
                heartbeat=Heartbeat(interval=0.2, timeout=0.4),
                max_send_attempts=1000,
            )
            for n in range(CLIENTS)
        ]
        observer = Client(chat_server, username=f"obs{seed}", key_file=tmp_path / "observer.json")
        try:
            await observer.connect()
            received: list[list[int]] = [[] for _ in clients]
            for client, seqs in zip(clients, received, strict=True):
                await client.connect()
                room = await client.join("chat")
                room.on("message", lambda event, seqs=seqs: seqs.append(event.seq))
            sends: list[Send] = []
            stop = asyncio.Event()
            trouble = asyncio.create_task(make_trouble(proxy, trouble_rng, stop))

            async def publish(n: int, client: Client) -> None:
                room = await client.join("chat")  # the same handle, also after reconnections
                for i in range(SENDS_EACH):
                    sends.append(room.send("message", f"{n}:{i}"))
                    await asyncio.sleep(rng.uniform(0.0, 0.05))

            await asyncio.gather(*(publish(n, c) for n, c in enumerate(clients)))
            stop.set()
            troubles = await trouble
            assert set(troubles) == set(TROUBLES)
            await asyncio.wait_for(asyncio.gather(*(s.result() for s in sends)), 60)
            assert proxy.connections > CLIENTS, "links were lost and made again"
            assert all(s.status is SendStatus.SENT for s in sends)

            kept = list(reversed(await observer.history("chat", limit=10_000)))
            kept_seqs = [e.seq for e in kept]
            assert sorted(e.data for e in kept) == sorted(f"{n}:{i}" for n in range(CLIENTS) for i in range(SENDS_EACH))
            for n in range(CLIENTS):  # each client's sends stored in the order it made them
                mine = [int(e.data.split(":")[1]) for e in kept if e.data.startswith(f"{n}:")]
                assert mine == list(range(SENDS_EACH))
            sent_seqs = [s.reply.publish.seqs[0] for s in sends if s.reply is not None]
            assert sorted(sent_seqs) == kept_seqs, "every send reported sent is in history exactly once"
            for client, seqs in zip(clients, received, strict=True):
                await wait_until(lambda client=client: client.state is ConnectionState.CONNECTED, within=20)
                await wait_until(lambda seqs=seqs: len(seqs) >= len(kept_seqs), within=20)
                assert seqs == kept_seqs, "every kept event exactly once, in order"
        finally:
            for client in [*clients, observer]:
                await client.close()
