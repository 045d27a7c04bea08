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

    A cache is an optimisation: implementations never raise on reads or writes; a failing
    cache answers MISS and the read goes on to storage.
    """

    async def get_many(self, group: str, keys: Sequence[bytes]) -> list[CachedRow]: ...

    async def set_many(
        self,
        group: str,
        items: Sequence[tuple[bytes, bytes | None]],
        ttl: float,
        negative_ttl: float,
    ) -> None: ...

    async def invalidate(self, group: str, keys: Sequence[bytes]) -> None: ...

    async def close(self) -> None: ...
