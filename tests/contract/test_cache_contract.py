"""The RowCache contract, run against every adapter.

`memory` is the in-process cache; `redis` is RedisCache against the real redis-server that
scripts/services.py starts, with a fresh key prefix per test so tests never see each other's
keys. A few RedisCache-specific checks (key layout, negative marker, TTL jitter) follow the
contract at the end of the file.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from inferstack.featurestore.cache.base import MISS, CachedRow, RowCache
from inferstack.featurestore.cache.memory import MemoryCache
from inferstack.featurestore.cache.redis import NEGATIVE, TOMBSTONE, RedisCache
from inferstack.kv.settings import RedisCacheSettings
from tests.caches import CountingRedisCache

LONG = 60.0  # a TTL no test outlives
SHORT = 0.2  # a TTL tests wait out; RedisCache jitters it by at most 10 % (0.22 s)
WAIT = 0.4  # comfortably past SHORT (+ jitter), even on a busy machine

ADAPTERS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.services),
]


def row(tag: int | str, size: int = 24) -> bytes:
    """Something shaped like an encoded row: at least the 8-byte header, then payload."""
    body = str(tag).encode()
    return (b"\x01\x00\x00\x01\x00\x00\x00\x00" + body).ljust(size, b"\xab")


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


async def delete_prefixed(endpoint: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(f"redis://{endpoint}")
    try:
        names = [name async for name in client.scan_iter(match=f"{prefix}*", count=1000)]
        if names:
            await client.unlink(*names)
    finally:
        await client.aclose()


@pytest.fixture(params=ADAPTERS)
async def cache(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[RowCache]:
    if request.param == "memory":
        memory = MemoryCache()
        yield memory
        await memory.close()
        return
    endpoint: str = request.getfixturevalue("redis_endpoint")
    # A generous timeout: the contract is about behaviour, not about a loaded CI machine.
    shared = CountingRedisCache(endpoint, prefix=prefix, timeout=1.0)
    yield shared
    await shared.close()
    assert shared.errors == 0, "a contract test must never see the cache fail"
    await delete_prefixed(endpoint, prefix)


async def test_unknown_keys_are_misses(cache: RowCache) -> None:
    assert await cache.get_many("users", [b"nobody", b"", b"\x00"]) == [MISS, MISS, MISS]


async def test_empty_batches(cache: RowCache) -> None:
    assert await cache.get_many("users", []) == []
    await cache.set_many("users", [], LONG, LONG)
    await cache.invalidate("users", [])


async def test_set_then_get_many_keeps_request_order(cache: RowCache) -> None:
    keys = [f"user-{i}".encode() for i in range(500)]
    await cache.set_many("users", [(key, row(key.decode())) for key in keys], LONG, LONG)
    asked = [*reversed(keys[::7]), b"unknown", keys[3], keys[3]]  # reordered, gaps, repeats
    expected: list[CachedRow] = [row(key.decode()) for key in reversed(keys[::7])]
    expected += [MISS, row("user-3"), row("user-3")]
    assert await cache.get_many("users", asked) == expected


async def test_negative_entries_are_none_not_miss(cache: RowCache) -> None:
    await cache.set_many("users", [(b"ghost", None), (b"alice", row("alice"))], LONG, LONG)
    got = await cache.get_many("users", [b"ghost", b"alice", b"never-seen"])
    assert got == [None, row("alice"), MISS]
    assert got[0] is None and got[2] is MISS


async def test_later_writes_replace_earlier_ones(cache: RowCache) -> None:
    await cache.set_many("users", [(b"a", row(1)), (b"b", None)], LONG, LONG)
    await cache.set_many("users", [(b"a", None), (b"b", row(2))], LONG, LONG)
    assert await cache.get_many("users", [b"a", b"b"]) == [None, row(2)]


async def test_entries_expire_after_ttl(cache: RowCache) -> None:
    await cache.set_many("users", [(b"short", row(1))], SHORT, LONG)
    assert await cache.get_many("users", [b"short"]) == [row(1)]
    await asyncio.sleep(WAIT)
    assert await cache.get_many("users", [b"short"]) == [MISS]


async def test_negative_ttl_applies_to_none_entries_only(cache: RowCache) -> None:
    await cache.set_many("users", [(b"absent", None), (b"present", row(1))], LONG, SHORT)
    assert await cache.get_many("users", [b"absent", b"present"]) == [None, row(1)]
    await asyncio.sleep(WAIT)
    assert await cache.get_many("users", [b"absent", b"present"]) == [MISS, row(1)]


async def test_ttl_applies_to_rows_only(cache: RowCache) -> None:
    await cache.set_many("users", [(b"absent", None), (b"present", row(1))], SHORT, LONG)
    await asyncio.sleep(WAIT)
    assert await cache.get_many("users", [b"absent", b"present"]) == [None, MISS]


@pytest.mark.parametrize("lifetime", [0.0, -1.0])
async def test_non_positive_ttl_means_do_not_cache(cache: RowCache, lifetime: float) -> None:
    await cache.set_many("users", [(b"row", row(1)), (b"none", None)], lifetime, LONG)
    await cache.set_many("users", [(b"row2", row(2)), (b"none2", None)], LONG, lifetime)
    got = await cache.get_many("users", [b"row", b"none", b"row2", b"none2"])
    assert got == [MISS, None, row(2), MISS]


async def test_invalidate_removes_only_the_given_keys(cache: RowCache) -> None:
    await cache.set_many("users", [(b"a", row(1)), (b"b", None), (b"c", row(3))], LONG, LONG)
    await cache.invalidate("users", [b"a", b"b", b"not-cached"])
    assert await cache.get_many("users", [b"a", b"b", b"c"]) == [MISS, MISS, row(3)]


async def test_groups_are_isolated(cache: RowCache) -> None:
    await cache.set_many("users", [(b"k", row("users"))], LONG, LONG)
    await cache.set_many("users_2", [(b"k", None)], LONG, LONG)
    assert await cache.get_many("users", [b"k"]) == [row("users")]
    assert await cache.get_many("users_2", [b"k"]) == [None]
    assert await cache.get_many("products", [b"k"]) == [MISS]
    await cache.invalidate("users_2", [b"k"])
    assert await cache.get_many("users", [b"k"]) == [row("users")]
    assert await cache.get_many("users_2", [b"k"]) == [MISS]


async def test_keys_and_values_are_binary_safe(cache: RowCache) -> None:
    items: list[tuple[bytes, bytes | None]] = [
        (b"\x00", b"\x00"),  # a one-byte value must not be taken for the negative marker
        (b"\x00\x00", b"\x00\x00\x00"),
        (b"", row("empty key")),
        (b"a:b", row("colon")),  # separators inside keys must not alias other keys
        (b"a", row("plain")),
        (b"\xff\xfe\r\n*1\r\n", bytes(range(256))),  # RESP framing bytes inside the key
        ("ключ".encode(), "значение".encode()),
        (b"big", os.urandom(4 << 20)),  # 4 MiB
    ]
    await cache.set_many("users", items, LONG, LONG)
    assert await cache.get_many("users", [key for key, _ in items]) == [v for _, v in items]


async def test_many_keys_in_one_batch(cache: RowCache) -> None:
    items: list[tuple[bytes, bytes | None]] = [
        (i.to_bytes(4, "big"), None if i % 5 == 0 else row(i)) for i in range(10_000)
    ]
    await cache.set_many("users", items, LONG, LONG)
    assert await cache.get_many("users", [key for key, _ in items]) == [v for _, v in items]


async def test_invalidate_reports_success(cache: RowCache) -> None:
    await cache.set_many("users", [(b"a", row(1))], LONG, LONG)
    assert await cache.invalidate("users", [b"a"]) is True
    assert await cache.get_many("users", [b"a"]) == [MISS]


async def test_reads_at_a_newer_generation_miss_older_entries(cache: RowCache) -> None:
    await cache.set_many("users", [(b"a", row("g1")), (b"b", None)], LONG, LONG, 1)
    await cache.set_many("others", [(b"a", row("other"))], LONG, LONG, 1)
    assert await cache.get_many("users", [b"a", b"b"], 1) == [row("g1"), None]
    assert await cache.get_many("users", [b"a", b"b"], 2) == [MISS, MISS]
    await cache.set_many("users", [(b"a", row("g2"))], LONG, LONG, 2)
    assert await cache.get_many("users", [b"a", b"b"], 2) == [row("g2"), MISS]
    assert await cache.get_many("others", [b"a"], 1) == [row("other")]  # groups apart


async def test_writes_at_an_older_generation_never_come_back(cache: RowCache) -> None:
    """A worker still on the old generation (or a read that began before the bump) fills
    late: what it stores must not be served at the new generation."""
    await cache.set_many("users", [(b"a", row("new"))], LONG, LONG, 5)
    await cache.set_many("users", [(b"a", row("old")), (b"b", row("old"))], LONG, LONG, 4)
    assert await cache.get_many("users", [b"a", b"b"], 5) == [row("new"), MISS]


# -- RedisCache specifics --------------------------------------------------------------------


@pytest.fixture
async def raw_redis(redis_endpoint: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"redis://{redis_endpoint}")
    yield client
    await client.aclose()


@pytest.fixture
async def redis_cache(redis_endpoint: str, prefix: str) -> AsyncIterator[CountingRedisCache]:
    shared = CountingRedisCache(redis_endpoint, prefix=prefix, timeout=1.0)
    yield shared
    await shared.close()
    await delete_prefixed(redis_endpoint, prefix)


@pytest.mark.services
async def test_redis_key_layout_generation_prefix_and_negative_marker(
    redis_cache: RedisCache, raw_redis: aioredis.Redis, prefix: str
) -> None:
    await redis_cache.set_many("users", [(b"\x00k", row(1)), (b"gone", None)], LONG, LONG, 7)
    head = prefix.encode() + b"users/"
    tag = (7).to_bytes(8, "big")
    assert await raw_redis.get(head + b"\x00k") == tag + row(1)
    assert await raw_redis.get(head + b"gone") == tag + NEGATIVE == tag
    # Values of the layout before generations (group + ":") are never read.
    await raw_redis.set(prefix.encode() + b"users:old", row(2))
    assert await redis_cache.get_many("users", [b"old"]) == [MISS]


@pytest.mark.services
async def test_redis_invalidation_leaves_a_tombstone_that_back_fills_cannot_replace(
    redis_endpoint: str, raw_redis: aioredis.Redis, prefix: str
) -> None:
    settings = RedisCacheSettings(address=redis_endpoint, prefix=prefix, timeout=1.0)
    shared = RedisCache(settings, invalidation_hold=0.3)
    try:
        await shared.set_many("users", [(b"k", row("old"))], LONG, LONG, 1)
        assert await shared.invalidate("users", [b"k"]) is True
        # A read that fetched the old row before the write must not put it back...
        await shared.set_many("users", [(b"k", row("old"))], LONG, LONG, 1)
        await shared.set_many("users", [(b"k", row("old"))], LONG, LONG, 2)
        assert await shared.get_many("users", [b"k"], 1) == [MISS]
        assert await raw_redis.get(prefix.encode() + b"users/k") == TOMBSTONE
        # ... and once the hold is over, back-fills work again.
        await asyncio.sleep(0.5)
        await shared.set_many("users", [(b"k", row("new"))], LONG, LONG, 1)
        assert await shared.get_many("users", [b"k"], 1) == [row("new")]
    finally:
        await shared.close()
        await delete_prefixed(redis_endpoint, prefix)


async def test_redis_invalidation_reports_failure_when_redis_is_unreachable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = CountingRedisCache(f"127.0.0.1:{port}", timeout=0.2, breaker_failures=1)
    try:
        assert await shared.invalidate("users", [b"k"]) is False  # refused
        assert await shared.invalidate("users", [b"k"]) is False  # breaker open: not tried
        assert shared.rejected == 1
        assert await shared.invalidate("users", []) is True  # nothing to do is done
    finally:
        await shared.close()


@pytest.mark.services
async def test_redis_ttls_are_jittered(
    redis_cache: RedisCache, raw_redis: aioredis.Redis, prefix: str
) -> None:
    keys = [i.to_bytes(2, "big") for i in range(200)]
    await redis_cache.set_many("users", [(key, row(1)) for key in keys], 100.0, LONG)
    await redis_cache.set_many("neg", [(key, None) for key in keys], LONG, 10.0)
    async with raw_redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(prefix.encode() + b"users/" + key)
        for key in keys:
            pipe.pttl(prefix.encode() + b"neg/" + key)
        ttls = await pipe.execute()
    rows, negatives = ttls[: len(keys)], ttls[len(keys) :]
    assert all(89_000 <= ms <= 110_000 for ms in rows)  # 100 s +- 10 %, a little already gone
    assert all(8_900 <= ms <= 11_000 for ms in negatives)  # negative_ttl, jittered likewise
    assert max(rows) - min(rows) > 5_000, "entries written together must not expire together"


@pytest.mark.services
async def test_redis_counts_hits_and_misses(redis_cache: CountingRedisCache) -> None:
    await redis_cache.set_many("users", [(b"a", row(1)), (b"b", None)], LONG, LONG)
    assert await redis_cache.get_many("users", [b"a", b"b", b"c"]) == [row(1), None, MISS]
    assert (redis_cache.hits, redis_cache.misses, redis_cache.errors) == (2, 1, 0)
    assert redis_cache.breaker_state.value == "closed"
