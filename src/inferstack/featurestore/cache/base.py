"""What the feature store needs from a row cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


#: Returned for keys the cache knows nothing about; None means "known to be absent".
MISS: Final = _Miss()

CachedRow = bytes | None | _Miss


class RowCache(Protocol):
    """Caches encoded rows by (feature group, key), including negative entries (None).

    Every entry carries the cache generation of its group it was stored under (see
    configstore/cachefeed.py). A read at generation G answers MISS for entries of an older
    generation, and a write at generation G never replaces an entry of a newer one, so once
    a group's generation moves on, nothing cached before is served again, whichever worker
    (still on the old generation or not) writes or reads.

    A cache is an optimisation: implementations never raise on reads or writes; a failing
    cache answers MISS and the read goes on to storage.
    """

    async def get_many(
        self, group: str, keys: Sequence[bytes], generation: int = 0
    ) -> list[CachedRow]: ...

    async def set_many(
        self,
        group: str,
        items: Sequence[tuple[bytes, bytes | None]],
        ttl: float,
        negative_ttl: float,
        generation: int = 0,
    ) -> None:
        """Cache rows read from storage; a key invalidated a moment ago may be skipped."""
        ...

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> bool:
        """Forget the keys (they were just written); False if that could not be done."""
        ...

    async def close(self) -> None: ...
