"""The embedded cold tier: an LMDB environment of its own, one named database per type.

    <data_dir>/interactions/cold/   named databases "ic_<type>": user key -> cold row

This is the feature store's LMDB adapter (`kv/lmdb.py`) in another
directory, so both tiers of embedded storage open environments the same way. A separate
environment keeps the cold tier's file, map and writer lock apart from the feature rows.
Reads take microseconds from the page cache and run inline on the event loop; a write call
is one transaction in a thread, committed (and synced) before it returns, so a sweep frees
the hot tier only once every row of the call is on disk. Inside that transaction each row is
compared with the one its writer read, and left alone if it changed (`cold/base.py`): LMDB
has one writer at a time, so the comparison and the write are atomic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from inferstack.core.registry import Registry
from inferstack.interactions.cold.base import ColdWrite
from inferstack.kv.lmdb import DEFAULT_MAP_SIZE, LmdbStorage

DATABASE_PREFIX = "ic_"


def database_name(type: str) -> str:
    return DATABASE_PREFIX + type


class LmdbColdStore:
    reads_inline = True

    def __init__(self, path: Path, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = path
        self._storage = LmdbStorage(path, map_size=map_size)

    async def prepare(self, registry: Registry) -> None:
        for type in registry.interaction_types:
            # An empty write creates the named database, so readers in other processes
            # find it; it writes no row.
            self._storage.write_sync(database_name(type), [])

    async def read(
        self, type: str, users: Sequence[bytes], *, latest: bool = False
    ) -> list[bytes | None]:
        return self.read_sync(type, users)  # one copy of the data: always the latest

    def read_sync(self, type: str, users: Sequence[bytes]) -> list[bytes | None]:
        """The same as `read`, for callers already off the event loop or reading inline."""
        return self._storage.read_sync(database_name(type), users)

    async def write(self, type: str, rows: Sequence[ColdWrite], fence: int) -> list[bytes]:
        if not rows:
            return []
        return await asyncio.to_thread(self._storage.replace_if_sync, database_name(type), rows)

    def clear_stale_readers(self) -> int:
        """Free reader slots of dead processes (kv/lmdb.py)."""
        return self._storage.clear_stale_readers()

    async def close(self) -> None:
        await self._storage.close()
