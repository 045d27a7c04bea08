"""Distributed storage: ScyllaDB or Apache Cassandra through `scylla-driver`.

Layout
------
One keyspace (default ``inferstack``) holds one table per feature group::

    CREATE TABLE <keyspace>."fg_<group>" (k blob PRIMARY KEY, v blob)
        WITH compaction = {'class': 'LeveledCompactionStrategy'}
        AND bloom_filter_fp_chance = 0.01

``k`` is the encoded entity key (`inferstack.core.keys`) and ``v`` the encoded row
(`inferstack.core.rowformat`); both are opaque to storage. One partition per entity key
means every read is a single-partition point read that token-aware routing sends straight
to a replica. A table per group (rather than one table keyed by (group, key)) keeps each
group's TTL, size and compaction apart, and lets an operator drop or tune one group alone.
Group names match ``^[a-z][a-z0-9_]{0,62}$``, but Cassandra before 5.0 (and ScyllaDB for
years) limit table names to 48 characters: a table name that would be longer keeps the
group name's first 36 characters plus 8 hex digits of its hash (every process agrees).

- Leveled compaction: rows are overwritten in place by every ingest, and reads are point
  reads, so bounding how many SSTables one key can live in (about one per level) matters
  more than the extra compaction I/O. ScyllaDB and Cassandra both support it.
- ``bloom_filter_fp_chance = 0.01`` (leveled defaults to 0.1): keys with no row (new users,
  cold products) are common in feature lookups; a tighter bloom filter answers "not here"
  without touching disk for 99% of them, for about 10 bits of memory per key.
- Compression and caching stay at the server defaults (LZ4; key cache on, row cache off):
  rows are small binary blobs that compress little, inferstack keeps its own row caches
  in front of storage, and the two servers spell those options differently.
- No table-level default TTL: each write carries ``USING TTL`` from the group definition
  (capped at Cassandra's maximum of 20 years). Rows also carry their expiry in the header,
  which is what readers check; the TTL only lets the server drop expired rows physically.

Requests
--------
Reads issue one ``SELECT v FROM t WHERE k = ?`` per key, concurrently. An ``IN`` across
partitions would make one coordinator fan out and wait for the slowest replica, defeating
token-aware routing. Writes issue one ``INSERT ... USING TTL ?`` per row. Every request is
a prepared statement (prepared once per group and cached), marked idempotent, with values
only as bound parameters; CQL text is built only from validated names.

Routing is token-aware over DC-aware round robin (local data centre only), so each
request goes to a replica of its key; on ScyllaDB the driver is also shard-aware and sends
it to the connection of the CPU core that owns the key. The protocol version is whatever
the driver and server negotiate (v5 with Cassandra 5, v4 with ScyllaDB).

One semaphore per adapter bounds the requests in flight (default 128) across all calls,
so a huge batch cannot flood the cluster; concurrent calls take turns for slots. The
driver answers on its own I/O thread; its callbacks hand results to the event loop with
``call_soon_threadsafe``, so no thread is held per request.

A write call is not atomic: each row is written exactly as given; a failed call may have
written some rows; retrying is safe because writes are idempotent. (An unlogged batch
across partitions would not be atomic either, and a logged batch costs a batchlog round
trip per call.) Last write wins per key, by client-side timestamp.

Consistency defaults to LOCAL_ONE for reads and LOCAL_QUORUM for writes: reads are the
latency-critical path and one replica answers them; writes are acknowledged by a majority
of the local replicas so an acknowledged write survives a node loss. With replication
factor 3 a read may briefly miss a just-acknowledged write; set reads to LOCAL_QUORUM too
for read-your-writes. Timeouts and unreachable nodes raise `UnavailableError` naming the
contact points. The request timeout bounds each request: a call fails as soon as one of
its requests fails and sends no more, but a call with more keys than the in-flight bound
runs in waves, so while the cluster is slow but answering it may take a few timeouts. The
driver reconnects by itself (trying at least every 2 s) once the cluster answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra import (
    ConsistencyLevel,
    CoordinationFailure,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    Timeout,
    Unavailable,
    UnresolvableContactPoints,
)
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import PreparedStatement, tuple_factory

from inferstack.core.errors import NotFoundError, UnavailableError
from inferstack.core.fields import NAME_PATTERN
from inferstack.core.registry import Registry

DEFAULT_PORT = 9042
DEFAULT_KEYSPACE = "inferstack"
DEFAULT_REPLICATION: Mapping[str, str | int] = {
    "class": "SimpleStrategy",
    "replication_factor": 1,
}
MAX_TTL_SECONDS = 630_720_000  # 20 years: the largest TTL Cassandra accepts
MAX_TABLE_NAME = 48  # portable: Cassandra 4 refuses longer names, so did ScyllaDB
TABLE_PREFIX = "fg_"
_TABLE_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,7}$")  # leaves room for names in 48 characters
_KIND = re.compile(r"^[a-z][a-z ]{0,39}$")  # goes into a quoted CQL table comment

READ_PROFILE = "inferstack-read"
WRITE_PROFILE = "inferstack-write"
SCHEMA_PROFILE = "inferstack-schema"

_GROUP_NAME = re.compile(NAME_PATTERN)
_KEYSPACE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
# Data centre names and replication options: letters, digits and a little punctuation;
# they end up inside a quoted CQL map literal, so nothing that could close the quote.
_REPLICATION_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_STRATEGIES = ("SimpleStrategy", "NetworkTopologyStrategy")

# Driver errors that mean "the cluster did not answer in time", as opposed to a bad request.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    Timeout,
    CoordinationFailure,
    ConnectionException,
    OSError,
)


class CassandraStorage:
    """Feature rows in ScyllaDB or Apache Cassandra; see the module docstring for the layout.

    Connects on `connect()` or, lazily, on the first `prepare`/`read`/`write`.
    """

    reads_inline = False

    def __init__(
        self,
        contact_points: Sequence[str],
        *,
        keyspace: str = DEFAULT_KEYSPACE,
        replication: Mapping[str, str | int] | None = None,
        local_dc: str | None = None,
        read_consistency: str = "LOCAL_ONE",
        write_consistency: str = "LOCAL_QUORUM",
        request_timeout: float = 1.0,
        connect_timeout: float = 5.0,
        schema_timeout: float = 30.0,
        max_in_flight: int = 128,
        table_prefix: str = TABLE_PREFIX,
        kind: str = "feature group",
    ) -> None:
        """`table_prefix` and `kind` (what a table holds, for table comments and messages)
        let other parts keep their own tables through this adapter, e.g. the interaction
        store's cold tier ("ic_", "interaction type")."""
        if not contact_points:
            raise ValueError("cassandra: at least one contact point (host:port) is needed")
        if not _KEYSPACE_NAME.match(keyspace):
            raise ValueError(f"cassandra keyspace {keyspace!r} must match {_KEYSPACE_NAME.pattern}")
        for name, value in (
            ("request_timeout", request_timeout),
            ("connect_timeout", connect_timeout),
            ("schema_timeout", schema_timeout),
        ):
            if not value > 0:
                raise ValueError(f"cassandra {name} must be positive, got {value}")
        if max_in_flight < 1:
            raise ValueError(f"cassandra max_in_flight must be at least 1, got {max_in_flight}")
        if not _TABLE_PREFIX.match(table_prefix):
            raise ValueError(
                f"cassandra table prefix {table_prefix!r} must match {_TABLE_PREFIX.pattern}"
            )
        if not _KIND.match(kind):
            raise ValueError(f"cassandra table kind {kind!r} must match {_KIND.pattern}")
        self.table_prefix = table_prefix
        self.kind = kind
        self.contact_points = [parse_contact_point(point) for point in contact_points]
        self.where = ", ".join(_format_address(host, port) for host, port in self.contact_points)
        self.keyspace = keyspace
        self.local_dc = local_dc
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.schema_timeout = schema_timeout
        self.max_in_flight = max_in_flight
        self._replication_cql = replication_cql(replication or DEFAULT_REPLICATION)
        self._read_consistency = consistency_level(read_consistency)
        self._write_consistency = consistency_level(write_consistency)

        self._cluster: Any = None
        self._session: Session | None = None
        self._closed = False
        self._connect_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._statements: dict[str, _Statements] = {}
        self._preparing: dict[str, asyncio.Task[_Statements | None]] = {}

    # --- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the driver's connection pools; raises UnavailableError naming the address."""
        async with self._connect_lock:
            if self._closed:
                raise UnavailableError(f"cassandra storage for {self.where} is closed")
            if self._session is not None:
                return
            # Cluster.connect blocks (DNS, handshakes, metadata): keep it off the event loop.
            attempt = asyncio.ensure_future(asyncio.to_thread(self._connect_blocking))
            try:
                self._cluster, self._session = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # The thread cannot be stopped; shut down what it connects, if anything.
                attempt.add_done_callback(_shut_down_unused)
                raise

    def _connect_blocking(self) -> tuple[Any, Session]:
        try:
            cluster = Cluster(
                contact_points=self.contact_points,
                # Peers the driver discovers without a port in system.peers use this one.
                port=self.contact_points[0][1],
                execution_profiles=self._profiles(),
                # The default backs off to 10 minutes: after an outage of a minute the pool
                # would stay down long after the node is back. A connection attempt every 2 s
                # per down node is cheap.
                reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.25, max_delay=2.0),
                connect_timeout=self.connect_timeout,
                control_connection_timeout=self.connect_timeout,
                max_schema_agreement_wait=self.schema_timeout,
            )
        except DriverException as exc:  # e.g. no contact point resolves
            raise self._unavailable(exc) from exc
        try:
            session = cluster.connect()
        except BaseException as exc:
            cluster.shutdown()  # else its threads keep reconnecting forever
            if isinstance(exc, (DriverException, *_UNAVAILABLE_ERRORS)):
                raise self._unavailable(exc) from exc
            raise
        return cluster, session

    def _profiles(self) -> dict[Any, ExecutionProfile]:
        def profile(consistency: int, timeout: float) -> ExecutionProfile:
            # Token-aware on top of DC-aware: requests go to a replica of the key in the
            # local data centre, so the coordinator needs no extra hop.
            routing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc))
            return ExecutionProfile(
                load_balancing_policy=routing,
                consistency_level=consistency,
                request_timeout=timeout,
                row_factory=tuple_factory,  # no per-row namedtuple class: rows are (v,)
            )

        read = profile(self._read_consistency, self.request_timeout)
        return {
            EXEC_PROFILE_DEFAULT: read,
            READ_PROFILE: read,
            WRITE_PROFILE: profile(self._write_consistency, self.request_timeout),
            SCHEMA_PROFILE: profile(ConsistencyLevel.ONE, self.schema_timeout),
        }

    async def _connected(self) -> Session:
        if self._session is None:
            await self.connect()
        assert self._session is not None
        return self._session

    async def close(self) -> None:
        self._closed = True
        for task in self._preparing.values():
            task.cancel()
        cluster, self._cluster, self._session = self._cluster, None, None
        self._statements.clear()
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

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
            await self._statements_for(group)  # so the first read does not pay for it

    async def _execute_schema(self, cql: str) -> None:
        session = await self._connected()
        try:
            response = session.execute_async(cql, execution_profile=SCHEMA_PROFILE)
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        await self._await_response(response)
        # The driver waits for every node to report the same schema version; if they do not
        # agree in time, a statement prepared next on another node could miss the table.
        if not response.is_schema_agreed:
            raise UnavailableError(
                f"cassandra at {self.where}: nodes did not agree on the schema within "
                f"{self.schema_timeout:g}s after: {cql.split(' WITH ')[0]}"
            )

    async def _await_response(self, response: ResponseFuture) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(self._translate(error))

        response.add_callbacks(
            lambda result: _post(loop, settle, result, None),
            lambda error: _post(loop, settle, None, error),
        )
        return await done

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
        # PREPARE, which the driver logs as an error, for every read of an unknown group.
        if not self._table_exists(self._table_name(group)):
            return None  # nobody ran prepare() for this group: it has no rows
        # Preparing is a one-off per group and process: allow it a little more than a read.
        timeout = max(self.request_timeout, 1.0)
        try:
            # Session.prepare blocks; it has no asynchronous form in this driver.
            return await asyncio.wait_for(
                asyncio.to_thread(self._prepare_blocking, session, table), timeout=timeout
            )
        except InvalidRequest:
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
    def _prepare_blocking(session: Session, table: str) -> _Statements:
        select = session.prepare(f"SELECT v FROM {table} WHERE k = ?")
        insert = session.prepare(f"INSERT INTO {table} (k, v) VALUES (?, ?) USING TTL ?")
        # Idempotent: the driver may retry or speculatively re-send them on another node.
        select.is_idempotent = True
        insert.is_idempotent = True
        return _Statements(select, insert)

    def _table_name(self, group: str) -> str:
        return table_name(group, self.table_prefix, self.kind)

    def _keyspace_metadata(self) -> Any:
        keyspaces = self._cluster.metadata.keyspaces if self._cluster is not None else {}
        return keyspaces.get(self.keyspace)

    def _keyspace_exists(self) -> bool:
        return self._keyspace_metadata() is not None

    def _table_exists(self, table: str) -> bool:
        keyspace = self._keyspace_metadata()
        return keyspace is not None and table in keyspace.tables

    # --- reads and writes ---------------------------------------------------------------

    async def read(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        statements = await self._statements_for(group)
        if statements is None:
            return [None] * len(keys)
        parameters = ((key,) for key in keys)
        answers = await self._run(statements.select, parameters, len(keys), READ_PROFILE)
        # Each answer is the list of rows of one single-partition SELECT: [] or [(v,)].
        return [rows[0][0] if rows else None for rows in answers]

    async def write(
        self, group: str, rows: Sequence[tuple[bytes, bytes]], ttl: float | None
    ) -> None:
        """Upsert each row; not atomic across rows, but safe to retry (see module docstring)."""
        if not rows:
            return
        statements = await self._statements_for(group)
        if statements is None:
            raise NotFoundError(
                f"{self.kind} '{group}' has no table in cassandra keyspace "
                f"'{self.keyspace}' at {self.where}: apply its definition first"
            )
        seconds = ttl_seconds(ttl)
        await self._run(
            statements.insert,
            ((key, value, seconds) for key, value in rows),
            len(rows),
            WRITE_PROFILE,
        )

    async def _run(
        self,
        statement: PreparedStatement,
        parameters: Iterable[tuple[Any, ...]],
        count: int,
        profile: str,
    ) -> list[Any]:
        """Execute `statement` once per parameter tuple, at most `max_in_flight` at a time."""
        session = await self._connected()
        calls = _Calls(asyncio.get_running_loop(), self._slots, count, self._translate)
        try:
            for index, values in enumerate(parameters):
                if calls.failed:
                    break  # one request failed: the call fails, sending more is wasted work
                await self._slots.acquire()
                try:
                    response = session.execute_async(statement, values, execution_profile=profile)
                except BaseException:
                    self._slots.release()
                    raise
                calls.watch(index, response)
            return await calls.wait()
        except _UNAVAILABLE_ERRORS as exc:  # raised by execute_async itself
            calls.abandon()
            raise self._unavailable(exc) from exc
        except BaseException:
            calls.abandon()  # cancelled: answers still arriving only free their slots
            raise

    # --- errors -------------------------------------------------------------------------

    def _translate(self, error: BaseException) -> BaseException:
        if isinstance(error, _UNAVAILABLE_ERRORS):
            return self._unavailable(error)
        return error

    def _unavailable(self, error: BaseException) -> UnavailableError:
        return UnavailableError(f"cassandra at {self.where} did not answer: {describe(error)}")


@dataclass(frozen=True)
class _Statements:
    select: PreparedStatement
    insert: PreparedStatement


class _Calls:
    """The answers to one read or write call, gathered on the event loop.

    The driver calls back on its I/O thread; every callback only posts to the loop, where
    the slot is released and the answer stored, so no state is shared between threads.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        slots: asyncio.Semaphore,
        count: int,
        translate: Any,
    ) -> None:
        self._loop = loop
        self._slots = slots
        self._translate = translate
        self._answers: list[Any] = [None] * count
        self._pending = 0
        self._issuing = True
        self._done: asyncio.Future[list[Any]] = loop.create_future()

    @property
    def failed(self) -> bool:
        return self._done.done()

    def watch(self, index: int, response: ResponseFuture) -> None:
        self._pending += 1
        response.add_callbacks(
            self._on_answer, self._on_error, callback_args=(index,), errback_args=(index,)
        )

    def _on_answer(self, rows: Any, index: int) -> None:  # driver thread
        _post(self._loop, self._settle, index, rows, None)

    def _on_error(self, error: BaseException, index: int) -> None:  # driver thread
        _post(self._loop, self._settle, index, None, error)

    def _settle(self, index: int, rows: Any, error: BaseException | None) -> None:
        self._slots.release()
        self._pending -= 1
        if self._done.done():
            return
        if error is not None:
            self._done.set_exception(self._translate(error))
            return
        self._answers[index] = rows
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        if not self._issuing and self._pending == 0 and not self._done.done():
            self._done.set_result(self._answers)

    async def wait(self) -> list[Any]:
        self._issuing = False
        self._finish_if_complete()
        return await self._done

    def abandon(self) -> None:
        if not self._done.done():
            self._done.cancel()


def _shut_down_unused(attempt: asyncio.Future[tuple[Any, Session]]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        cluster = attempt.result()[0]
        asyncio.get_running_loop().run_in_executor(None, cluster.shutdown)


def _post(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Run `callback(*args)` on `loop` from the driver's thread."""
    # A closed loop raises RuntimeError: nobody is waiting for this answer any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


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


def consistency_level(name: str) -> int:
    value = ConsistencyLevel.name_to_value.get(name.upper())
    if value is None:
        names = ", ".join(ConsistencyLevel.name_to_value)
        raise ValueError(f"cassandra consistency level {name!r} is not one of {names}")
    return int(value)


def ttl_seconds(ttl: float | None) -> int:
    """The CQL TTL for a group's TTL: whole seconds, rounded up; 0 means never expires."""
    if ttl is None:
        return 0
    # Round up and never to 0, which Cassandra reads as "no TTL": a row meant to expire
    # soon must not live forever.
    return min(max(math.ceil(ttl), 1), MAX_TTL_SECONDS)


def describe(error: BaseException) -> str:
    """One line about a driver error; NoHostAvailable lists what each host said."""
    if isinstance(error, OperationTimedOut):
        # Its own text repeats the driver's advice on setting timeouts; the host is what helps.
        host = getattr(error, "last_host", None)
        return f"request timed out (waiting for {host})" if host else "request timed out"
    if isinstance(error, UnresolvableContactPoints):
        return "no contact point resolves to an address"
    if isinstance(error, NoHostAvailable):
        errors = getattr(error, "errors", None) or {}
        detail = "; ".join(f"{host}: {cause}" for host, cause in errors.items())
        message = error.args[0] if error.args else "no host available"
        return f"{message} ({detail})" if detail else str(message)
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if isinstance(error, OSError) else text
