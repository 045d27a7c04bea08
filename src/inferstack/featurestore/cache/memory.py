"""In-process row cache: a byte budget, expiry, negative entries, oldest-first eviction.

Memory is what this cache is about, so an entry is just a dict slot per key: the row's
bytes (or one shared marker for "known absent") under the key's bytes, in a dict per
feature group. Expiry is kept per *batch*, not per entry: every `set_many` call stores its
keys with one deadline, and batches with the same lifetime sit in one queue in deadline
order, so expired batches are dropped from the queue heads and a lookup never has to
check a deadline. Over budget, the oldest batch goes first (FIFO): with entries that
expire anyway, that costs little hit rate and keeps hits to one dict lookup.

Each group's dict belongs to one cache generation: the first read or write at a newer
generation drops the group's entries at once (their batches, tagged with the old
generation, then expire without touching the new entries), and writes at an older one are
ignored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from inferstack.featurestore.cache.base import MISS, CachedRow

ENTRY_OVERHEAD = 140  # dict slot + batch pointer (~66 B) + two bytes-object headers (~74 B)
_ABSENT = object()  # stored for negative entries; one shared object, no memory per entry


@dataclass
class _Batch:
    group: str
    generation: int
    keys: list[bytes]
    deadline: float
    born: float = field(default_factory=time.monotonic)
    evicted: int = 0  # keys[:evicted] are gone already (evicted oldest first)


class MemoryCache:
    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._groups: dict[str, dict[bytes, object]] = {}
        self._generations: dict[str, int] = {}
        self._queues: dict[float, deque[_Batch]] = {}  # lifetime -> batches, oldest first

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._groups.values())

    async def get_many(
        self, group: str, keys: Sequence[bytes], generation: int = 0
    ) -> list[CachedRow]:
        return self.get_many_sync(group, keys, generation)

    def get_many_sync(
        self, group: str, keys: Sequence[bytes], generation: int = 0
    ) -> list[CachedRow]:
        self._expire(time.monotonic())
        rows = self._groups.get(group)
        if generation != self._generations.get(group, 0):
            if generation > self._generations.get(group, 0):
                self._advance(group, generation)
            rows = None
        if rows is None:
            return [MISS] * len(keys)
        get = rows.get
        found = [get(key, MISS) for key in keys]
        return [None if value is _ABSENT else value for value in found]  # type: ignore[misc]

    async def set_many(
        self,
        group: str,
        items: Sequence[tuple[bytes, bytes | None]],
        ttl: float,
        negative_ttl: float,
        generation: int = 0,
    ) -> None:
        current = self._generations.get(group, 0)
        if generation < current:
            return  # read before the group moved on: must not come back
        if generation > current:
            self._advance(group, generation)
        now = time.monotonic()
        self._expire(now)
        rows = self._groups.setdefault(group, {})
        for lifetime, wanted in ((ttl, True), (negative_ttl, False)):
            if lifetime <= 0:
                continue
            keys = []
            for key, row in items:
                if (row is not None) != wanted:
                    continue
                size = _size(key, row)
                if size > self.max_bytes:
                    continue
                old = rows.get(key)
                if old is not None:
                    self.used_bytes -= _size(key, old)
                else:
                    keys.append(key)  # a key already queued keeps its earlier deadline
                rows[key] = _ABSENT if row is None else row
                self.used_bytes += size
            if keys:
                queue = self._queues.setdefault(lifetime, deque())
                queue.append(_Batch(group, generation, keys, now + lifetime, now))
        while self.used_bytes > self.max_bytes and self._evict_oldest():
            pass

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> bool:
        self.invalidate_sync(group, keys)
        return True

    def invalidate_sync(self, group: str, keys: Sequence[bytes]) -> None:
        rows = self._groups.get(group)
        if rows is None:
            return
        for key in keys:
            old = rows.pop(key, None)
            if old is not None:
                self.used_bytes -= _size(key, old)

    def clear(self) -> None:
        """Forget every entry (generations are kept: they only ever move forward)."""
        self._groups.clear()
        self._queues.clear()
        self.used_bytes = 0

    async def close(self) -> None:
        self.clear()

    def _advance(self, group: str, generation: int) -> None:
        rows = self._groups.pop(group, None)
        if rows:
            self.used_bytes -= sum(_size(key, row) for key, row in rows.items())
        self._generations[group] = generation

    def _expire(self, now: float) -> None:
        for queue in self._queues.values():
            while queue and queue[0].deadline <= now:
                self._drop(queue.popleft())

    def _evict_oldest(self) -> bool:
        """Drop the oldest key still cached; False when nothing is left to drop."""
        heads = [queue for queue in self._queues.values() if queue]
        if not heads:
            return False
        queue = min(heads, key=lambda q: q[0].born)
        batch = queue[0]
        key = batch.keys[batch.evicted]
        batch.evicted += 1
        if batch.evicted == len(batch.keys):
            queue.popleft()
        self._forget(batch, key)
        return True

    def _drop(self, batch: _Batch) -> None:
        for key in batch.keys[batch.evicted :]:
            self._forget(batch, key)

    def _forget(self, batch: _Batch, key: bytes) -> None:
        if batch.generation != self._generations.get(batch.group, 0):
            return  # its group moved on: the entries it stood for are gone already
        rows = self._groups.get(batch.group)
        old = rows.pop(key, None) if rows is not None else None
        if old is not None:
            self.used_bytes -= _size(key, old)


def _size(key: bytes, row: object) -> int:
    return len(key) + (len(row) if isinstance(row, bytes) else 0) + ENTRY_OVERHEAD
