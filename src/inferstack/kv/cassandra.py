"""Distributed storage: ScyllaDB or Apache Cassandra through `acsylla` (the C++ driver).

Layout
------
One keyspace (default ``inferstack``) holds one table per feature group::

    CREATE TABLE <keyspace>."fg_<group>" (k blob PRIMARY KEY, v blob)
        WITH compaction = {'class': 'LeveledCompactionStrategy'}
        AND bloom_filter_fp_chance = 0.01

``k`` is the encoded entity key (`inferstack.core.keys`) and ``v`` the encoded row
(`inferstack.core.rowformat`); both are opaque to storage. One partition per entity key
spreads keys evenly over the cluster and lets one group's TTL, size and compaction be tuned
alone (a table per group rather than one table keyed by (group, key)). Group names match
``^[a-z][a-z0-9_]{0,62}$``, but Cassandra before 5.0 (and ScyllaDB for years) limit table
names to 48 characters: a table name that would be longer keeps the group name's first 36
characters plus 8 hex digits of its hash (every process agrees).

- Leveled compaction: rows are overwritten in place by every ingest, and reads are point
  reads, so bounding how many SSTables one key can live in (about one per level) matters
  more than the extra compaction I/O. ScyllaDB and Cassandra both support it.
- ``bloom_filter_fp_chance = 0.01`` (leveled defaults to 0.1): keys with no row (new users,
  cold products) are common in feature lookups; a tighter bloom filter answers "not here"
  without touching disk for 99% of them, for about 10 bits of memory per key.
- Compression and caching stay at the server defaults (LZ4; key cache on, row cache off):
  inferstack keeps its own row caches in front of storage, and the two servers spell those
  options differently. 4 KiB compression chunks or no compression instead of Cassandra's
  16 KiB chunks measured within noise of each other on reads (bench/README.md).
- No table-level default TTL: each write carries ``USING TTL`` from the group definition
  (capped at Cassandra's maximum of 20 years). Rows also carry their expiry in the header,
  which is what readers check; the TTL only lets the server drop expired rows physically.

Requests
--------
Reads ask for many keys at once (201 for a typical ranking request), so the cost per key
decides everything. Each read sends ``SELECT k, v FROM t WHERE k IN ?`` with at most
`read_group_size` keys that **share a replica** (`cassandra_ring.TokenRing`), pinned to
that replica: it reads all of them locally and answers once. Against one request per key
this costs the client and the server several times less CPU per key (bench/README.md,
"Cassandra read candidates"); the fan-out an ``IN`` usually causes does not happen, since
no key of a group lives elsewhere. The request is not paged: paging a multi-partition read
makes Cassandra read its partitions one after another, at twice the CPU. When every node
holds every key (one node, or as many nodes as replicas) keys are simply cut into groups
that the driver spreads over the nodes.
A pinned request whose node is down is sent again unpinned, to any node, and that node gets
no pinned requests for `UNPIN_SECONDS`. The ring is rebuilt every `RING_REFRESH_SECONDS`.

Writes go out as unlogged batches of rows that share a replica, at most `WRITE_BATCH_ROWS`
rows and `WRITE_BATCH_BYTES` bytes as Cassandra counts them (under its 5 KiB batch warning,
which it logs for every larger batch), with `WRITE_BATCHES_IN_FLIGHT` batches in flight per call:
against one INSERT per row this halves Cassandra's CPU per row. A batch is not atomic
(unlogged) and need not be: each row is written exactly as given, and retrying is safe
because writes are idempotent. Last write wins per key, by client-side timestamp.

Every request is a prepared statement (prepared once per group and cached), marked
idempotent, with values only as bound parameters; CQL text is built only from validated
names. No speculative executions; the driver's default retry policy (retry a read timeout
once when enough replicas answered, try the next host when one is unavailable).

One semaphore per adapter bounds the requests in flight (default 128) across all calls, so
a huge batch cannot flood the cluster; concurrent calls take turns for slots.

Consistency defaults to LOCAL_ONE for reads and LOCAL_QUORUM for writes: reads are the
latency-critical path and one replica answers them; writes are acknowledged by a majority
of the local replicas so an acknowledged write survives a node loss. With replication
factor 3 a read may briefly miss a just-acknowledged write; set reads to LOCAL_QUORUM too
for read-your-writes. Timeouts and unreachable nodes raise `UnavailableError` naming the
contact points. The request timeout bounds each request: a call fails as soon as one of
its requests fails and sends no more. The driver reconnects by itself (trying at least
every 2 s) once the cluster answers again.

The driver (ScyllaDB's fork of the DataStax C++ driver, inside the acsylla wheel) runs its
I/O on its own thread and wakes the event loop once per batch of answers; it speaks
protocol v4 without compression (the wire is not the bottleneck; compression costs CPU on
both ends). All contact points share one native port (the driver has one port setting).

About 900 lines, a third of them this description: one adapter whose reads, writes, ring
pinning, retries and schema statements share its session, prepared statements and request
slots; the token ring itself is apart (kv/cassandra_ring.py), as are its settings
(kv/settings.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import acsylla
from acsylla import errors as cass_errors

from inferstack.core.errors import NotFoundError, UnavailableError
from inferstack.core.fields import NAME_PATTERN
from inferstack.core.registry import Registry
from inferstack.kv.cassandra_ring import (
    Address,
    Node,
    TokenRing,
    local_nodes,
    replication_factor,
)
from inferstack.kv.settings import CassandraSettings

DEFAULT_PORT = 9042
DEFAULT_REPLICATION: Mapping[str, str | int] = {
    "class": "SimpleStrategy",
    "replication_factor": 1,
}
MAX_TTL_SECONDS = 630_720_000  # 20 years: the largest TTL Cassandra accepts
MAX_TABLE_NAME = 48  # portable: Cassandra 4 refuses longer names, so did ScyllaDB
TABLE_PREFIX = "fg_"
READ_GROUP_SIZE = 50  # keys per multi-partition read (bench/README.md: 25-100 measure alike)
# A paged multi-partition read makes Cassandra read the partitions one after another (its
# MultiPartitionPager): twice the CPU and the latency of an unpaged one (bench/README.md).
# Groups are bounded, so their answer is too.
UNPAGED = -1
WRITE_BATCH_ROWS = 64
# Cassandra warns (in its log, for every batch) above 5 KiB of mutations; it counts about
# 60 bytes per row beyond key and value (timestamps, TTL, row and cell headers).
WRITE_BATCH_BYTES = 4800
WRITE_ROW_OVERHEAD = 64
WRITE_BATCHES_IN_FLIGHT = 16  # per write call: more only queues inside Cassandra
RING_REFRESH_SECONDS = 60.0
UNPIN_SECONDS = 5.0  # a replica that did not answer gets no pinned requests for this long
_TABLE_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,7}$")  # leaves room for names in 48 characters
_KIND = re.compile(r"^[a-z][a-z ]{0,39}$")  # goes into a quoted CQL table comment

_GROUP_NAME = re.compile(NAME_PATTERN)
_KEYSPACE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
# Data centre names and replication options: letters, digits and a little punctuation;
# they end up inside a quoted CQL map literal, so nothing that could close the quote.
_REPLICATION_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_STRATEGIES = ("SimpleStrategy", "NetworkTopologyStrategy")
_CONSISTENCY = {level.name: level for level in acsylla.Consistency}

# Driver errors that mean "the cluster did not answer in time", as opposed to a bad request.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    cass_errors.CassErrorLibNoHostsAvailable,
    cass_errors.CassErrorLibRequestTimedOut,
    cass_errors.CassErrorLibUnableToConnect,
    cass_errors.CassErrorLibRequestQueueFull,
    cass_errors.CassErrorLibNoStreams,
    cass_errors.CassErrorLibWriteError,
    cass_errors.CassErrorLibHostResolution,
    cass_errors.CassErrorLibUnableToClose,
    cass_errors.CassErrorServerUnavailable,
    cass_errors.CassErrorServerOverloaded,
    cass_errors.CassErrorServerIsBootstrapping,
    cass_errors.CassErrorServerReadTimeout,
    cass_errors.CassErrorServerWriteTimeout,
    cass_errors.CassExceptionConnectionError,
    OSError,
)

_log = logging.getLogger("inferstack.cassandra")
# Expected driver log lines, logged at DEBUG: the first comes at ERROR on every connection to
# Apache Cassandra (it has no shards); the second is Cassandra advising, on every batch,
# against what the write path does on purpose (batches of rows that share a replica).
_EXPECTED = ("Could not retrieve sharding info", "Server-side warning: Unlogged batch covering")
_LEVELS = {
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
}


def _driver_log(message: Any) -> None:
    """The C++ driver's log lines, through Python logging."""
    text = str(message.message)
    expected = text.startswith(_EXPECTED)
    level = logging.DEBUG if expected else _LEVELS.get(str(message.log_level), logging.DEBUG)
    _log.log(level, "driver: %s", text)


