"""This device's end-to-end state in its key store, saved in groups.

Sections: "sessions" (peer device id -> its ratchet sessions), "signed_prekeys",
"one_time_prekeys", "kem_prekeys" (key id -> private key and times), "pins"
(user id -> pinned user key), "device_lists" (user id -> highest counter
seen) and "meta". Values are JSON documents or raw bytes.

`persist()` returns once a save that includes every change made before the
call is on disk; callers that persist at the same time share one write,
done off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from parley.keystore import KeyStore


class E2eState:
    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._changes = 0
        self._saved = 0
        self._saving = asyncio.Lock()

    def get_json(self, section: str, name: str) -> Any:
        value = self.store.get(section, name)
        return None if value is None else json.loads(value)

    def put_json(self, section: str, name: str, value: Any) -> None:
        self.put(section, name, json.dumps(value, sort_keys=True).encode())

    def get(self, section: str, name: str) -> bytes | None:
        return self.store.get(section, name)

    def put(self, section: str, name: str, value: bytes) -> None:
        self.store.put(section, name, value)
        self._changes += 1

    def delete(self, section: str, name: str) -> None:
        self.store.delete(section, name)
        self._changes += 1

    def names(self, section: str) -> list[str]:
        return self.store.names(section)

    async def persist(self) -> None:
        wanted = self._changes
        async with self._saving:
            if self._saved >= wanted:
                return  # a save that began after our changes has finished
            covered = self._changes
            data = self.store.serialize()
            await asyncio.to_thread(self.store.write, data)
            self._saved = covered
