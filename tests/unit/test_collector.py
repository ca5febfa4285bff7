"""The cyclic garbage collector set for a long-running server (services/runtime/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.runtime.collector import tune_collector
from services.runtime.config import ServerConfig


@pytest.fixture
def python_settings() -> Iterator[tuple[int, int, int]]:
    settings = gc.get_threshold()
    try:
        yield settings
    finally:
        gc.unfreeze()
        gc.set_threshold(*settings)


def test_a_started_server_freezes_what_it_built_and_collects_less_often(
    python_settings: tuple[int, int, int],
) -> None:
    frozen = gc.get_freeze_count()
    tune_collector(ServerConfig().gc_threshold)
    assert gc.get_threshold() == (20_000, *python_settings[1:])
    assert gc.get_freeze_count() > frozen


def test_zero_leaves_pythons_collector_as_it_is(python_settings: tuple[int, int, int]) -> None:
    frozen = gc.get_freeze_count()
    tune_collector(0)
    assert gc.get_threshold() == python_settings
    assert gc.get_freeze_count() == frozen
