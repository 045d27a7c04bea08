"""The read path follows writes: generations, forgotten keys, the races around back-fills,
and the coalescing publisher over a real file config store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest

from inferstack.configstore.files import open_files
from inferstack.core.definitions import CachePolicy
from inferstack.core.errors import UnavailableError
from inferstack.core.registry import Registry
from inferstack.featurestore.cache.base import MISS
from inferstack.featurestore.cache.coherence import CacheCoherence
from inferstack.featurestore.cache.memory import MemoryCache
from inferstack.featurestore.rows import RowSource
from inferstack.kv.lmdb import LmdbStorage

POLICY = CachePolicy(ttl=600, negative_ttl=600)


class SlowStorage(LmdbStorage):
    """Real LMDB whose reads take a while, so a write can land while a read is in flight."""

    reads_inline = False

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0

    async def read(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self.reads += 1
        rows = self.read_sync(group, keys)  # what storage held when the read began
        await asyncio.sleep(0.05)
        return rows

    async def prepare(self, registry: Registry) -> None:
        pass


class Published:
    """Records what RowSource.invalidate asks a publisher for (pure logic)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes], bool]] = []

    async def publish(self, group: str, keys: Sequence[bytes], *, bump: bool) -> None:
        self.calls.append((group, list(keys), bump))


class CountingFeed:
    """A cache feed that counts its writes (keys published, generations bumped) and the key
    publishes it spared because no process caches rows; the rest goes to the feed it wraps."""

    def __init__(self, feed: Any) -> None:
        self.feed = feed
        self.writes = 0
        self.unheard = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.feed, name)

    def has_key_subscribers(self) -> bool:
        heard: bool = self.feed.has_key_subscribers()
        self.unheard += not heard
        return heard

    def invalidate_keys(self, batch: Any) -> dict[str, int]:
        generations: dict[str, int] = self.feed.invalidate_keys(batch)
        self.writes += 1
        return generations

    def bump_generations(self, groups: Collection[str]) -> dict[str, int]:
        generations: dict[str, int] = self.feed.bump_generations(groups)
        self.writes += 1
        return generations


class FailingSharedCache(MemoryCache):
    async def invalidate(self, group: str, keys: Sequence[bytes]) -> bool:
        return False  # what RedisCache answers with its breaker open


async def started(coroutine_task: asyncio.Task[list[bytes | None]]) -> None:
    await asyncio.sleep(0.01)  # the read is now waiting on storage
    assert not coroutine_task.done()


async def test_a_read_that_began_before_a_bump_does_not_back_fill(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k", b"old")])
    source = RowSource(storage, MemoryCache())
    reading = asyncio.create_task(source.read("g", [b"k"], POLICY))
    await started(reading)
    storage.write_sync("g", [(b"k", b"new")])
    source.set_generations({"g": 5})
    assert await reading == [b"old"]  # it began before the write
    assert await source.read("g", [b"k"], POLICY) == [b"new"]
    assert await source.read("g", [b"k"], POLICY) == [b"new"]  # now cached, at generation 5
    assert storage.reads == 2


async def test_keys_forgotten_during_a_read_are_not_back_filled_but_others_are(
    tmp_path: Path,
) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k1", b"old"), (b"k2", b"two")])
    local = MemoryCache()
    source = RowSource(storage, local)
    reading = asyncio.create_task(source.read("g", [b"k1", b"k2"], POLICY))
    await started(reading)
    storage.write_sync("g", [(b"k1", b"new")])
    source.forget("g", [b"k1"])  # another worker's Persist, heard through the feed
    assert await reading == [b"old", b"two"]
    assert local.get_many_sync("g", [b"k1", b"k2"]) == [MISS, b"two"]
    assert await source.read("g", [b"k1"], POLICY) == [b"new"]


async def test_a_read_after_forget_does_not_join_an_older_storage_read(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k", b"old")])
    source = RowSource(storage, MemoryCache())
    first = asyncio.create_task(source.read("g", [b"k"], POLICY))
    await started(first)
    storage.write_sync("g", [(b"k", b"new")])
    source.forget("g", [b"k"])
    second = await source.read("g", [b"k"], POLICY)
    assert second == [b"new"], "a read that began after the write got the old row"
    assert await first == [b"old"]
    assert await source.read("g", [b"k"], POLICY) == [b"new"]


async def test_forget_everything_empties_the_local_cache_and_stops_fills_in_flight(
    tmp_path: Path,
) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"a", b"old"), (b"b", b"old")])
    local = MemoryCache()
    source = RowSource(storage, local)
    await source.read("g", [b"a"], POLICY)
    reading = asyncio.create_task(source.read("g", [b"b"], POLICY))
    await started(reading)
    storage.write_sync("g", [(b"a", b"new"), (b"b", b"new")])
    source.forget_everything()
    await reading
    assert len(local) == 0
    assert await source.read("g", [b"a", b"b"], POLICY) == [b"new", b"new"]


async def test_while_the_feed_is_down_caches_are_bypassed(tmp_path: Path) -> None:
    storage = SlowStorage(tmp_path)
    storage.write_sync("g", [(b"k", b"v1")])
    local = MemoryCache()
    source = RowSource(storage, local)
    await source.read("g", [b"k"], POLICY)
    source.set_caching(False)
    storage.write_sync("g", [(b"k", b"v2")])
    assert await source.read("g", [b"k"], POLICY) == [b"v2"]
    assert await source.read("g", [b"k"], POLICY) == [b"v2"]
    assert storage.reads == 3  # every read went to storage
    source.set_caching(True)  # whatever was missed meanwhile: the local cache starts empty
    assert len(local) == 0
    assert await source.read("g", [b"k"], POLICY) == [b"v2"]


