from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley.client import Client
from services import allinone
from tests.support import make_config, running


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server_address(data_dir: Path) -> AsyncIterator[str]:
    """An all-in-one server on an ephemeral port."""
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        yield address


@pytest.fixture
async def alice(server_address: str, tmp_path: Path) -> AsyncIterator[Client]:
    async with Client(server_address, username="alice", key_file=tmp_path / "alice.json") as client:
        yield client
