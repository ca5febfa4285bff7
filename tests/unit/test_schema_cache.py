"""The compiled-schema cache: a hit by the schema's hash, bounded by bytes, least recently used out."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from google.protobuf import struct_pb2

from parley.room.v1 import room_pb2
from parley.values import to_value
from services.room import rules
from services.room.rules import CompiledSchema, EventRules
from services.room.schema_cache import SchemaCache
from services.runtime.errors import ServiceError


class Counting:
    """A compile function that records what it compiled, and on which thread."""

    def __init__(self, fail: bool = False) -> None:
        self.compiled: list[bytes] = []
        self.threads: set[int] = set()
        self.fail = fail

    def __call__(self, data: bytes) -> str:
        self.compiled.append(data)
        self.threads.add(threading.get_ident())
        if self.fail:
            raise ValueError("no")
        return data.decode().upper()


async def test_the_same_bytes_compile_once_off_the_event_loop() -> None:
    compile = Counting()
    cache = SchemaCache(compile, max_bytes=1000)
    assert await cache.compile(b"a") == "A"
    assert await cache.compile(b"a") == "A"
    assert await cache.compile(b"b") == "B"
    assert (compile.compiled, cache.hits, cache.misses) == ([b"a", b"b"], 1, 2)
    assert threading.get_ident() not in compile.threads


async def test_concurrent_requests_for_one_schema_share_its_compilation() -> None:
    compile = Counting()
    cache = SchemaCache(compile, max_bytes=1000)
    results = await asyncio.gather(*(cache.compile(b"same") for _ in range(5)))
    assert results == ["SAME"] * 5
    assert compile.compiled == [b"same"]


async def test_the_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    compile = Counting()
    cache = SchemaCache(compile, max_bytes=20)
    for data in (b"a" * 10, b"b" * 10):
        await cache.compile(data)
    await cache.compile(b"a" * 10)  # used again: "b" is now the oldest
    await cache.compile(b"c" * 10)
    assert (len(cache), cache.bytes_held) == (2, 20)
    await cache.compile(b"a" * 10)
    assert len(compile.compiled) == 3  # "a" was still held
    await cache.compile(b"b" * 10)
    assert compile.compiled[-1] == b"b" * 10  # "b" was evicted: compiled again
    assert cache.bytes_held <= 20


async def test_a_failure_is_not_kept() -> None:
    compile = Counting(fail=True)
    cache = SchemaCache(compile, max_bytes=1000)
    for _ in range(2):
        with pytest.raises(ValueError, match="no"):
            await cache.compile(b"bad")
    assert (compile.compiled, len(cache), cache.bytes_held) == ([b"bad", b"bad"], 0, 0)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


async def test_equal_schemas_written_differently_compile_once() -> None:
    compiled: list[bytes] = []

    def compile(data: bytes) -> CompiledSchema:
        compiled.append(data)
        return rules.compile_schema(data)

    cache = SchemaCache(compile, max_bytes=100_000)
    one = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
    other = {"properties": {"text": {"type": "string"}}, "required": ["text"], "type": "object"}
    room = room_pb2.Room(
        room_id="r",
        creator="u",
        events=[room_pb2.EventDefinition(name="a", schema=struct(one)), room_pb2.EventDefinition(name="b")],
    )
    again = room_pb2.Room(room_id="s", creator="v", events=[room_pb2.EventDefinition(name="c", schema=struct(other))])
    first = await EventRules(room, cache).compile()
    second = await EventRules(again, cache).compile()
    assert len(compiled) == 1
    second.validate("c", to_value({"text": "hi"}))
    with pytest.raises(ServiceError) as refused:
        first.validate("a", to_value({"text": 1}))
    assert refused.value.metadata["field"] == "payload.text"


async def test_a_cached_schema_with_patterns_is_still_refused_in_a_run_time_room() -> None:
    cache = SchemaCache(rules.compile_schema, max_bytes=100_000)
    schema = struct({"type": "string", "pattern": "^a+$"})
    declared = room_pb2.Room(room_id="d", events=[room_pb2.EventDefinition(name="e", schema=schema)])
    created = room_pb2.Room(room_id="r", creator="u", events=[room_pb2.EventDefinition(name="e", schema=schema)])
    await EventRules(declared, cache).compile()
    with pytest.raises(ServiceError) as refused:
        await EventRules(created, cache).compile()
    assert refused.value.metadata["field"] == "events[0].schema"
    assert cache.hits == 1
