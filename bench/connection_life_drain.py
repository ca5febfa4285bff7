"""Scenario "drain": a rolling drain of two gateways under load; what was delivered, lost and duplicated.

The services and two gateways on NATS (bench/connection_life_cluster.py);
clients reach the gateways only through a round-robin TCP load balancer
(bench/connection_life_balancer.py). M subscribers (SDK clients in K worker
processes, each its own user) and one publisher (an SDK client here) join
room "bench", which keeps every event. The publisher sends event number i
with `room.send` (the outbox) at a fixed rate. After a lead-in, gateway 1
is taken out of the balancer and sent SIGTERM; once it has exited and every
client is connected again on the other gateway (a client's gateway is
named by its session id, in its Welcome) it is restarted and put back;
then the same for gateway 2, then a tail of publishing. Afterwards: what
the publisher's sends came to, what history holds, and what each
subscriber received against what history holds, with the rejoins that
said `recovered=false` (events the server could not replay).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.connection_life_clients import ClientWorkers, Status, start_process
from bench.connection_life_cluster import GatewayCluster
from bench.connection_life_restart import RESUME_TIMEOUT_SECONDS, resume_ms, seconds_between
from bench.connection_life_tracking import TrackedClient, open_tracked
from bench.fanout_wire import EVENT, ROOM
from bench.fanout_worker_pool import WorkerProcess
from bench.report import spread
from bench.server_process import ProcessGroups
from parley.device_identity import DeviceIdentity
from parley.outbox import OutboxFullError, Send, SendStatus

log = logging.getLogger("bench.connection_life")
GATEWAYS = (1, 2)
# After publishing stops: how long the outbox may take to be answered, and deliveries to stop arriving.
SENDS_TIMEOUT_SECONDS = 60.0
STALL_SECONDS = 10.0
POLL_SECONDS = 0.1
# Subscribers whose tally is off, quoted in full.
QUOTED_SUBSCRIBERS = 20


class Publisher:
    """An SDK client sending event i as {"n": i} with `room.send`, `rate` a second, until stopped."""

    def __init__(self, tracked: TrackedClient, rate: float) -> None:
        self.tracked = tracked
        self.rate = rate
        self.sends: list[tuple[int, Send]] = []
        self.refused: collections.Counter[str] = collections.Counter()
        self.attempted = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not self._stop.is_set():
            number = self.attempted
            self.attempted += 1
            try:
                self.sends.append((number, self.tracked.room.send(EVENT, {"n": number}, echo=False)))
            except OutboxFullError as exc:
                self.refused[f"{type(exc).__name__}: {exc.reason}"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), started + self.attempted / self.rate - loop.time())

    async def stop(self) -> dict[str, Any]:
        """Stops sending and waits for every send's answer (or SENDS_TIMEOUT_SECONDS); what they came to."""
        self._stop.set()
        if self._task is not None:
            await self._task
        answers = asyncio.gather(*(send.result() for _, send in self.sends), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answers, SENDS_TIMEOUT_SECONDS)
        statuses = collections.Counter(send.status.value for _, send in self.sends)
        errors = collections.Counter(
            f"{type(send.error).__name__}: {send.error.reason}" for _, send in self.sends if send.error is not None
        )
        return {
            "published": self.attempted,
            "refused_by_outbox": dict(self.refused),
            "sent": statuses.get(SendStatus.SENT.value, 0),
            "failed": statuses.get(SendStatus.FAILED.value, 0),
            "still_pending": statuses.get(SendStatus.PENDING.value, 0),
            "retried": sum(1 for _, send in self.sends if send.retries),
            "failures": dict(errors),
        }

    @property
    def sent_numbers(self) -> set[int]:
        return {number for number, send in self.sends if send.status is SendStatus.SENT}


async def open_publisher(address: str, rate: float) -> Publisher:
    identity = DeviceIdentity.generate(f"pub{secrets.token_hex(5)}")
    return Publisher(await open_tracked(address, identity, ROOM, EVENT), rate)


async def gateway_id(address: str, identity: DeviceIdentity) -> str:
    """The id of the gateway at `address`, from the Welcome of a stream opened there directly."""
    probe = await open_tracked(address, identity, ROOM, EVENT)
    await probe.client.close()
    return probe.gateway