class CassandraStorage:
    """Feature rows in ScyllaDB or Apache Cassandra; see the module docstring for the layout.

    `settings` is the deployment's `storage:` section, taken whole (kv/settings.py).
    Connects on `connect()` or, lazily, on the first `prepare`/`read`/`write`.
    """

    reads_inline = False

    def __init__(
        self,
        settings: CassandraSettings,
        *,
        schema_timeout: float = 30.0,
        table_prefix: str = TABLE_PREFIX,
        kind: str = "feature group",
        read_group_size: int = READ_GROUP_SIZE,
    ) -> None:
        """`table_prefix` and `kind` (what a table holds, for table comments and messages)
        let other parts keep their own tables through this adapter, e.g. the interaction
        store's cold tier ("ic_", "interaction type")."""
        contact_points, keyspace = settings.contact_points, settings.keyspace
        if not contact_points:
            raise ValueError("cassandra: at least one contact point (host:port) is needed")
        if not _KEYSPACE_NAME.match(keyspace):
            raise ValueError(f"cassandra keyspace {keyspace!r} must match {_KEYSPACE_NAME.pattern}")
        for name, value in (
            ("request_timeout", settings.request_timeout),
            ("connect_timeout", settings.connect_timeout),
            ("schema_timeout", schema_timeout),
        ):
            if not value > 0:
                raise ValueError(f"cassandra {name} must be positive, got {value}")
        if settings.max_in_flight < 1:
            raise ValueError(
                f"cassandra max_in_flight must be at least 1, got {settings.max_in_flight}"
            )
        if read_group_size < 1:
            raise ValueError(f"cassandra read_group_size must be at least 1, got {read_group_size}")
        if not _TABLE_PREFIX.match(table_prefix):
            raise ValueError(
                f"cassandra table prefix {table_prefix!r} must match {_TABLE_PREFIX.pattern}"
            )
        if not _KIND.match(kind):
            raise ValueError(f"cassandra table kind {kind!r} must match {_KIND.pattern}")
        self.settings = settings
        self.table_prefix = table_prefix
        self.kind = kind
        self.contact_points = [parse_contact_point(point) for point in contact_points]
        self.where = ", ".join(_format_address(host, port) for host, port in self.contact_points)
        ports = {port for _, port in self.contact_points}
        if len(ports) > 1:
            raise ValueError(
                f"cassandra contact points {self.where} must share one port: the driver "
                "connects to every node on the same native port"
            )
        self.port = ports.pop()
        self.keyspace = keyspace
        self.local_dc = settings.local_dc
        self.request_timeout = settings.request_timeout
        self.connect_timeout = settings.connect_timeout
        self.schema_timeout = schema_timeout
        self.max_in_flight = settings.max_in_flight
        self.read_group_size = read_group_size
        self._replication_cql = replication_cql(settings.replication or DEFAULT_REPLICATION)
        self._read_consistency = consistency_level(settings.read_consistency)
        self._write_consistency = consistency_level(settings.write_consistency)

        self._session: Any = None
        self._closed = False
        self._connect_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._statements: dict[str, _Statements] = {}
        # Tables this adapter created: the driver's metadata learns of them a moment later.
        self._created: set[str] = set()
        self._preparing: dict[str, asyncio.Task[_Statements | None]] = {}
        self._ring = TokenRing([], 1, "")  # until connected: any node will do
        self._ring_built = -math.inf
        self._ring_task: asyncio.Task[None] | None = None
        self._unpinned: dict[Address, float] = {}  # replica -> until when (monotonic)

    # --- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the driver's connection pools; raises UnavailableError naming the address."""
        async with self._connect_lock:
            if self._closed:
                raise UnavailableError(f"cassandra storage for {self.where} is closed")
            if self._session is not None:
                return
            attempt = asyncio.ensure_future(self._open_session())
            try:
                self._session = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(_close_unused)
                raise
        await self._refresh_ring()

    async def _open_session(self) -> Any:
        hosts = await asyncio.to_thread(_resolve, [host for host, _ in self.contact_points])
        if not hosts:
            raise self._unavailable_text("no contact point resolves to an address")
        try:
            cluster = acsylla.create_cluster(
                hosts,
                port=self.port,
                connect_timeout=self.connect_timeout,
                request_timeout=self.request_timeout,
                consistency=self._read_consistency,
                load_balance_dc_aware=self.local_dc,
                token_aware_routing=True,
                # Primary replica first: a batch of rows sharing a primary goes to it.
                token_aware_routing_shuffle_replicas=False,
                # The default backs off to a minute: after an outage the pool would stay
                # down long after the node is back. An attempt every 2 s per node is cheap.
                exponential_reconnect_base_delay_ms=250,
                exponential_reconnect_max_delay_ms=2000,
                max_schema_wait_time_ms=int(self.schema_timeout * 1000),
                log_level="warn",
                logging_callback=_driver_log,
                application_name="inferstack",
            )
            return await cluster.create_session()
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _connected(self) -> Any:
        if self._session is None:
            await self.connect()
        assert self._session is not None
        return self._session

    async def close(self) -> None:
        self._closed = True
        for task in [*self._preparing.values(), self._ring_task]:
            if task is not None:
                task.cancel()
        session, self._session = self._session, None
        self._statements.clear()
        if session is not None:
            await session.close()

    # --- the ring -----------------------------------------------------------------------

    async def _refresh_ring(self) -> None:
        """Rebuild the ring from the system tables; on failure keep the one we have."""
        session = self._session
        if session is None:
            return
        self._ring_built = time.monotonic()  # also after a failure: retry after the period
        local_cql = "SELECT data_center, rpc_address, tokens, partitioner FROM system.local"
        keyspace_cql = "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?"
        try:
            local = (await session.execute(_statement(local_cql))).first()
            if local is None:
                return
            local_row = local.as_dict()
            # The peers of the node that answered above: together, every node once.
            here = (str(local_row["rpc_address"]), self.port)
            peers = await self._peers(session, here)
            found = (await session.execute(_statement(keyspace_cql, [self.keyspace]))).first()
        except Exception as exc:  # a node going away, or a server without these tables
            _log.debug("cassandra ring not refreshed: %s", describe(exc))
            return
        own_dc = str(local_row["data_center"])
        data_center = self.local_dc or own_dc
        nodes = [_node(here[0], here[1], own_dc, local_row["tokens"]), *peers]
        replication = found.as_dict()["replication"] if found is not None else {}
        options = {str(key): str(value) for key, value in replication.items()}
        strategy = options.get("class", "").rsplit(".", 1)[-1]
        # NetworkTopologyStrategy places replicas per data centre; SimpleStrategy ignores them.
        ring_nodes = nodes if strategy == "SimpleStrategy" else local_nodes(nodes, data_center)
        self._ring = TokenRing(
            ring_nodes, replication_factor(options, data_center), str(local_row["partitioner"])
        )

    async def _peers(self, session: Any, host: Address) -> list[Node]:
        """The other nodes as `host` sees them: system.peers_v2 (Cassandra 4+, with native
        ports), else system.peers (Cassandra 3, ScyllaDB: every node on our port)."""
        modern = _statement(
            "SELECT data_center, native_address, native_port, tokens FROM system.peers_v2"
        )
        modern.set_host(*host)
        try:
            rows = [row.as_dict() for row in await session.execute(modern)]
        except cass_errors.CassErrorServerInvalidQuery:
            pass
        else:
            return [
                _node(r["native_address"], r["native_port"] or self.port, r["data_center"],
                      r["tokens"])
                for r in rows
            ]  # fmt: skip
        legacy = _statement("SELECT data_center, rpc_address, tokens FROM system.peers")
        legacy.set_host(*host)
        return [
            _node(r["rpc_address"], self.port, r["data_center"], r["tokens"])
            for r in (row.as_dict() for row in await session.execute(legacy))
        ]

    def _pin(self, replica: Address | None) -> Address | None:
        """The replica to pin a request to, unless it failed to answer a moment ago."""
        if replica is None or not self._unpinned:
            return replica
        until = self._unpinned.get(replica)
        if until is None:
            return replica
        if time.monotonic() < until:
            return None
        del self._unpinned[replica]
        return replica

    def _ring_now(self) -> TokenRing:
        """The current ring, refreshing it in the background once it is old."""
        stale = time.monotonic() - self._ring_built > RING_REFRESH_SECONDS
        if stale and (self._ring_task is None or self._ring_task.done()):
            self._ring_task = asyncio.ensure_future(self._refresh_ring())
        return self._ring

    # --- schema -------------------------------------------------------------------------

    async def prepare(self, registry: Registry) -> None:
        """Create the keyspace and a table per new feature group, then prepare statements."""
        await self.prepare_tables(registry.feature_groups)

    async def prepare_tables(self, names: Iterable[str]) -> None:
        """Create the keyspace and a table per name that has none, then prepare statements."""
        await self._connected()
        # Checking the driver's schema metadata first saves a round trip per group when
        # many processes start at once, and their CREATE ... IF NOT EXISTS racing each other.
        if not self._keyspace_exists():
            await self._execute_schema(
                f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} "
                f"WITH replication = {self._replication_cql}"
            )
            await self._refresh_ring()  # the replication factor is known now
        for group in names:
            table = self._table_name(group)
            if not self._table_exists(table):
                await self._execute_schema(
                    f'CREATE TABLE IF NOT EXISTS {self.keyspace}."{table}" '
                    "(k blob PRIMARY KEY, v blob) "
                    "WITH compaction = {'class': 'LeveledCompactionStrategy'} "
                    "AND bloom_filter_fp_chance = 0.01 "
                    f"AND comment = 'inferstack {self.kind} {group}'"
                )
                self._created.add(table)
            await self._statements_for(group)  # so the first read does not pay for it

    async def _execute_schema(self, cql: str) -> None:
        # The driver waits (up to schema_timeout) until every node reports the same schema
        # version before it answers, so a statement prepared next on another node finds it.
        session = await self._connected()
        try:
            await session.execute(_statement(cql, timeout=self.schema_timeout))
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    # --- prepared statements ------------------------------------------------------------

    async def _statements_for(self, group: str) -> _Statements | None:
        """The group's prepared statements, or None if its table does not exist (yet)."""
        statements = self._statements.get(group)
        if statements is not None:
            return statements
        # Concurrent first calls share one preparation instead of each preparing.
        task = self._preparing.get(group)
        if task is None:
            task = asyncio.ensure_future(self._prepare_statements(group))
            self._preparing[group] = task
            task.add_done_callback(lambda finished: self._prepared(group, finished))
        # Shielded: one caller giving up must not cancel the others' preparation.
        return await asyncio.shield(task)

    def _prepared(self, group: str, task: asyncio.Task[_Statements | None]) -> None:
        self._preparing.pop(group, None)
        if task.cancelled():
            return
        if task.exception() is None and (statements := task.result()) is not None:
            self._statements[group] = statements

    async def _prepare_statements(self, group: str) -> _Statements | None:
        table = f'{self.keyspace}."{self._table_name(group)}"'
        session = await self._connected()
        # The driver's schema metadata follows schema changes as the server announces them
        # (and our own CREATE TABLE before it returns). Asking it first spares a failed
        # PREPARE round trip for every read of an unknown group.
        if not self._table_exists(self._table_name(group)):
            return None  # nobody ran prepare() for this group: it has no rows
        # Preparing is a one-off per group and process: allow it a little more than a read.
        timeout = max(self.request_timeout, 1.0)
        try:
            return await asyncio.wait_for(self._prepare_on(session, table), timeout=timeout)
        except cass_errors.CassErrorServerInvalidQuery:
            if self._table_exists(self._table_name(group)):
                raise
            return None  # dropped between the check and PREPARE
        except TimeoutError as exc:
            raise UnavailableError(
                f"cassandra at {self.where} did not answer: preparing statements for "
                f"{self.kind} '{group}' took longer than {timeout:g}s"
            ) from exc
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    @staticmethod
    async def _prepare_on(session: Any, table: str) -> _Statements:
        select = await session.create_prepared(f"SELECT k, v FROM {table} WHERE k IN ?")
        insert = await session.create_prepared(
            f"INSERT INTO {table} (k, v) VALUES (?, ?) USING TTL ?"
        )
        insert_at = await session.create_prepared(
            f"INSERT INTO {table} (k, v) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?"
        )
        return _Statements(select, insert, insert_at)

    def _table_name(self, group: str) -> str:
        return table_name(group, self.table_prefix, self.kind)

    def _keyspace_exists(self) -> bool:
        if self._session is None:
            return False
        return self.keyspace in self._session.get_metadata().get_keyspaces()

    def _table_exists(self, table: str) -> bool:
        if table in self._created:
            return True
        if self._session is None:
            return False
        try:
            return table in self._session.get_metadata().get_tables(self.keyspace)
        except cass_errors.KeyspaceNotFound:
            return False

    # --- reads and writes ---------------------------------------------------------------

    async def read(
        self, group: str, keys: Sequence[bytes], *, latest: bool = False
    ) -> list[bytes | None]:
        """The rows of `keys` (None where absent), at the read consistency; `latest` reads at
        the write consistency instead, so that with quorum writes (the default) the answer
        holds every write acknowledged before the read began."""
        if not keys:
            return []
        statements = await self._statements_for(group)
        if statements is None:
            return [None] * len(keys)
        unique = list(dict.fromkeys(keys))
        select = statements.select
        consistency = self._write_consistency if latest else self._read_consistency

        def request(keys_of_group: list[bytes]) -> _Send:
            def send(session: Any, replica: Address | None) -> Awaitable[Any]:
                statement = select.bind([keys_of_group], consistency=consistency, page_size=UNPAGED)
                statement.set_is_idempotent(True)
                if replica is not None:
                    statement.set_host(*replica)
                return session.execute(statement)  # type: ignore[no-any-return]

            return send

        groups = self._ring_now().groups(unique, self.read_group_size)
        requests = [
            _Request(request([unique[i] for i in g.positions]), self._pin(g.replica))
            for g in groups
        ]
        found: dict[bytes, bytes] = {}
        for result in await self._run(requests, window=None):
            found.update(row.as_tuple() for row in result)
        return [found.get(key) for key in keys]

    async def write(
        self,
        group: str,
        rows: Sequence[tuple[bytes, bytes]],
        ttl: float | None,
        timestamp: int | None = None,
    ) -> None:
        """Upsert each row; not atomic across rows, but safe to retry (see module docstring).

        `timestamp` (microseconds) is the rows' write time instead of the driver's clock:
        Cassandra keeps, of two writes of a key, the one with the later write time, whatever
        the order they arrive in."""
        if not rows:
            return
        statements = await self._statements_for(group)
        if statements is None:
            raise NotFoundError(
                f"{self.kind} '{group}' has no table in cassandra keyspace "
                f"'{self.keyspace}' at {self.where}: apply its definition first"
            )
        seconds = ttl_seconds(ttl)
        insert = statements.insert if timestamp is None else statements.insert_at
        values: list[Any] = [seconds] if timestamp is None else [seconds, timestamp]
        consistency = self._write_consistency

        def request(batch: list[tuple[bytes, bytes]]) -> _Send:
            def send(session: Any, _replica: Address | None) -> Awaitable[Any]:
                # Batches cannot be pinned: the driver routes one to the primary replica of
                # its first row, which is the shared primary of all its rows.
                if len(batch) == 1:
                    key, value = batch[0]
                    single = insert.bind([key, value, *values], consistency=consistency)
                    single.set_is_idempotent(True)
                    return session.execute(single)  # type: ignore[no-any-return]
                unlogged = acsylla.create_batch_unlogged()
                for key, value in batch:
                    unlogged.add_statement(insert.bind([key, value, *values]))
                unlogged.set_consistency(consistency)
                unlogged.set_is_idempotent(True)
                return session.execute_batch(unlogged)  # type: ignore[no-any-return]

            return send

        groups = self._ring_now().groups([key for key, _ in rows], WRITE_BATCH_ROWS)
        requests = [
            _Request(request(batch), None)
            for g in groups
            for batch in _batches([rows[i] for i in g.positions])
        ]
        await self._run(requests, window=WRITE_BATCHES_IN_FLIGHT)

    async def _run(self, requests: Sequence[_Request], window: int | None) -> list[Any]:
        """Send every request, each holding one of the adapter's slots while it is out (and
        at most `window` of this call's at once); the first failure fails the call and no
        more are sent. Answers still arriving after that only free their slots."""
        session = await self._connected()
        call = _Call(len(requests), window)
        for index, request in enumerate(requests):
            if call.failed:
                break
            await call.turn()
            await self._slots.acquire()
            if call.failed:
                self._slots.release()
                call.done_one()
                break
            task = asyncio.ensure_future(self._send(session, request, call, index))
            call.keep(task)
        return await call.wait()

    async def _send(self, session: Any, request: _Request, call: _Call, index: int) -> None:
        try:
            try:
                result = await request.send(session, request.replica)
            except cass_errors.CassErrorLibNoHostsAvailable:
                if request.replica is None:
                    raise
                # The replica is down (or gone): any node can coordinate the request, and
                # does for a while instead of the pinned attempt failing first every time.
                self._unpinned[request.replica] = time.monotonic() + UNPIN_SECONDS
                result = await request.send(session, None)
        except _UNAVAILABLE_ERRORS as exc:
            call.fail(self._unavailable(exc))
        except BaseException as exc:  # handed to the caller, not swallowed
            call.fail(exc)
        else:
            call.answer(index, result)
        finally:
            self._slots.release()
            call.done_one()

    # --- diagnostics (inferstack doctor) ------------------------------------------------

    async def query(
        self, cql: str, parameters: list[Any] | None = None, node: Address | None = None
    ) -> list[dict[str, Any]]:
        """Rows of a read-only query of the system tables, on `node` if given (constant CQL
        only: values are bound). Raises UnavailableError naming the address."""
        session = await self._connected()
        statement = _statement(cql, parameters, timeout=self.request_timeout)
        if node is not None:
            statement.set_host(*node)
        try:
            return [row.as_dict() for row in await session.execute(statement)]
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def nodes(self) -> list[Address]:
        """Every node of the cluster as the contacted one knows it: itself and its peers."""
        local = await self.query("SELECT rpc_address FROM system.local")
        if not local:
            return []
        here = (str(local[0]["rpc_address"]), self.port)
        try:
            peers = await self._peers(await self._connected(), here)
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return [here, *(peer.address for peer in peers)]

    async def existing_tables(self) -> set[str] | None:
        """The tables in the keyspace, per the cluster's schema; None without a keyspace."""
        where = [self.keyspace]
        found = await self.query(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?", where
        )
        if not found:
            return None
        rows = await self.query(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", where
        )
        return {str(row["table_name"]) for row in rows}

    def table_of(self, name: str) -> str:
        """The table holding `name`'s rows (a feature group, or this adapter's kind)."""
        return self._table_name(name)

    # --- errors -------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> UnavailableError:
        return self._unavailable_text(describe(error))

    def _unavailable_text(self, text: str) -> UnavailableError:
        return UnavailableError(f"cassandra at {self.where} did not answer: {text}")


