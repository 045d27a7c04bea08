"""A failing shared cache never fails a read: RowSource over LMDB + RedisCache under faults.

Faults are real: the redis-server of scripts/services.py is stopped (SIGTERM, or SIGKILL as a
crash) and started again on the same port in the middle of a read load; `DEBUG SLEEP` makes
it hang; a port nobody listens on stands for a Redis that is gone.

These tests stop and restart the services dir's Redis: run them with a services dir of your
own (INFERSTACK_SERVICES_DIR) if other test runs share the default one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from inferstack.core.definitions import CachePolicy
from inferstack.featurestore.cache.breaker import BreakerState
from inferstack.featurestore.rows import RowSource
from inferstack.kv.lmdb import LmdbStorage
from tests.caches import CountingRedisCache
from tests.servers import services

pytestmark = pytest.mark.services

GROUP = "users"
POLICY = CachePolicy(ttl=600.0, negative_ttl=600.0)
READ_BOUND = 0.5  # no read may take longer: a bound against hangs, not a performance claim
BATCH = 4


@dataclass
class Dataset:
    rows: dict[bytes, bytes | None]  # what storage holds; None = no row

    def sample(self, rng: random.Random) -> list[bytes]:
        return rng.sample(list(self.rows), BATCH)


@dataclass
class ReadLoad:
    """Reads random batches and checks every answer against storage's truth."""

    source: RowSource
    data: Dataset
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    reads: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0

    async def read_once(self) -> None:
        keys = self.data.sample(self.rng)
        began = time.perf_counter()
        try:
            got = await self.source.read(GROUP, keys, POLICY)
        except Exception as exc:
            self.failures.append(f"read {self.reads} raised {exc!r}")
        else:
            expected = [self.data.rows[key] for key in keys]
            if got != expected:
                self.failures.append(f"read {self.reads} of {keys!r}: {got!r} != {expected!r}")
        self.slowest = max(self.slowest, time.perf_counter() - began)
        self.reads += 1

    async def run(self, until: asyncio.Event, at_least: int) -> None:
        while not until.is_set() or self.reads < at_least:
            await self.read_once()
            await asyncio.sleep(0.001)  # pace the load so it spans the whole outage

    async def reach(self, count: int) -> None:
        while self.reads < count:
            await asyncio.sleep(0.01)


@pytest.fixture
def dataset() -> Dataset:
    rows: dict[bytes, bytes | None] = {}
    for i in range(200):
        key = b"user\x00" + i.to_bytes(4, "big")
        # 150 real rows (header + payload), 50 keys storage has no row for.
        rows[key] = b"\x01\x00\x00\x01\x00\x00\x00\x00" + f"row {i}".encode() if i < 150 else None
    return Dataset(rows)


@pytest.fixture
async def storage(tmp_path: Path, dataset: Dataset) -> AsyncIterator[LmdbStorage]:
    lmdb_storage = LmdbStorage(tmp_path / "lmdb")
    lmdb_storage.write_sync(GROUP, [(k, v) for k, v in dataset.rows.items() if v is not None])
    yield lmdb_storage


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def report(case: str, load: ReadLoad, cache: CountingRedisCache) -> None:
    """How the cache fared, for whoever runs with -s."""
    print(
        f"\n{case}: {load.reads} reads ({len(load.failures)} failed), slowest "
        f"{load.slowest * 1000:.1f} ms; cache hits {cache.hits}, misses {cache.misses}, "
        f"errors {cache.errors}, rejected {cache.rejected}, "
        f"breaker opened {cache.breaker.times_opened}x, now {cache.breaker_state.value}"
    )


async def debug_sleep(admin: aioredis.Redis, seconds: float) -> None:
    # redis-py has no typed wrapper for DEBUG SLEEP (enabled for loopback in redis.conf).
    await admin.execute_command("DEBUG", "SLEEP", str(seconds))  # type: ignore[no-untyped-call]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("stop_args", [(), ("--kill",)], ids=["stop", "crash"])