class Balancer:
    """The load balancer process, as the coordinator drives it."""

    def __init__(self, process: WorkerProcess) -> None:
        self._process = process
        self.address = ""

    @classmethod
    async def start(cls, log_dir: Path, groups: ProcessGroups) -> Balancer:
        balancer = cls(await start_process("bench.connection_life_balancer", "balancer", log_dir, groups))
        balancer.address = f"127.0.0.1:{(await balancer._process.request({'cmd': 'start'}))['port']}"
        return balancer

    async def up(self, name: str, address: str) -> None:
        await self._process.request({"cmd": "up", "name": name, "address": address})

    async def down(self, name: str) -> None:
        await self._process.request({"cmd": "down", "name": name})

    async def stats(self) -> dict[str, Any]:
        reply = await self._process.request({"cmd": "stats"})
        return {"forwarded": reply["forwarded"], "refused": reply["refused"]}

    @property
    def pid(self) -> int:
        return self._process.pid

    async def stop(self) -> None:
        await self._process.stop()


async def wait_until_moved(pool: ClientWorkers, publisher: TrackedClient, gone: str) -> Status | None:
    """Polls until every client is connected with its room joined, none on gateway `gone`; None on timeout."""
    deadline = time.monotonic() + RESUME_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        status = await pool.status()
        if status.all_ready and not status.on_gateway.get(gone) and publisher.ready and publisher.gateway != gone:
            return status
        await asyncio.sleep(POLL_SECONDS)
    return None


async def drain_one(
    n: int,
    cluster: GatewayCluster,
    ids: dict[int, str],
    balancer: Balancer,
    pool: ClientWorkers,
    publisher: TrackedClient,
) -> dict[str, Any]:
    """Gateway n out of the balancer, SIGTERM, exited; every client connected again elsewhere; gateway n
    restarted (its new id in `ids`) and back in the balancer."""
    name = f"gateway-{n}"
    await pool.mark()
    publisher.mark()
    before = await pool.status()
    on_it = before.on_gateway.get(ids[n], 0) + (publisher.gateway == ids[n])
    started_ns = time.time_ns()
    await balancer.down(name)
    exit_code = await asyncio.to_thread(cluster.drain, n)
    exited_ns = time.time_ns()
    after = await wait_until_moved(pool, publisher, ids[n])
    absences, errors = await pool.absences()
    if (mine := publisher.absence()) is not None:
        absences.append(mine)
    back = [a.back_ns for a in absences if a.back_ns is not None]
    last = max(back) if after is not None and len(back) == len(absences) and back else None
    restart_ns = time.time_ns()
    address = await asyncio.to_thread(cluster.restart, n)
    ids[n] = await gateway_id(address, publisher.client.identity)
    await balancer.up(name, address)
    return {
        "gateway": name,
        "exit_code": exit_code,
        "stop_seconds": seconds_between(started_ns, exited_ns),
        "clients_on_it": on_it,
        "clients_moved": len(absences),
        "publisher_moved": mine is not None,
        "every_client_connected": after is not None,
        "all_connected_seconds_from_sigterm": seconds_between(started_ns, last) if last else None,
        "reconnect_ms_from_sigterm": resume_ms(absences, started_ns),
        "resumes_not_recovered": (after.unrecovered - before.unrecovered) if after is not None else None,
        "restart_seconds": seconds_between(restart_ns, time.time_ns()),
        "client_errors": errors,
    }


def history_figures(stored: Sequence[int], sent: set[int]) -> dict[str, int]:
    unique = set(stored)
    return {
        "stored": len(stored),
        "stored_unique": len(unique),
        "stored_twice": len(stored) - len(unique),
        "sent_but_not_stored": len(sent - unique),
        "stored_but_not_reported_sent": len(unique - sent),
    }


