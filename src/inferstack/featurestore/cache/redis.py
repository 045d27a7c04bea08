"""Shared row cache on any Redis-protocol server (Redis, Dragonfly, Valkey, KeyDB).

Layout: key = prefix + group + "/" + raw entity key (all bytes, binary-safe; group names
never contain "/", so keys of different groups cannot collide). Value = the cache
generation it was stored under (8 bytes, big-endian) followed by the encoded row, or by
nothing (NEGATIVE) for "known to be absent". Redis answers a missing key with nil (None),
so MISS and "absent" stay apart. (Before generations, values were bare rows under
group + ":"; those keys are never read again and expire by themselves.)

Generations (configstore/cachefeed.py): a read at generation G takes entries of G or newer
and answers MISS for older ones; a back-fill replaces an entry only if that entry is not of
a newer generation (a Lua script compares the 8-byte prefixes on the server), so a worker
still on an old generation can never put back what a newer one forgot.

Invalidation (after a Persist) replaces each key by a TOMBSTONE for `invalidation_hold`
seconds rather than deleting it: a back-fill never replaces a tombstone, so a read that
fetched the old row from storage just before the write cannot put it back afterwards.
Readers stop back-filling once their read is older than rows.FILL_WINDOW (less than the
hold), so no such read outlives the tombstone.

A cache is an optimisation: no method here ever raises (cancellation aside). Every call is
bounded by `timeout`, a failure answers MISS / gives up quietly, and a circuit breaker stops
calling a Redis that keeps failing until a probe after the cool-down succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from inferstack.core.ratelimit import RateLimitedWarning
from inferstack.featurestore.cache.base import MISS, CachedRow
from inferstack.featurestore.cache.breaker import BreakerState, CircuitBreaker
from inferstack.kv.redis import pooled_client, redacted, redis_url
from inferstack.kv.settings import RedisCacheSettings

log = logging.getLogger(__name__)

NEGATIVE = b""  # after the generation: a None row; never a valid row (rows have a header)
TOMBSTONE = b"!"  # shorter than a generation: never taken for an entry, never overwritten
GENERATION_BYTES = 8
DEFAULT_INVALIDATION_HOLD = 3.0
WARNING_INTERVAL = 10.0  # seconds between repeated warnings about a failing Redis
FILL_CHUNK = 1000  # keys per script call, so one back-fill never holds Redis for long

# KEYS: names; ARGV: value, milliseconds, value, milliseconds, ... Sets each key unless it
# holds a tombstone or an entry of a newer generation (same-length big-endian prefixes
# compare as numbers).
_FILL_SCRIPT = """
local stored = 0
for i, name in ipairs(KEYS) do
  local value = ARGV[2 * i - 1]
  local old = redis.call('GET', name)
  if (not old) or (string.len(old) >= 8 and string.sub(old, 1, 8) <= string.sub(value, 1, 8)) then
    redis.call('SET', name, value, 'PX', ARGV[2 * i])
    stored = stored + 1
  end