async def test_reads_survive_redis_stopping_and_coming_back(
    redis_endpoint: str, storage: LmdbStorage, dataset: Dataset, stop_args: tuple[str, ...]
) -> None:
    cache = CountingRedisCache(redis_endpoint, prefix=f"test:{uuid.uuid4().hex}:")
    source = RowSource(storage, shared_cache=cache)
    load = ReadLoad(source, dataset)
    done = asyncio.Event()
    # A few concurrent readers, as a server has: they share the pool, breaker and counters.
    reader = asyncio.gather(*(load.run(done, at_least=2_000) for _ in range(4)))
    stopped = False
    try:
        await load.reach(300)
        # (Not errors == 0: on a busy machine a 50 ms timeout may fire now and then.)
        assert cache.hits > 0, "the cache should be serving by now"

        await services("stop", "redis", *stop_args)
        stopped = True
        down_from = load.reads
        # Long enough for the breaker to open, probe after its cool-down, and open again.
        await asyncio.sleep(2.5)
        assert load.reads - down_from > 100, "reads must go on while Redis is down"
        assert cache.breaker.times_opened >= 2
        assert cache.breaker_state is not BreakerState.CLOSED
        assert cache.rejected > cache.errors, "an open breaker must spare the dead server"

        await services("start", "redis")
        stopped = False
        hits_before = cache.hits
        await wait_for(
            lambda: cache.breaker_state is BreakerState.CLOSED and cache.hits > hits_before,
            timeout=10.0,
            what="the cache to be used again after Redis came back",
        )
    finally:
        done.set()
        await reader
        if stopped:  # leave Redis running for the tests after this one
            await services("start", "redis")
        await source.close()

    report(" ".join(("stop", *stop_args)), load, cache)
    assert load.failures == []
    assert load.reads >= 2_000
    assert load.slowest < READ_BOUND, f"slowest read took {load.slowest:.3f} s"


async def test_unreachable_redis_never_slows_reads(
    storage: LmdbStorage, dataset: Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cache = CountingRedisCache(f"redis://:s3cret@127.0.0.1:{free_port()}/0", breaker_cooldown=0.2)
    source = RowSource(storage, shared_cache=cache)
    load = ReadLoad(source, dataset)
    try:
        began = time.monotonic()
        while load.reads < 500 or time.monotonic() - began < 1.0:  # spans several cool-downs
            await load.read_once()
            await asyncio.sleep(0.001)
    finally:
        await source.close()

    report("unreachable", load, cache)
    assert load.failures == []
    assert load.slowest < READ_BOUND, f"slowest read took {load.slowest:.3f} s"
    assert cache.hits == 0
    assert cache.breaker.times_opened >= 2  # opened, probed after the cool-down, reopened
    assert cache.breaker.consecutive_failures >= cache.breaker.failure_threshold
    assert cache.rejected > 10 * cache.errors, "most calls must not touch the network"
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("cache.redis")]
    assert len(warnings) == 1, "warnings about a dead Redis must be rate-limited"
    assert "s3cret" not in warnings[0] and "***@127.0.0.1" in warnings[0]


async def test_hanging_redis_costs_at_most_the_timeout(
    redis_endpoint: str, storage: LmdbStorage, dataset: Dataset
) -> None:
    cache = CountingRedisCache(redis_endpoint, prefix=f"test:{uuid.uuid4().hex}:", timeout=0.05)
    source = RowSource(storage, shared_cache=cache)
    load = ReadLoad(source, dataset)
    admin = aioredis.Redis.from_url(f"redis://{redis_endpoint}", socket_timeout=10)
    try:
        for _ in range(100):
            await load.read_once()
        assert cache.hits > 0
        # The whole server stops answering for 1.5 s (its event loop sleeps).
        hang = asyncio.create_task(debug_sleep(admin, 1.5))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        while not hang.done():
            await load.read_once()
            await asyncio.sleep(0.001)
        assert time.monotonic() - began > 1.0, "the hang did not last; nothing was tested"
        await hang
        assert cache.errors >= cache.breaker.failure_threshold
        assert cache.breaker.times_opened >= 1
        hits_before = cache.hits
        deadline = time.monotonic() + 10.0
        while cache.breaker_state is not BreakerState.CLOSED or cache.hits == hits_before:
            assert time.monotonic() < deadline, "the cache was not used again after the hang"
            await load.read_once()
            await asyncio.sleep(0.001)
    finally:
        await admin.aclose()
        await source.close()

    report("hang", load, cache)
    assert load.failures == []
    assert load.slowest < READ_BOUND, f"slowest read took {load.slowest:.3f} s"