@dataclass(frozen=True)
class _Statements:
    select: Any  # acsylla PreparedStatement
    insert: Any
    insert_at: Any  # with a write timestamp of the caller's


# Sends one request through a session, pinned to a replica unless that is None.
_Send = Callable[[Any, Address | None], Awaitable[Any]]


@dataclass(frozen=True)
class _Request:
    send: _Send
    replica: Address | None


class _Call:
    """The answers to one read or write call, gathered on the event loop."""

    def __init__(self, count: int, window: int | None) -> None:
        self._answers: list[Any] = [None] * count
        self._window = asyncio.Semaphore(window) if window else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._outstanding = 0
        self._issuing = True
        self._done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    @property
    def failed(self) -> bool:
        return self._done.done()

    async def turn(self) -> None:
        self._outstanding += 1
        if self._window is not None:
            await self._window.acquire()

    def keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)  # a reference, or the task may be garbage-collected
        task.add_done_callback(self._tasks.discard)

    def answer(self, index: int, result: Any) -> None:
        self._answers[index] = result

    def fail(self, error: BaseException) -> None:
        if not self._done.done():
            self._done.set_exception(error)

    def done_one(self) -> None:
        self._outstanding -= 1
        if self._window is not None:
            self._window.release()
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        if not self._issuing and self._outstanding == 0 and not self._done.done():
            self._done.set_result(self._answers)

    async def wait(self) -> list[Any]:
        self._issuing = False
        self._finish_if_complete()
        return await self._done