end
return stored
"""

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
    invalidation_hold  seconds an invalidated key stays a tombstone (no back-fill)
    """

    def __init__(
        self,
        settings: RedisCacheSettings,
        *,
        invalidation_hold: float = DEFAULT_INVALIDATION_HOLD,
    ) -> None:
        """`settings` whole (the deployment file's `cache.shared`, checked there);
        `invalidation_hold` is how long a Persist's tombstone outlives it (tests shorten it)."""
        if invalidation_hold <= 0:
            raise ValueError("invalidation_hold must be positive")
        address = settings.address
        self.where = redacted(redis_url(address))  # for logs: never print a password
        self.prefix = settings.prefix.encode()
        self.timeout = timeout = settings.timeout
        self.ttl_jitter = settings.ttl_jitter
        self.invalidation_hold_ms = max(1, round(invalidation_hold * 1000))
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown)
        max_connections = settings.max_connections
        # No client-side retries: they would multiply the latency of a failing cache, and
        # the breaker decides when to try again.
        self._client = pooled_client(address, timeout=timeout, max_connections=max_connections)
        self._fill_script = self._client.register_script(_FILL_SCRIPT)
        self._group_prefixes: dict[str, bytes] = {}
        self._random = random.Random()
        self._warnings = RateLimitedWarning(log, WARNING_INTERVAL)  # a dead Redis cannot flood logs

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state

    # -- RowCache ---------------------------------------------------------------------------

    async def get_many(
        self, group: str, keys: Sequence[bytes], generation: int = 0
    ) -> list[CachedRow]:
        if not keys:
            return []
        names = self._names(group, keys)
        # One MGET is one round trip whatever the batch size.
        values = await self._guarded("read", lambda: self._mget(names))
        if values is None:
            return [MISS] * len(keys)
        oldest = generation.to_bytes(GENERATION_BYTES, "big")
        return [_from_stored(value, oldest) for value in values]

    async def set_many(
        self,
        group: str,
        items: Sequence[tuple[bytes, bytes | None]],
        ttl: float,
        negative_ttl: float,
        generation: int = 0,
    ) -> None:
        entries: list[tuple[bytes, bytes, int]] = []
        head = self._group_prefix(group)
        tag = generation.to_bytes(GENERATION_BYTES, "big")
        for key, row in items:
            millis = self._ttl_millis(negative_ttl if row is None else ttl)
            if millis > 0:
                entries.append((head + key, tag if row is None else tag + row, millis))
        if entries:
            await self._guarded("write", lambda: self._fill_pipelined(entries))

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> bool:
        if not keys:
            return True
        names = self._names(group, keys)
        return await self._guarded("invalidate", lambda: self._tombstone(names)) is not None

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
            head = self._group_prefixes[group] = self.prefix + group.encode() + b"/"
        return head

    def _ttl_millis(self, seconds: float) -> int:
        """Jittered lifetime in ms; 0 means "do not cache" (ttl <= 0)."""
        if seconds <= 0:
            return 0
        factor = self._random.uniform(1 - self.ttl_jitter, 1 + self.ttl_jitter)
        return max(1, round(seconds * factor * 1000))  # PX 0 is an error; round up to 1 ms

    async def _mget(self, names: list[bytes]) -> list[bytes | None]:
        return cast(list[bytes | None], await self._client.mget(names))

    async def _fill_pipelined(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        # Not a transaction: entries are independent, and MULTI/EXEC would only add work.
        async with self._client.pipeline(transaction=False) as pipe:
            for start in range(0, len(entries), FILL_CHUNK):
                chunk = entries[start : start + FILL_CHUNK]
                args: list[bytes | int] = []
                for _, value, millis in chunk:
                    args += [value, millis]
                await self._fill_script(keys=[name for name, _, _ in chunk], args=args, client=pipe)
            await pipe.execute()

    async def _tombstone(self, names: list[bytes]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.set(name, TOMBSTONE, px=self.invalidation_hold_ms)
            result: list[Any] = await pipe.execute()
            return result

    async def _guarded(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run one Redis operation within the timeout, under the breaker; None if it failed."""
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except Exception as exc:  # timeouts, refused connections, server errors: all alike
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
            self._warnings.warn(message, self.where, operation, detail, self.breaker.cooldown)
        else:
            message = "redis cache %s failed to %s (%s); using storage"
            self._warnings.warn(message, self.where, operation, detail)


def _from_stored(value: bytes | None, oldest: bytes) -> CachedRow:
    """An entry of generation `oldest` (8 bytes, big-endian) or newer; MISS otherwise."""
    if value is None or len(value) < GENERATION_BYTES or value[:GENERATION_BYTES] < oldest:
        return MISS  # absent, a tombstone, or stored before the group moved on
    return value[GENERATION_BYTES:] or None
