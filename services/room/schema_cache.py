"""Compiled JSON Schemas, shared by everything in the process, keyed by the schema's hash.

Compiling a large schema takes fastjsonschema hundreds of milliseconds (it
writes and compiles Python), so it happens on a worker thread, never on the
event loop, and each distinct schema is compiled once: the same schema in
another room, a room announced again to a gateway, or the room service and
a gateway in one process all share the result. The cache is bounded by the
bytes of the schemas it holds, least recently used first out.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

# One thread: compilations take turns, and the event loop shares the GIL with
# one busy thread at most, however many rooms arrive at once.
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="schema-compile")


def schema_key(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class SchemaCache(Generic[T]):
    """`compile(data)` results by the hash of `data` (a schema in canonical form)."""

    def __init__(self, compile: Callable[[bytes], T], max_bytes: int) -> None:
        self._compile = compile
        self._max_bytes = max_bytes
        # Each entry: the compilation (done or under way) and the schema's size.
        self._entries: OrderedDict[bytes, tuple[Future[T], int]] = OrderedDict()
        self._bytes = 0
        # Gateways and the room service may run on other loops, in other threads.
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    async def compile(self, data: bytes) -> T:
        """The compiled schema, from the cache or from the worker thread; raises what compiling raised."""
        key = schema_key(data)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                future = entry[0]
            else:
                self.misses += 1
                future = _COMPILER.submit(self._compile, data)
                self._entries[key] = (future, len(data))
                self._bytes += len(data)
                future.add_done_callback(lambda done: self._forget_failure(key, done))
                self._evict()
        # Shielded: a caller that stops waiting does not cancel what others wait for.
        return await asyncio.shield(asyncio.wrap_future(future))

    def _forget_failure(self, key: bytes, future: Future[T]) -> None:
        """A schema that failed to compile is not kept (its error names the caller's field)."""
        if future.cancelled() or future.exception() is None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is future:
                del self._entries[key]
                self._bytes -= entry[1]

    def _evict(self) -> None:
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
