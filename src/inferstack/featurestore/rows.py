"""The read path for encoded rows: in-process cache, shared cache, storage, back-fill.

Concurrent misses of the same key share one storage read: the first request to miss a
key registers the storage batch it is fetching, later ones wait for that batch.

Caches follow writes (see configstore/cachefeed.py). Each group has a cache generation,
which every read uses for its lookups and its back-fills; the feed moves it on (ingest, or
a Persist whose shared invalidation failed) and keys written by a Persist anywhere are
`forget`-ten here. A read snapshots the group's generation, this worker's invalidation
count and its start time, and back-fills nothing that changed since: not after the
generation moved, not keys invalidated while it ran, nothing once it is older than
FILL_WINDOW (the shared cache's tombstones outlive that). So a read that fetched a row just
before a write never puts the old row back after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from inferstack import metrics
from inferstack.core.definitions import CachePolicy
from inferstack.featurestore.cache.base import MISS, CachedRow, RowCache
from inferstack.featurestore.cache.memory import MemoryCache
from inferstack.featurestore.storage.base import FeatureStorage

log = logging.getLogger(__name__)

Batch = asyncio.Future[dict[bytes, bytes | None]]
MAX_PENDING_FILLS = 256
# A read that took longer than this back-fills nothing. Must stay below the shared cache's
# invalidation hold (redis.DEFAULT_INVALIDATION_HOLD, 3 s), so no read that began before a
# write can fill after the write's tombstone is gone.
FILL_WINDOW = 2.0


class InvalidationPublisher(Protocol):
    """Tells every other worker about keys this worker wrote (cache/coherence.py)."""

    async def publish(self, group: str, keys: Sequence[bytes], *, bump: bool) -> None:
        """Returns once published; `bump` asks for a new generation instead of keys.
        Raises UnavailableError if nothing could be published."""
        ...


@dataclass(frozen=True)
class _Snapshot:
    """What a read saw when it started; back-fills are checked against it."""

    generation: int
    invalidations: int
    started: float


class RowSource:
    def __init__(
        self,
        storage: FeatureStorage,
        local_cache: MemoryCache | None = None,
        shared_cache: RowCache | None = None,
        publisher: InvalidationPublisher | None = None,
    ) -> None:
        self.storage = storage
        self.local = local_cache
        self.shared = shared_cache
        self.publisher = publisher
        self.caches: list[RowCache] = [
            cache for cache in (local_cache, shared_cache) if cache is not None
        ]
        self.generations: dict[str, int] = {}  # cache generation per group; absent = 0
        self.caching = True  # False while the cache feed cannot be heard: caches bypassed
        self._invalidations = 0  # forget() calls so far; a read remembers where it started
        self._invalidated: dict[tuple[str, bytes], int] = {}  # key -> its latest forget()
        self._lost_at = 0  # the forget() count when everything was last forgotten
        self._recent: deque[tuple[float, int, str, Sequence[bytes]]] = deque()
        self._inflight: dict[tuple[str, bytes], Batch] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self._levels = ["shared" if cache is shared_cache else "local" for cache in self.caches]
        self._lookups: dict[tuple[int, str], tuple[Counter, Counter]] = {}

    def _counters(self, level: int, group: str) -> tuple[Counter, Counter]:
        """Hit and miss counters of one cache level and group (labels resolved once)."""
        counters = self._lookups.get((level, group))
        if counters is None:
            name = self._levels[level]
            counters = (
                metrics.CACHE_LOOKUPS.labels(name, "hit", group),
                metrics.CACHE_LOOKUPS.labels(name, "miss", group),
            )
            self._lookups[(level, group)] = counters
        return counters

    async def read(
        self, group: str, keys: Sequence[bytes], policy: CachePolicy
    ) -> list[bytes | None]:
        caches = self.caches if policy.enabled and self.caching else []
        if not caches and self.storage.reads_inline:  # nothing to look up or fill: read
            metrics.STORAGE_KEYS.inc(len(keys))
            return await self.storage.read(group, keys)
        snapshot = _Snapshot(self.generations.get(group, 0), self._invalidations, time.monotonic())
        found: list[CachedRow] = [MISS] * len(keys)
        pending = list(range(len(keys)))
        for level, cache in enumerate(caches):
            asked = keys if level == 0 else [keys[i] for i in pending]
            values = await _safe_get(cache, group, asked, snapshot.generation)
            misses = values.count(MISS)
            hits, missed = self._counters(level, group)
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
                await self._fill(caches[:level], group, refill, policy, snapshot)
            pending = still
            if not pending:
                break
        if pending:
            fetched = await self._from_storage(group, [keys[i] for i in pending])
            for index in pending:
                found[index] = fetched[keys[index]]
            items = [(keys[i], fetched[keys[i]]) for i in pending]
            await self._fill(caches, group, items, policy, snapshot)
        return found  # type: ignore[return-value]  # no MISS is left by now

    async def _from_storage(self, group: str, keys: list[bytes]) -> dict[bytes, bytes | None]:
        if self.storage.reads_inline:  # nothing can be in flight: no batch to share
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
                    if self._inflight.get((group, key)) is mine:  # forget() may have moved on
                        del self._inflight[(group, key)]
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
        snapshot: _Snapshot,
    ) -> None:
        """Back-fill: the in-process cache now, the shared one in the background.

        A read never waits for a network write to a cache; if the shared cache falls behind
        (more than MAX_PENDING_FILLS writes pending), further back-fills are skipped.
        """
        items = self._still_current(group, items, snapshot)
        if not items:
            return
        generation = snapshot.generation
        for cache in caches:
            if cache is not self.shared:
                await _safe_set(cache, group, items, policy, generation)
            elif len(self._fills) < MAX_PENDING_FILLS:  # else skipped: the cache is behind
                task = asyncio.create_task(_safe_set(cache, group, items, policy, generation))
                self._fills.add(task)
                task.add_done_callback(self._fills.discard)

    def _still_current(
        self, group: str, items: list[tuple[bytes, bytes | None]], snapshot: _Snapshot
    ) -> list[tuple[bytes, bytes | None]]:
        """The items a read may back-fill: none if its group moved on, caching stopped or
        the read is too old; else all but keys invalidated since the read began."""
        if (
            not self.caching
            or self.generations.get(group, 0) != snapshot.generation
            or time.monotonic() - snapshot.started > FILL_WINDOW
            or snapshot.invalidations < self._lost_at
        ):
            return []
        if self._invalidations == snapshot.invalidations:
            return items
        invalidated = self._invalidated
        since = snapshot.invalidations
        return [item for item in items if invalidated.get((group, item[0]), 0) <= since]

    # -- following writes -------------------------------------------------------------------

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> None:
        """After this worker wrote `keys`: forget them here, in the shared cache and, through
        the publisher, in every other worker; a new generation if the shared cache failed."""
        self.forget(group, keys)
        shared_done = True
        if self.shared is not None:
            try:
                shared_done = await self.shared.invalidate(group, keys)
            except Exception:
                log.warning("shared cache failed to invalidate", exc_info=True)
                shared_done = False
        if self.publisher is not None:
            await self.publisher.publish(group, keys, bump=not shared_done)
        elif not shared_done:
            log.warning("shared cache could not forget %d key(s) of %s", len(keys), group)

    def forget(self, group: str, keys: Sequence[bytes]) -> None:
        """Keys written somewhere: out of the in-process cache, and no read that began
        before now may back-fill them."""
        if not self.caches and self.storage.reads_inline:
            return  # nothing cached, filled or in flight here (the embedded default)
        self._invalidations += 1
        now = time.monotonic()
        count = self._invalidations
        for key in keys:
            self._invalidated[(group, key)] = count
            self._inflight.pop((group, key), None)  # later reads must not join an old batch
        self._recent.append((now, count, group, keys))
        while self._recent and self._recent[0][0] < now - FILL_WINDOW:
            _, old, old_group, old_keys = self._recent.popleft()
            for key in old_keys:
                if self._invalidated.get((old_group, key)) == old:
                    del self._invalidated[(old_group, key)]
        if self.local is not None:
            self.local.invalidate_sync(group, keys)

    def forget_batch(self, batch: Mapping[str, Sequence[bytes]]) -> None:
        for group, keys in batch.items():
            self.forget(group, keys)

    def forget_everything(self) -> None:
        """Invalidations may have been missed: nothing cached in process can be trusted."""
        self._invalidations += 1
        self._recent.clear()
        self._invalidated.clear()
        self._lost_at = self._invalidations  # reads that began before this fill nothing
        if self.local is not None:
            self.local.clear()

    def set_generations(self, generations: Mapping[str, int]) -> None:
        """Groups whose generation moved forward; older values (late echoes) are ignored."""
        for group, generation in generations.items():
            if generation > self.generations.get(group, 0):
                self.generations[group] = generation

    def set_caching(self, live: bool) -> None:
        """The cache feed went quiet (False: bypass caches) or can be heard again."""
        if live and not self.caching:
            self.forget_everything()
        self.caching = live

    async def close(self) -> None:
        if self._fills:
            await asyncio.wait(self._fills, timeout=1.0)
        for cache in self.caches:
            await cache.close()
        await self.storage.close()


async def _safe_set(
    cache: RowCache,
    group: str,
    items: list[tuple[bytes, bytes | None]],
    policy: CachePolicy,
    generation: int,
) -> None:
    try:
        await cache.set_many(group, items, policy.ttl, policy.negative_ttl, generation)
    except Exception:  # a cache is an optimisation; never fail a read for it
        log.warning("cache %s failed to store rows", type(cache).__name__, exc_info=True)


async def _safe_get(
    cache: RowCache, group: str, keys: Sequence[bytes], generation: int
) -> list[CachedRow]:
    try:
        return await cache.get_many(group, keys, generation)
    except Exception:
        log.warning("cache %s failed to read; using storage", type(cache).__name__, exc_info=True)
        return [MISS] * len(keys)
