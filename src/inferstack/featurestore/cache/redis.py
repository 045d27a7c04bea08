"""Shared row cache on any Redis-protocol server (Redis, Dragonfly, Valkey, KeyDB).

Layout: key = prefix + group + ":" + raw entity key (all bytes, binary-safe; group names
never contain ":", so keys of different groups cannot collide). Value = the encoded row, or
NEGATIVE (b"") for "known to be absent". Every encoded row starts with an 8-byte header
(see core/rowformat.py), so a zero-length value can never be a row: the marker is both
unambiguous and the cheapest value Redis can store. Redis answers a missing key with nil
(None), which is distinct from an empty string, so MISS and "absent" stay apart.

A cache is an optimisation: no method here ever raises (cancellation aside). Every call is
bounded by `timeout`, a failure answers MISS / gives up quietly, and a circuit breaker stops
calling a Redis that keeps failing until a probe after the cool-down succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from inferstack.featurestore.cache.base import MISS, CachedRow
from inferstack.featurestore.cache.breaker import BreakerState, CircuitBreaker

log = logging.getLogger(__name__)

NEGATIVE = b""  # stored for a None row; never a valid row (rows have an 8-byte header)
WARNING_INTERVAL = 10.0  # seconds between repeated warnings about a failing Redis

T = TypeVar("T")


class RedisCache:
    """A RowCache over redis.asyncio (hiredis parser when installed).

    address          "host:port" or a URL: redis://[user:pass@]host:port/db, rediss://, unix://
    prefix           namespace of every key, so several deployments can share one server
    timeout          bound in seconds on each operation, connecting and pool waits included:
                     a cache slower than this is treated as failed, never waited for
    ttl_jitter       each entry lives ttl * uniform(1 - j, 1 + j), so rows cached together
                     do not all expire (and hit storage) together
    max_connections  pool size per process; callers beyond it wait (within `timeout`)
    breaker_failures consecutive failed operations that open the circuit breaker
    breaker_cooldown seconds the breaker stays open before one probe is let through
    """

    def __init__(
        self,
        address: str = "127.0.0.1:6379",
        *,
        prefix: str = "ifs:",
        timeout: float = 0.05,
        ttl_jitter: float = 0.1,
        max_connections: int = 64,
        breaker_failures: int = 5,
        breaker_cooldown: float = 1.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 <= ttl_jitter < 1:
            raise ValueError("ttl_jitter must be in [0, 1)")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        url = _url(address)
        self.where = _without_credentials(url)  # for logs: never print a password
        self.prefix = prefix.encode()
        self.timeout = timeout
        self.ttl_jitter = ttl_jitter
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown)
        # Counters for tests and metrics. hits/misses count keys as answered to the caller
        # (a failed read answers MISS for all its keys); errors count failed operations;
        # rejected counts operations the open breaker refused without touching the network.
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.rejected = 0
        self._pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,  # waiting for a free pooled connection
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # No client-side retries: they would multiply the latency of a failing cache,
            # and the breaker decides when to try again.
            retry=Retry(NoBackoff(), 0),
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        self._group_prefixes: dict[str, bytes] = {}
        self._random = random.Random()
        self._warnings = _Throttle(WARNING_INTERVAL)

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state

    # -- RowCache ---------------------------------------------------------------------------

    async def get_many(self, group: str, keys: Sequence[bytes]) -> list[CachedRow]:
        if not keys:
            return []
        names = self._names(group, keys)
        # One MGET is one round trip whatever the batch size.
        values = await self._guarded("read", lambda: self._mget(names))
        if values is None:
            self.misses += len(keys)
            return [MISS] * len(keys)
        out = [_from_stored(value) for value in values]
        found = sum(1 for value in out if value is not MISS)
        self.hits += found
        self.misses += len(keys) - found
        return out

    async def set_many(
        self,
        group: str,
        items: Sequence[tuple[bytes, bytes | None]],
        ttl: float,
        negative_ttl: float,
    ) -> None:
        entries: list[tuple[bytes, bytes, int]] = []
        head = self._group_prefix(group)
        for key, row in items:
            millis = self._ttl_millis(negative_ttl if row is None else ttl)
            if millis > 0:
                entries.append((head + key, NEGATIVE if row is None else row, millis))
        if entries:
            await self._guarded("write", lambda: self._set_pipelined(entries))

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> None:
        if keys:
            names = self._names(group, keys)
            # UNLINK frees large values off the server's main thread; one command, one trip.
            await self._guarded("invalidate", lambda: self._client.unlink(*names))

    async def close(self) -> None:
        try:
            await self._client.aclose(close_connection_pool=True)
        except Exception as exc:  # closing a dead connection may fail; nothing to do about it
            log.debug("closing redis cache %s: %r", self.where, exc)

    # -- helpers ----------------------------------------------------------------------------

    def _names(self, group: str, keys: Sequence[bytes]) -> list[bytes]:
        head = self._group_prefix(group)
        return [head + key for key in keys]

    def _group_prefix(self, group: str) -> bytes:
        head = self._group_prefixes.get(group)
        if head is None:
            head = self._group_prefixes[group] = self.prefix + group.encode() + b":"
        return head

    def _ttl_millis(self, seconds: float) -> int:
        """Jittered lifetime in ms; 0 means "do not cache" (ttl <= 0)."""
        if seconds <= 0:
            return 0
        factor = self._random.uniform(1 - self.ttl_jitter, 1 + self.ttl_jitter)
        return max(1, round(seconds * factor * 1000))  # PX 0 is an error; round up to 1 ms

    async def _mget(self, names: list[bytes]) -> list[bytes | None]:
        return cast(list[bytes | None], await self._client.mget(names))

    async def _set_pipelined(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        # Not a transaction: entries are independent, and MULTI/EXEC would only add work.
        async with self._client.pipeline(transaction=False) as pipe:
            for name, value, millis in entries:
                pipe.set(name, value, px=millis)
            await pipe.execute()

    async def _guarded(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run one Redis operation within the timeout, under the breaker; None if it failed."""
        if not self.breaker.allow():
            self.rejected += 1
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except Exception as exc:  # timeouts, refused connections, server errors: all alike
            self.errors += 1
            opened_before = self.breaker.times_opened
            self.breaker.record_failure()
            self._warn(operation, exc, opened=self.breaker.times_opened > opened_before)
            return None
        self.breaker.record_success()
        return result

    def _warn(self, operation: str, exc: Exception, *, opened: bool) -> None:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if opened:
            message = "redis cache %s failed to %s (%s); bypassing it for %.1f s"
            self._warnings.warning(message, self.where, operation, detail, self.breaker.cooldown)
        else:
            message = "redis cache %s failed to %s (%s); using storage"
            self._warnings.warning(message, self.where, operation, detail)


def _from_stored(value: bytes | None) -> CachedRow:
    if value is None:
        return MISS
    return None if value == NEGATIVE else value


def _url(address: str) -> str:
    return address if "://" in address else f"redis://{address}"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class _Throttle:
    """Logs at most one warning per interval, so a dead Redis cannot flood the logs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar warnings suppressed)"
            self._suppressed = 0
        self._next = now + self.interval
        log.warning(message, *args)
