"""Embedded storage: one LMDB environment, one named database per feature group.

LMDB lets many processes read through one memory map while one writes at a time, which
is exactly the embedded server's shape (several worker processes, occasional writers).
Reads are a few microseconds from the page cache, so they run inline on the event loop;
writes go to a thread so a large Persist never stalls reads.

LMDB never drops a row by itself, so expired rows are reclaimed by compaction
(featurestore/compaction.py) through `scan` and `delete_if`: short read transactions to
find candidates, then one short write transaction per batch that re-checks each row, so
neither readers nor writers wait long and a row rewritten meanwhile is kept.

A process killed inside a read transaction (a worker, a CLI) leaves its reader slot behind,
pinning the snapshot it read: LMDB then reuses no page freed since, and the file grows with
every write. `clear_stale_readers` frees such slots; every worker runs it at start-up and
every few seconds on each environment it has open (server/worker.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lmdb

from inferstack import metrics
from inferstack.core.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 40  # address space only; the file grows as data is written


def clear_stale_readers(env: lmdb.Environment, path: Path) -> int:
    """Free the reader slots of processes that died holding them (LMDB checks each slot's
    process by its lock on lock.mdb); returns how many were freed. Cheap: one pass over
    the reader table. Until freed, such a slot keeps LMDB from reusing any page freed after
    the snapshot it pinned."""
    cleared = int(env.reader_check())
    if cleared:
        metrics.LMDB_STALE_READERS.labels(str(path)).inc(cleared)
        log.warning("LMDB %s: freed %d reader slot(s) left by dead processes", path, cleared)
    return cleared


class LmdbStorage:
    reads_inline = True  # microseconds from the page cache, on the event loop

    def __init__(
        self, path: Path, map_size: int = DEFAULT_MAP_SIZE, max_groups: int = 4096
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=max_groups,
            readahead=False,  # random point reads: readahead only pollutes the page cache
            max_readers=1024,
        )
        self._databases: dict[str, Any] = {}
        self._open_lock = threading.Lock()

    def _database(self, group: str, create: bool) -> Any | None:
        database = self._databases.get(group)
        if database is not None:
            return database
        with self._open_lock:
            if group in self._databases:
                return self._databases[group]
            try:
                database = self._env.open_db(group.encode(), create=create)
            except lmdb.NotFoundError:
                return None  # never written yet: every key reads as missing
            self._databases[group] = database
            return database

    def has_database(self, group: str) -> bool:
        """Whether the group's named database exists (prepare or a write created it)."""
        return self._database(group, create=False) is not None

    async def prepare(self, registry: Registry) -> None:
        for group in registry.feature_groups:
            self._database(group, create=True)

    async def read(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.read_sync(group, keys)

    def read_sync(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        database = self._database(group, create=False)
        if database is None:
            return [None] * len(keys)
        with self._env.begin(db=database) as txn:
            get = txn.get
            return [get(key) for key in keys]

    async def write(
        self, group: str, rows: Sequence[tuple[bytes, bytes]], ttl: float | None
    ) -> None:
        await asyncio.to_thread(self.write_sync, group, rows)

    def write_sync(self, group: str, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """All rows in one transaction: a failure leaves none of them written."""
        database = self._database(group, create=True)
        with self._env.begin(db=database, write=True) as txn, txn.cursor() as cursor:
            cursor.putmulti(rows)

    def replace_if_sync(
        self, group: str, rows: Sequence[tuple[bytes, bytes, bytes | None]]
    ) -> list[bytes]:
        """(key, row, expected) each: the row is written only where the key's current row
        is still `expected` (None: absent), all in one transaction; the keys left alone."""
        database = self._database(group, create=True)
        refused: list[bytes] = []
        with self._env.begin(db=database, write=True) as txn:
            for key, row, expected in rows:
                if txn.get(key) != expected:
                    refused.append(key)
                else:
                    txn.put(key, row)
        return refused

    def entry_count(self, group: str) -> int:
        database = self._database(group, create=False)
        if database is None:
            return 0
        with self._env.begin() as txn:
            return int(txn.stat(database)["entries"])

    def scan(
        self, group: str, after: bytes | None, limit: int, head: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, first `head` bytes of the row) in key order, starting after
        key `after` (None: from the first key). Fewer than `limit`: the end was reached."""
        database = self._database(group, create=False)
        if database is None:
            return []
        out: list[tuple[bytes, bytes]] = []
        with self._env.begin(db=database, buffers=True) as txn, txn.cursor() as cursor:
            found = cursor.first() if after is None else cursor.set_range(after)
            while found and len(out) < limit:
                key = bytes(cursor.key())
                if key != after:
                    out.append((key, bytes(cursor.value()[:head])))
                found = cursor.next()
        return out

    def delete_if(
        self, group: str, keys: Sequence[bytes], condition: Callable[[bytes], bool]
    ) -> tuple[int, int]:
        """Delete each key whose current row meets `condition`, in one write transaction;
        returns (rows deleted, bytes of keys and rows freed for reuse)."""
        database = self._database(group, create=False)
        if database is None or not keys:
            return 0, 0
        deleted = freed = 0
        with self._env.begin(db=database, write=True) as txn:
            for key in keys:
                row = txn.get(key)
                if row is not None and condition(row):
                    txn.delete(key)
                    deleted += 1
                    freed += len(key) + len(row)
        return deleted, freed

    def clear_stale_readers(self) -> int:
        """Free reader slots of dead processes (see `clear_stale_readers`)."""
        return clear_stale_readers(self._env, self.path)

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        self._env.close()
