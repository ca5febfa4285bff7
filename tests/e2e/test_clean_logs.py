"""A normal run logs no warning or error, through a real server: streams cut off by their clients, and a
server stopped while its connections are still ending, with tracing off and on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from services import allinone
from services.runtime.config import HooksConfig, RoomDefinition
from tests.streams import Stream
from tests.support import make_config, running

STREAMS = 40


@pytest.mark.parametrize("tracing", ["off", "console"])
async def test_streams_cut_off_and_a_stop_under_load_log_nothing_alarming(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, tracing: str
) -> None:
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id="hall")],
        hooks=HooksConfig(authenticate="tests.hooks_for_tests:authenticate"),
        **{"telemetry.tracing": tracing, "telemetry.console_path": str(tmp_path / "spans.jsonl")},
    )
    caplog.set_level(logging.WARNING)
    async with running(allinone.create_server, config) as (server, address):
        async with grpc.aio.insecure_channel(address) as channel:
            cut = [await Stream(channel, f"let-me-in:cut{i}").open() for i in range(STREAMS)]
            await asyncio.gather(*(s.join("hall") for s in cut))
            await asyncio.gather(*(s.close() for s in cut))  # the clients go away mid-stream
            ending = [await Stream(channel, f"let-me-in:end{i}").open() for i in range(STREAMS)]
            await asyncio.gather(*(s.join("hall") for s in ending))
            for s in ending:
                s.half_close()  # their leaves are under way as the server stops
            await server.stop(grace=2.0)
    alarming = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert alarming == []