async def test_generations_only_move_forward(tmp_path: Path) -> None:
    source = RowSource(LmdbStorage(tmp_path))
    source.set_generations({"g": 10, "h": 3})
    source.set_generations({"g": 7})  # a late echo of an older bump
    assert source.generations == {"g": 10, "h": 3}


async def test_invalidate_publishes_keys_or_a_bump_when_the_shared_cache_failed(
    tmp_path: Path,
) -> None:
    storage = LmdbStorage(tmp_path)
    published = Published()
    working = RowSource(storage, MemoryCache(), MemoryCache(), published)
    await working.invalidate("g", [b"a", b"b"])
    failing = RowSource(storage, MemoryCache(), FailingSharedCache(), published)
    await failing.invalidate("g", [b"c"])
    assert published.calls == [("g", [b"a", b"b"], False), ("g", [b"c"], True)]


# -- CacheCoherence over a real embedded cache feed -------------------------------------------


async def wait_for(condition: object, what: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_keys_written_by_one_worker_leave_every_other_workers_cache(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    storage = LmdbStorage(tmp_path / "lmdb")
    storage.write_sync("g", [(b"k", b"old")])
    workers = []
    for _ in range(2):
        source = RowSource(storage, MemoryCache())
        coherence = CacheCoherence(open_files(tmp_path).cache_feed, source, loop)
        coherence.start()
        workers.append((source, coherence))
    try:
        for source, _ in workers:
            assert await source.read("g", [b"k"], POLICY) == [b"old"]
        storage.write_sync("g", [(b"k", b"new")])
        await workers[0][0].invalidate("g", [b"k"])  # what Persist does after writing
        other = workers[1][0]
        assert other.local is not None
        await wait_for(lambda: other.local.get_many_sync("g", [b"k"]) != [b"old"], "the feed")
        assert await other.read("g", [b"k"], POLICY) == [b"new"]
        # A bump (ingest) moves every worker to a new generation.
        generation = open_files(tmp_path).cache_feed.bump_generations(["g"])["g"]
        await wait_for(lambda: other.generations.get("g") == generation, "the bump")
    finally:
        for _, coherence in workers:
            coherence.stop()


async def test_concurrent_persists_are_coalesced_into_fewer_publishes(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    source = RowSource(LmdbStorage(tmp_path / "lmdb"), MemoryCache())
    feed = CountingFeed(open_files(tmp_path).cache_feed)
    coherence = CacheCoherence(feed, source, loop)  # type: ignore[arg-type]  # a spy
    coherence.start()
    try:
        await asyncio.gather(*(source.invalidate("g", [str(i).encode()]) for i in range(50)))
        assert 1 <= feed.writes < 50
        assert open_files(tmp_path).cache_feed.load_state().sequence == feed.writes
    finally:
        coherence.stop()


async def test_a_publish_that_cannot_reach_the_config_store_fails_the_persist(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    store = open_files(tmp_path).cache_feed
    source = RowSource(LmdbStorage(tmp_path / "lmdb"), MemoryCache())
    coherence = CacheCoherence(store, source, loop)
    coherence.start()
    coherence.stop()  # (its watch would only log the breakage below every 50 ms)
    caching = store.subscribe_keys()  # another worker caches rows: keys must be published
    # Nothing can be written: where the feed's state file should be is a directory.
    (tmp_path / "config" / "cache" / "state.json").mkdir()
    try:
        with pytest.raises(UnavailableError, match="rows of g were written"):
            await source.invalidate("g", [b"k"])
    finally:
        caching.stop()


async def test_keys_are_not_published_while_no_process_caches(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    store = open_files(tmp_path).cache_feed
    storage = LmdbStorage(tmp_path / "lmdb")
    counted = CountingFeed(store)
    writer = CacheCoherence(counted, RowSource(storage), loop)  # type: ignore[arg-type]
    writer.start()  # no cache: it does not subscribe
    try:
        await writer.rows.invalidate("g", [b"a"])
        assert (counted.writes, counted.unheard) == (0, 1)
        assert store.load_state().sequence == 0
        reader = CacheCoherence(store, RowSource(storage, MemoryCache()), loop)
        reader.start()  # caches: subscribes before it reads anything
        try:
            await writer.rows.invalidate("g", [b"b"])
            assert (counted.writes, counted.unheard) == (1, 1)
            assert store.load_state().sequence == 1
        finally:
            reader.stop()
        await writer.rows.invalidate("g", [b"c"])
        assert (counted.writes, counted.unheard) == (1, 2)
    finally:
        writer.stop()


def test_a_subscription_lives_as_long_as_its_process(tmp_path: Path) -> None:
    store = open_files(tmp_path).cache_feed
    assert not store.has_key_subscribers()
    subscription = store.subscribe_keys()
    assert store.has_key_subscribers()
    subscription.stop()
    assert not store.has_key_subscribers()
    # Another process subscribes, then is killed (SIGKILL: it cannot clean up).
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from inferstack.configstore.files import open_files; "
         "open_files(Path(sys.argv[1])).cache_feed.subscribe_keys(); print('ready', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert store.has_key_subscribers()
    finally:
        child.kill()
        child.wait()
    left = list((tmp_path / "config" / "cache" / "subscribers").iterdir())
    assert len(left) == 1  # its file stays behind, no longer locked by anyone
    assert not store.has_key_subscribers()
    assert not left[0].exists()  # and is removed on the way