def _batches(rows: list[tuple[bytes, bytes]]) -> Iterable[list[tuple[bytes, bytes]]]:
    """Consecutive rows, at most WRITE_BATCH_ROWS and about WRITE_BATCH_BYTES per batch."""
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    for row in rows:
        row_size = len(row[0]) + len(row[1]) + WRITE_ROW_OVERHEAD
        if batch and (len(batch) == WRITE_BATCH_ROWS or size + row_size > WRITE_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


def _statement(cql: str, parameters: list[Any] | None = None, timeout: float | None = None) -> Any:
    """An unprepared statement (schema changes, system tables) with bound values."""
    statement = acsylla.create_statement(
        cql, parameters=len(parameters) if parameters else None, timeout=timeout
    )
    if parameters:
        statement.bind_list(parameters)
    return statement


def _node(address: Any, port: Any, data_center: Any, tokens: Any) -> Node:
    return Node((str(address), int(port)), str(data_center), tuple(int(t) for t in tokens or ()))


def _resolve(hosts: list[str]) -> list[str]:
    """Numeric addresses of the hosts that resolve (the driver is given addresses)."""
    addresses: list[str] = []
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addresses += [str(info[4][0]) for info in infos[:1]]
    return list(dict.fromkeys(addresses))


_closing: set[asyncio.Task[Any]] = set()


def _close_unused(attempt: asyncio.Future[Any]) -> None:
    """Close a session whose opening nobody waits for any more."""
    if not attempt.cancelled() and attempt.exception() is None:
        task = asyncio.ensure_future(attempt.result().close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


# --- validated pieces of CQL ----------------------------------------------------------


def parse_contact_point(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address → (host, port)."""
    text = text.strip()
    host, colon, port_text = text.rpartition(":")
    if not colon or (":" in host and not host.startswith("[")):
        host, port_text = text, ""  # no port, or a bare IPv6 address
    host = host.removeprefix("[").removesuffix("]")
    if not host:
        raise ValueError(f"cassandra contact point {text!r} has no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"cassandra contact point {text!r}: port must be 1-65535")
    return host, int(port_text)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def table_name(group: str, prefix: str = TABLE_PREFIX, kind: str = "feature group") -> str:
    """The table of a feature group (or, with another prefix, of another kind of thing);
    raises ValueError for a name that is not valid."""
    if not _GROUP_NAME.match(group):
        raise ValueError(f"{kind} name {group!r} must match {NAME_PATTERN}")
    name = prefix + group
    if len(name) <= MAX_TABLE_NAME:
        return name
    digest = hashlib.blake2b(group.encode(), digest_size=4).hexdigest()
    keep = MAX_TABLE_NAME - len(prefix) - len(digest) - 1
    return f"{prefix}{group[:keep]}_{digest}"


def replication_cql(replication: Mapping[str, str | int]) -> str:
    """A CQL replication map literal from validated options, e.g. NetworkTopologyStrategy."""
    strategy = str(replication.get("class", ""))
    short = strategy.rsplit(".", 1)[-1]
    if short not in _STRATEGIES:
        raise ValueError(
            f"cassandra replication class must be one of {', '.join(_STRATEGIES)}, got {strategy!r}"
        )
    options = {key: value for key, value in replication.items() if key != "class"}
    if not options:
        raise ValueError(f"cassandra replication {short} needs replication factors")
    parts = [f"'class': '{short}'"]
    for key, value in options.items():
        if not _REPLICATION_KEY.match(key):
            raise ValueError(f"cassandra replication option {key!r} is not a valid name")
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            raise ValueError(
                f"cassandra replication factor for {key!r} must be a positive integer, "
                f"got {value!r}"
            )
        parts.append(f"'{key}': '{int(value)}'")
    return "{" + ", ".join(parts) + "}"


def consistency_level(name: str) -> Any:
    """The driver's consistency level for a name such as LOCAL_ONE (any case)."""
    value = _CONSISTENCY.get(name.upper())
    if value is None:
        names = ", ".join(_CONSISTENCY)
        raise ValueError(f"cassandra consistency level {name!r} is not one of {names}")
    return value


def ttl_seconds(ttl: float | None) -> int:
    """The CQL TTL for a group's TTL: whole seconds, rounded up; 0 means never expires."""
    if ttl is None:
        return 0
    # Round up and never to 0, which Cassandra reads as "no TTL": a row meant to expire
    # soon must not live forever.
    return min(max(math.ceil(ttl), 1), MAX_TTL_SECONDS)


def describe(error: BaseException) -> str:
    """One line about a driver error."""
    if isinstance(error, cass_errors.CassErrorLibRequestTimedOut):
        return "request timed out"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if isinstance(error, OSError) else text
