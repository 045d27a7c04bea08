"""What the interaction store needs from a cold tier (Cassandra/ScyllaDB, or LMDB embedded).

One row per (type, user): the merged history, encoded by `interactions/coldrow.py`
(checksummed, typed, versioned). Only the sweeper writes rows (read-merge-write of one user
at a time, under its claim); reads and hydrate read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from inferstack.core.registry import Registry


class ColdStore(Protocol):
    async def prepare(self, registry: Registry) -> None:
        """Create what new interaction types need (tables, named databases)."""
        ...

    async def read(self, type: str, users: Sequence[bytes]) -> list[bytes | None]:
        """One row per user, in order; None where the user has no history of this type."""
        ...

    async def write(self, type: str, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """(user, row) pairs, durably; a row replaces the user's previous one."""
        ...

    async def close(self) -> None: ...
