"""The read path for encoded rows: in-process cache, shared cache, storage, back-fill.

Concurrent misses of the same key share one storage read: the first request to miss a
key registers the storage batch it is fetching, later ones wait for that batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from inferstack import metrics
from inferstack.core.definitions import CachePolicy
from inferstack.featurestore.cache.base import MISS, CachedRow, RowCache
from inferstack.featurestore.storage.base import FeatureStorage

log = logging.getLogger(__name__)

Batch = asyncio.Future[dict[bytes, bytes | None]]
MAX_PENDING_FILLS = 256


class RowSource:
    def __init__(
        self,
        storage: FeatureStorage,
        local_cache: RowCache | None = None,
        shared_cache: RowCache | None = None,
    ) -> None:
        self.storage = storage
        self.shared = shared_cache
        self.caches = [cache for cache in (local_cache, shared_cache) if cache is not None]
        self.storage_reads = 0  # batches sent to storage, for tests and metrics
        self.skipped_fills = 0  # shared-cache back-fills dropped because too many were pending
        self._inflight: dict[tuple[str, bytes], Batch] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._lookups = [
            (
                metrics.CACHE_LOOKUPS.labels(name, "hit"),
                metrics.CACHE_LOOKUPS.labels(name, "miss"),
            )
            for name in ("shared" if cache is shared_cache else "local" for cache in self.caches)
        ]

    async def read(
        self, group: str, keys: Sequence[bytes], policy: CachePolicy
    ) -> list[bytes | None]:
        caches = self.caches if policy.enabled else []
        if not caches and self.storage.reads_inline:  # nothing to look up or fill: read
            self.storage_reads += 1
            metrics.STORAGE_KEYS.inc(len(keys))
            return await self.storage.read(group, keys)
        found: list[CachedRow] = [MISS] * len(keys)
        pending = list(range(len(keys)))
        for level, cache in enumerate(caches):
            asked = keys if level == 0 else [keys[i] for i in pending]
            values = await _safe_get(cache, group, asked)
            misses = values.count(MISS)
            hits, missed = self._lookups[level]
            hits.inc(len(asked) - misses)
            if not misses:
                if level == 0:
                    return values  # type: ignore[return-value]  # the common all-hit case
            else:
                missed.inc(misses)
            still: list[int] = []
            refill: list[tuple[bytes, bytes | None]] = []
            for index, value in zip(pending, values, strict=True):
                if value is MISS:
                    still.append(index)
                else:
                    found[index] = value
                    refill.append((keys[index], value))  # type: ignore[arg-type]
            if level > 0 and refill:
                await self._fill(caches[:level], group, refill, policy)
            pending = still
            if not pending:
                break
        if pending:
            fetched = await self._from_storage(group, [keys[i] for i in pending])
            for index in pending:
                found[index] = fetched[keys[index]]
            await self._fill(caches, group, [(keys[i], fetched[keys[i]]) for i in pending], policy)
        return found  # type: ignore[return-value]  # no MISS is left by now

    async def _from_storage(self, group: str, keys: list[bytes]) -> dict[bytes, bytes | None]:
        if self.storage.reads_inline:  # nothing can be in flight: no batch to share
            self.storage_reads += 1
            metrics.STORAGE_KEYS.inc(len(keys))
            return dict(zip(keys, await self.storage.read(group, keys), strict=True))
        waiting: list[Batch] = []
        to_fetch: list[bytes] = []
        for key in dict.fromkeys(keys):  # a key asked twice in one request is read once
            batch = self._inflight.get((group, key))
            if batch is None:
                to_fetch.append(key)
            elif batch not in waiting:
                waiting.append(batch)
        result: dict[bytes, bytes | None] = {}
        if to_fetch:
            mine: Batch = asyncio.get_running_loop().create_future()
            for key in to_fetch:
                self._inflight[(group, key)] = mine
            try:
                self.storage_reads += 1
                metrics.STORAGE_KEYS.inc(len(to_fetch))
                rows = await self.storage.read(group, to_fetch)
                result.update(zip(to_fetch, rows, strict=True))
                mine.set_result(result)
            except BaseException as exc:
                mine.set_exception(exc)
                mine.exception()  # mark retrieved: waiters re-raise it, nobody else must
                raise
            finally:
                for key in to_fetch:
                    self._inflight.pop((group, key), None)
        for batch in waiting:
            shared = await batch
            result.update((key, shared[key]) for key in keys if key in shared)
        return result

    async def _fill(
        self,
        caches: Sequence[RowCache],
        group: str,
        items: list[tuple[bytes, bytes | None]],
        policy: CachePolicy,
    ) -> None:
        """Back-fill: the in-process cache now, the shared one in the background.

        A read never waits for a network write to a cache; if the shared cache falls behind
        (more than MAX_PENDING_FILLS writes pending), further back-fills are skipped.
        """
        for cache in caches:
            if cache is not self.shared:
                await _safe_set(cache, group, items, policy)
            elif len(self._fills) < MAX_PENDING_FILLS:
                task = asyncio.create_task(_safe_set(cache, group, items, policy))
                self._fills.add(task)
                task.add_done_callback(self._fills.discard)
            else:
                self.skipped_fills += 1

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> None:
        for cache in self.caches:
            try:
                await cache.invalidate(group, keys)
            except Exception:
                log.warning("cache %s failed to invalidate", type(cache).__name__, exc_info=True)

    async def close(self) -> None:
        if self._fills:
            await asyncio.wait(self._fills, timeout=1.0)
        for cache in self.caches:
            await cache.close()
        await self.storage.close()


async def _safe_set(
    cache: RowCache, group: str, items: list[tuple[bytes, bytes | None]], policy: CachePolicy
) -> None:
    try:
        await cache.set_many(group, items, policy.ttl, policy.negative_ttl)
    except Exception:  # a cache is an optimisation; never fail a read for it
        log.warning("cache %s failed to store rows", type(cache).__name__, exc_info=True)


async def _safe_get(cache: RowCache, group: str, keys: Sequence[bytes]) -> list[CachedRow]:
    try:
        return await cache.get_many(group, keys)
    except Exception:
        log.warning("cache %s failed to read; using storage", type(cache).__name__, exc_info=True)
        return [MISS] * len(keys)
