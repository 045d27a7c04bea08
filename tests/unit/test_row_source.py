"""The read path: cache levels, negative entries, byte budget and coalesced misses."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferstack.core.definitions import CachePolicy
from inferstack.core.registry import Registry
from inferstack.featurestore.cache.base import MISS
from inferstack.featurestore.cache.memory import ENTRY_OVERHEAD, MemoryCache
from inferstack.featurestore.rows import RowSource
from inferstack.kv.lmdb import LmdbStorage

POLICY = CachePolicy()


class SlowStorage(LmdbStorage):
    """Real LMDB whose reads take a while, so concurrent misses overlap."""

    reads_inline = False  # it sleeps: reads yield to the loop like a network store's

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[list[bytes]] = []

    async def read(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self.reads.append(list(keys))
        await asyncio.sleep(0.05)
        return await super().read(group, keys)

    async def prepare(self, registry: Registry) -> None:
        self._database("g", create=True)


async def test_concurrent_misses_of_one_key_share_one_storage_read(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k1", b"row1"), (b"k2", b"row2")])
    source = RowSource(storage, MemoryCache())
    results = await asyncio.gather(
        *(source.read("g", [b"k1", b"k2", b"k3"], POLICY) for _ in range(10))
    )
    assert all(r == [b"row1", b"row2", None] for r in results)
    assert len(storage.reads) == 1
    # Now cached, negative entry included: no more storage reads.
    assert await source.read("g", [b"k3", b"k1"], POLICY) == [None, b"row1"]
    assert len(storage.reads) == 1


async def test_disabled_cache_policy_always_reads_storage(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k", b"v")])
    source = RowSource(storage, MemoryCache())
    off = CachePolicy(enabled=False)
    await source.read("g", [b"k"], off)
    await source.read("g", [b"k"], off)
    assert len(storage.reads) == 2


async def test_second_level_hit_back_fills_the_first(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path)
    local, shared = MemoryCache(), MemoryCache()
    await shared.set_many("g", [(b"k", b"from-shared")], 60, 10)
    source = RowSource(storage, local, shared)
    assert await source.read("g", [b"k"], POLICY) == [b"from-shared"]
    assert await local.get_many("g", [b"k"]) == [b"from-shared"]
    assert storage.reads == []


async def test_memory_cache_respects_its_byte_budget_and_ttl() -> None:
    entry = 100 + 3 + ENTRY_OVERHEAD
    cache = MemoryCache(max_bytes=entry * 3)
    await cache.set_many("g", [(b"k%d" % i, b"x" * 100) for i in range(5)], 60, 10)
    assert len(cache) == 3 and cache.used_bytes <= cache.max_bytes
    assert await cache.get_many("g", [b"k0", b"k4"]) == [MISS, b"x" * 100]  # oldest evicted
    await cache.set_many("g", [(b"gone", b"v"), (b"nothing", None)], 0.05, 0.05)
    assert await cache.get_many("g", [b"gone", b"nothing"]) == [b"v", None]
    await asyncio.sleep(0.08)
    assert await cache.get_many("g", [b"gone", b"nothing"]) == [MISS, MISS]


async def test_a_failing_cache_never_fails_a_read(tmp_path: Path) -> None:
    class BrokenCache(MemoryCache):
        async def get_many(self, group: str, keys: Sequence[bytes]) -> list[object]:  # type: ignore[override]
            raise ConnectionError("down")

        async def set_many(self, *args: object, **kwargs: object) -> None:
            raise ConnectionError("down")

    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k", b"v")])
    source = RowSource(storage, BrokenCache())
    assert await source.read("g", [b"k", b"j"], POLICY) == [b"v", None]


async def test_reads_do_not_wait_for_the_shared_cache_back_fill(tmp_path: Path) -> None:
    class SlowShared(MemoryCache):
        async def set_many(self, *args: Any, **kwargs: Any) -> None:
            await asyncio.sleep(0.3)
            await super().set_many(*args, **kwargs)

    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k", b"v")])
    local, shared = MemoryCache(), SlowShared()
    source = RowSource(storage, local, shared)
    started = asyncio.get_running_loop().time()
    assert await source.read("g", [b"k"], POLICY) == [b"v"]
    assert asyncio.get_running_loop().time() - started < 0.25  # storage takes 0.05 s
    assert await local.get_many("g", [b"k"]) == [b"v"]  # the in-process level is filled at once
    assert await shared.get_many("g", [b"k"]) == [MISS]
    await asyncio.sleep(0.4)  # the back-fill finishes in the background
    assert await shared.get_many("g", [b"k"]) == [b"v"]
