"""What the feature store needs from a storage system."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from inferstack.core.registry import Registry


class FeatureStorage(Protocol):
    """Rows of feature groups addressed by encoded entity key.

    Rows carry their own expiry in the header, so storage need not expire them; adapters
    that can (Cassandra TTL) also drop them physically. Writes of one call are applied
    all together or not at all where the system allows it, and are idempotent.

    `reads_inline` is True where `read` finishes without ever yielding to the event loop
    (a memory-mapped file): then reads cannot overlap, and sharing a read between
    concurrent requests that miss the same key buys nothing.
    """

    reads_inline: bool

    async def prepare(self, registry: Registry) -> None:
        """Create what new feature groups need (tables, named databases)."""
        ...

    async def read(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """One entry per key, in order; None where there is no row."""
        ...

    async def write(
        self, group: str, rows: Sequence[tuple[bytes, bytes]], ttl: float | None
    ) -> None: ...

    async def close(self) -> None: ...