def delivery_figures(tallies: Sequence[dict[str, int]]) -> dict[str, Any]:
    off = [t for t in tallies if t["lost"] or t["duplicated"] or t["unexpected"] or t["out_of_order"]]
    return {
        "subscribers": len(tallies),
        "expected": sum(t["expected"] for t in tallies),
        "received": sum(t["received"] for t in tallies),
        "received_unique": sum(t["received_unique"] for t in tallies),
        "lost": sum(t["lost"] for t in tallies),
        "duplicated": sum(t["duplicated"] for t in tallies),
        "unexpected": sum(t["unexpected"] for t in tallies),
        "out_of_order": sum(t["out_of_order"] for t in tallies),
        "per_subscriber_received_unique": spread([t["received_unique"] for t in tallies]),
        "subscribers_with_loss": sum(1 for t in tallies if t["lost"]),
        "subscribers_with_duplicates": sum(1 for t in tallies if t["duplicated"]),
        # Lost events that no `recovered=false` announced: a silent gap, which must never happen.
        "subscribers_with_loss_unannounced": sum(1 for t in tallies if t["lost"] and not t["unrecovered"]),
        "subscribers_off": off[:QUOTED_SUBSCRIBERS],
    }


async def wait_for_deliveries(pool: ClientWorkers, expected: int) -> bool:
    """Polls until `expected` events have arrived at the subscribers; False when they stall first."""
    last, last_change = -1, time.monotonic()
    while (received := await pool.received()) < expected:
        if received != last:
            last, last_change = received, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


async def measure_rolling_drain(
    subscribers: int,
    rate: float,
    phase_seconds: float,
    workers: int,
    env: Mapping[str, str],
    tmp: Path,
    groups: ProcessGroups,
) -> dict[str, Any]:
    await asyncio.to_thread(tmp.mkdir)
    cluster = GatewayCluster(tmp, env, groups)
    async with contextlib.AsyncExitStack() as running:
        running.push_async_callback(asyncio.to_thread, cluster.stop)
        await asyncio.to_thread(cluster.start)
        log.info("drain: the services and two gateways are up")
        balancer = await Balancer.start(tmp, groups)
        running.push_async_callback(balancer.stop)
        for n in GATEWAYS:
            await balancer.up(f"gateway-{n}", cluster.address(n))
        pool = await ClientWorkers.start(workers, tmp, groups, "drain")
        running.push_async_callback(pool.stop)
        open_seconds = await pool.open(balancer.address, subscribers, ROOM, EVENT)
        log.info("drain: %d subscribers joined in %.1f s; publishing", subscribers, open_seconds)
        publisher = await open_publisher(balancer.address, rate)
        running.push_async_callback(publisher.tracked.client.close)
        ids = {n: await gateway_id(cluster.address(n), publisher.tracked.client.identity) for n in GATEWAYS}
        publisher.start()
        await asyncio.sleep(phase_seconds)
        drains = []
        for n in GATEWAYS:
            drains.append(await drain_one(n, cluster, ids, balancer, pool, publisher.tracked))
            log.info(
                "drain: gateway-%d drained, %d clients moved, all connected after %s s",
                n,
                drains[-1]["clients_moved"],
                drains[-1]["all_connected_seconds_from_sigterm"],
            )
            await asyncio.sleep(phase_seconds)
        sends = await publisher.stop()
        log.info("drain: publishing stopped, %d sent; counting deliveries", sends["sent"])
        history = await publisher.tracked.client.history(ROOM, limit=publisher.attempted + 1)
        stored = [int(e.data["n"]) for e in history if e.event == EVENT]
        arrived = await wait_for_deliveries(pool, subscribers * len(set(stored)))
        tallies = await pool.tallies(sorted(set(stored)))
        unrecovered = (await pool.status()).unrecovered
        balanced = await balancer.stats()
    return {
        "subscribers": subscribers,
        "client_processes": workers,
        "open_seconds": round(open_seconds, 1),
        "publish_rate_per_s": rate,
        # Every delivery arrived and every client was connected again after each drain.
        "complete": arrived and all(d["every_client_connected"] for d in drains),
        "publisher": sends,
        "history": history_figures(stored, publisher.sent_numbers),
        "deliveries": delivery_figures(tallies),
        # Each is a subscriber told `recovered=false` on a rejoin: it missed events history could not replay.
        "resumes_not_recovered": unrecovered,
        "drains": drains,
        "balancer": balanced,
        "server_log": cluster.logs.section().report(),
        "server_pids": {name: process.pid for name, process in cluster.processes.items()},
        "worker_pids": [*pool.pids, balancer.pid],
    }
