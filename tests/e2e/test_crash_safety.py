"""kill -9 during a burst of publishes: every acknowledged event survives, no holes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc

from parley import Client
from parley.history.v1 import history_pb2, history_pb2_grpc
from tests.streams import payload_of, stream
from tests.support import ServerProcess, bearer, wait_until

CONFIG = """
[auth]
service_credentials = { backend = "crash-secret" }

[gateway]
events_per_window = 1000000

[[rooms]]
id = "ledger"

  [[rooms.events]]
  name = "entry"
  history = { enabled = true }
"""
PUBLISHERS = 3


async def publish_until_it_dies(address: str, token: str, name: str, acked: dict[int, dict[str, object]]) -> None:
    try:
        async with stream(address, token) as s:
            await s.join("ledger")
            n = 0
            while True:
                reply = await s.publish("ledger", "entry", {"by": name, "n": n})
                if reply.status.code != 0:
                    return
                acked[reply.publish.seqs[0]] = {"by": name, "n": n}
                n += 1
    except (grpc.aio.AioRpcError, TimeoutError, AssertionError):
        return  # the server was killed mid-call


async def test_acknowledged_publishes_survive_kill_9(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(CONFIG)
    args = ["--port", "0", "--data-dir", str(tmp_path / "data"), "--config", str(config)]
    server = ServerProcess(args, {}, tmp_path / "first.log")
    tokens = []
    try:
        for i in range(PUBLISHERS):
            async with Client(server.address, username=f"writer{i}", key_file=tmp_path / f"w{i}.json") as writer:
                tokens.append(await writer.access_token())
        acked: dict[int, dict[str, object]] = {}
        burst = [
            asyncio.create_task(publish_until_it_dies(server.address, token, f"w{i}", acked))
            for i, token in enumerate(tokens)
        ]
        await wait_until(lambda: len(acked) >= 300, within=30, interval=0.01)
        os.killpg(server.process.pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*burst), 20)
    finally:
        server.terminate()
    assert len(acked) >= 300

    again = ServerProcess(["--port", str(server.port), *args[2:]], {}, tmp_path / "second.log")
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            history = history_pb2_grpc.HistoryServiceStub(channel)
            kept: dict[int, object] = {}
            token = ""
            while True:
                page = await history.ListEvents(
                    history_pb2.ListEventsRequest(room_id="ledger", page_size=500, page_token=token),
                    metadata=bearer("svc:backend:crash-secret"),
                )
                kept.update({e.seq: e for e in page.events})
                if not (token := page.next_page_token):
                    break
            last_seq = page.last_seq
    finally:
        again.terminate()
    assert sorted(kept) == list(range(1, last_seq + 1))  # no holes
    for seq, entry in acked.items():
        assert seq in kept, f"acknowledged event {seq} was lost"
        assert payload_of(kept[seq]) == entry  # type: ignore[arg-type]
