"""RedisCache with the counts tests assert on, which the server itself has no use for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferstack.featurestore.cache.base import MISS, CachedRow
from inferstack.featurestore.cache.breaker import CircuitBreaker
from inferstack.featurestore.cache.redis import RedisCache
from inferstack.kv.settings import RedisCacheSettings


class CountingBreaker(CircuitBreaker):
    """A circuit breaker that counts the calls it refused and the failures reported to it."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker.failure_threshold, breaker.cooldown)
        self.refused = 0
        self.failures = 0

    def allow(self) -> bool:
        allowed = super().allow()
        self.refused += not allowed
        return allowed

    def record_failure(self) -> None:
        self.failures += 1
        super().record_failure()


class CountingRedisCache(RedisCache):
    """RedisCache counting keys as answered to the caller (hits, misses: a failed read answers
    MISS for all its keys), failed operations (errors) and operations its open breaker
    refused without touching the network (rejected)."""

    def __init__(
        self, address: str, *, invalidation_hold: float | None = None, **settings: Any
    ) -> None:
        hold = {} if invalidation_hold is None else {"invalidation_hold": invalidation_hold}
        super().__init__(RedisCacheSettings(address=address, **settings), **hold)
        self.breaker = CountingBreaker(self.breaker)
        self.hits = 0
        self.misses = 0

    @property
    def errors(self) -> int:
        return self._counting.failures

    @property
    def rejected(self) -> int:
        return self._counting.refused

    @property
    def _counting(self) -> CountingBreaker:
        assert isinstance(self.breaker, CountingBreaker)
        return self.breaker

    async def get_many(
        self, group: str, keys: Sequence[bytes], generation: int = 0
    ) -> list[CachedRow]:
        found = await super().get_many(group, keys, generation)
        misses = sum(1 for value in found if value is MISS)
        self.hits += len(found) - misses
        self.misses += misses
        return found
