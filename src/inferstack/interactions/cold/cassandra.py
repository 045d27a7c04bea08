"""The distributed cold tier: one table per interaction type in ScyllaDB or Apache Cassandra.

    CREATE TABLE <keyspace>."ic_<type>" (k blob PRIMARY KEY, v blob)  -- leveled compaction

`k` is the encoded user key and `v` the cold row (`interactions/coldrow.py`). This is the
feature store's adapter (`kv/cassandra.py`) with another table prefix, so
both share one way of connecting, preparing statements, bounding requests in flight and
mapping driver errors to `UnavailableError` naming the address. The same shape fits: one
partition per user, point reads, rows rewritten whole by every sweep.

Writes go out at the write consistency (LOCAL_QUORUM by default), so a sweep frees the hot
tier only once a majority of local replicas hold the row. Cold rows carry no TTL: retention
is applied by `coldrow.merge` when the sweeper rewrites a row. Writes of one call are not
atomic across users, but each user's row is replaced whole and a retried write is harmless.
Each row's write timestamp is the sweeper's claim fence, so a sweeper that stalled past its
lease can never replace the row of the one that took over (`cold/base.py` says why this and
not a lightweight transaction); sweepers read with `latest`, at the write consistency.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferstack.core.registry import Registry
from inferstack.interactions.cold.base import ColdWrite
from inferstack.kv.cassandra import CassandraStorage
from inferstack.kv.settings import CassandraSettings

TABLE_PREFIX = "ic_"


class CassandraColdStore:
    def __init__(self, settings: CassandraSettings, *, schema_timeout: float = 30.0) -> None:
        """The cluster settings are the feature store's (`storage:` in the deployment)."""
        self._storage = CassandraStorage(
            settings,
            schema_timeout=schema_timeout,
            table_prefix=TABLE_PREFIX,
            kind="interaction type",
        )
        self.where = self._storage.where
        self.keyspace = settings.keyspace

    async def connect(self) -> None:
        """Open the connection now (else the first call does); UnavailableError names it."""
        await self._storage.connect()

    async def prepare(self, registry: Registry) -> None:
        await self._storage.prepare_tables(registry.interaction_types)

    async def read(
        self, type: str, users: Sequence[bytes], *, latest: bool = False
    ) -> list[bytes | None]:
        return await self._storage.read(type, users, latest=latest)

    async def write(self, type: str, rows: Sequence[ColdWrite], fence: int) -> list[bytes]:
        # No TTL (merge applies retention); the fence orders the writes of a row.
        pairs = [(row.user, row.row) for row in rows]
        await self._storage.write(type, pairs, None, timestamp=fence)
        return []  # a stale write is kept out of sight, not refused: nothing to report

    async def close(self) -> None:
        await self._storage.close()
