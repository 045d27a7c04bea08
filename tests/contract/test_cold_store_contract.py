"""The ColdStore contract, run against every adapter.

`lmdb` is LmdbColdStore in a fresh directory per test; `cassandra` is CassandraColdStore
against the real Apache Cassandra that scripts/services.py starts, one connection and one
keyspace (`test_<random>`, dropped at the end) for this module. Every test uses interaction
types with fresh names, so tests never see each other's rows. Adapter-specific checks (no
TTL, table and database names, an unreachable cluster) follow the contract.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from inferstack.core.errors import NotFoundError, UnavailableError
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.registry import Registry, plan
from inferstack.interactions.cold.base import ColdStore, ColdWrite
from inferstack.interactions.cold.cassandra import CassandraColdStore
from inferstack.interactions.cold.lmdb import LmdbColdStore
from inferstack.interactions.coldrow import decode_history, encode_history
from inferstack.kv.cassandra import parse_contact_point
from inferstack.kv.settings import CassandraSettings
from tests.helpers import drop_keyspace

CASSANDRA_TIMEOUT = 10.0  # generous: the contract is about behaviour, not speed

ADAPTERS = [
    pytest.param("lmdb", id="lmdb"),
    pytest.param("cassandra", id="cassandra", marks=pytest.mark.services),
]


def interaction_type(name: str) -> InteractionType:
    return InteractionType.model_validate(
        {
            "name": name,
            "user": {"name": "user_id", "type": "int64"},
            "item": {"name": "product_id", "type": "int64"},
        }
    )


def registry_of(*types: str, base: Registry | None = None) -> Registry:
    """A registry (built by the real planner) with these interaction types."""
    current = base or Registry()
    kept = [stored.definition for stored in current.interaction_types.values()]
    return plan(current, [], [], [], [*kept, *map(interaction_type, types)]).registry


@pytest.fixture
def new_type() -> Callable[[], str]:
    """Fresh, valid interaction type names: tests sharing one keyspace never collide."""
    return lambda: f"t_{uuid.uuid4().hex[:16]}"


def user(number: int) -> bytes:
    return number.to_bytes(8, "big")


def history(tag: int | str, events: int = 3) -> bytes:
    """A real cold row (event rows here are opaque payloads: stores never look inside)."""
    return encode_history([f"{tag}/{n}".encode().ljust(24, b"\xab") for n in range(events)])


@pytest.fixture(scope="module")
async def cassandra_cold(cassandra_endpoint: str) -> AsyncIterator[CassandraColdStore]:
    keyspace = f"test_{uuid.uuid4().hex[:12]}"
    store = CassandraColdStore(
        CassandraSettings(
            contact_points=[cassandra_endpoint],
            keyspace=keyspace,
            request_timeout=CASSANDRA_TIMEOUT,
        )
    )
    await store.connect()
    try:
        yield store
    finally:
        await store.close()
        await asyncio.to_thread(drop_keyspace, cassandra_endpoint, keyspace)


@pytest.fixture
async def lmdb_cold(tmp_path: Path) -> AsyncIterator[LmdbColdStore]:
    store = LmdbColdStore(tmp_path / "interactions" / "cold")
    yield store
    await store.close()


@pytest.fixture(params=ADAPTERS)
def cold(request: pytest.FixtureRequest) -> ColdStore:
    # A plain function: pytest-asyncio cannot set up an async fixture (the adapter's) from
    # inside another async fixture, which already runs on the event loop.
    store: ColdStore = request.getfixturevalue(f"{request.param}_cold")
    return store


def fence() -> int:
    """A fence as claims make them: microseconds of the clock (Cassandra write timestamps)."""
    return time.time_ns() // 1000


async def put(store: ColdStore, kind: str, rows: list[tuple[bytes, bytes]]) -> None:
    """Write rows as a sweeper does: after reading what they replace, under a new fence."""
    current = await store.read(kind, [u for u, _ in rows], latest=True)
    writes = [ColdWrite(u, row, read) for (u, row), read in zip(rows, current, strict=True)]
    assert await store.write(kind, writes, fence()) == []


async def prepared(store: ColdStore, *types: str) -> Registry:
    registry = registry_of(*types)
    await store.prepare(registry)
    return registry


# --- the contract -------------------------------------------------------------------------


async def test_round_trip_and_missing_users_read_as_none(
    cold: ColdStore, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    await prepared(cold, kind)
    await put(cold, kind, [(user(1), history(1)), (user(3), history(3))])
    answer = await cold.read(kind, [user(0), user(1), user(2), user(3), user(4)])
    assert answer == [None, history(1), None, history(3), None]
    row = answer[1]
    assert row is not None
    assert decode_history(row) == decode_history(history(1))


async def test_a_write_replaces_the_previous_row(
    cold: ColdStore, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    await prepared(cold, kind)
    await put(cold, kind, [(user(1), history("old", events=50)), (user(2), history("kept"))])
    await put(cold, kind, [(user(1), history("new", events=1))])  # shorter than before
    assert await cold.read(kind, [user(1), user(2)]) == [history("new", events=1), history("kept")]


async def test_many_users_in_one_read_keep_order_and_duplicates(
    cold: ColdStore, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    await prepared(cold, kind)
    rows = {user(n): history(n, events=n % 7) for n in range(500)}
    await put(cold, kind, list(rows.items()))
    wanted = list(rows)
    random.Random(5).shuffle(wanted)
    wanted += wanted[:100]  # duplicates
    wanted.insert(250, user(10_000))  # and a user with no history
    assert await cold.read(kind, wanted) == [rows.get(u) for u in wanted]


async def test_a_write_never_replaces_a_row_written_under_a_later_fence(
    cold: ColdStore, new_type: Callable[[], str]
) -> None:
    """A sweeper that stalled past its lease wakes up and writes what it merged: the row of
    the sweeper that took over (a later claim, a larger fence) stays."""
    kind = new_type()
    await prepared(cold, kind)
    stale_fence = fence()
    await put(cold, kind, [(user(2), history("untouched"))])
    newer = await cold.write(kind, [ColdWrite(user(1), history("newer"), None)], fence())
    assert newer == []
    stale = [ColdWrite(user(1), history("stale"), None), ColdWrite(user(2), history(2), None)]
    refused = await cold.write(kind, stale, stale_fence)
    assert set(refused) <= {user(1), user(2)}  # Cassandra cannot tell; LMDB tells both
    assert await cold.read(kind, [user(1), user(2)]) == [history("newer"), history("untouched")]
    assert await cold.read(kind, [user(1)], latest=True) == [history("newer")]


async def test_types_are_kept_apart(cold: ColdStore, new_type: Callable[[], str]) -> None:
    clicks, orders = new_type(), new_type()
    await prepared(cold, clicks, orders)
    await put(cold, clicks, [(user(1), history("click")), (user(2), history("click 2"))])
    await put(cold, orders, [(user(1), history("order"))])
    assert await cold.read(clicks, [user(1), user(2)]) == [history("click"), history("click 2")]
    assert await cold.read(orders, [user(1), user(2)]) == [history("order"), None]


async def test_unknown_or_unwritten_types_read_as_none(
    cold: ColdStore, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    await prepared(cold, kind)
    assert await cold.read(kind, [user(1), user(1)]) == [None, None]
    assert await cold.read(new_type(), [user(1)]) == [None]


async def test_empty_batches(cold: ColdStore, new_type: Callable[[], str]) -> None:
    kind = new_type()
    await prepared(cold, kind)
    assert await cold.read(kind, []) == []
    await put(cold, kind, [])
    assert await cold.read(kind, [user(1)]) == [None]


async def test_large_rows_and_binary_users(cold: ColdStore, new_type: Callable[[], str]) -> None:
    kind = new_type()
    await prepared(cold, kind)
    big = encode_history([random.Random(2).randbytes(1 << 20)])  # 1 MiB, incompressible
    odd_users = [b"\x00", b"\x00\x00", bytes(range(256)), b"'; DROP TABLE x; --"]
    small = [(name, history(i)) for i, name in enumerate(odd_users[1:])]
    await put(cold, kind, [(odd_users[0], big), *small])
    assert await cold.read(kind, odd_users) == [big, history(0), history(1), history(2)]
    assert await cold.read(kind, [b"\x00\x00\x00"]) == [None]  # no prefix matches


async def test_prepare_is_idempotent_and_types_added_later_get_prepared(
    cold: ColdStore, new_type: Callable[[], str]
) -> None:
    first, later = new_type(), new_type()
    registry = await prepared(cold, first)
    await put(cold, first, [(user(1), history("first"))])
    await cold.prepare(registry)
    extended = registry_of(later, base=registry)
    assert set(extended.interaction_types) == {first, later}
    await cold.prepare(extended)
    await put(cold, later, [(user(1), history("later"))])
    assert await cold.read(first, [user(1)]) == [history("first")]
    assert await cold.read(later, [user(1)]) == [history("later")]


async def test_concurrent_calls(cold: ColdStore, new_type: Callable[[], str]) -> None:
    kind = new_type()
    await prepared(cold, kind)
    rows = {user(n): history(n) for n in range(200)}
    items = list(rows.items())
    await asyncio.gather(*(put(cold, kind, items[i::4]) for i in range(4)))
    batches = [[*list(rows)[i::5], user(9_000 + i)] for i in range(10)]
    answers = await asyncio.gather(*(cold.read(kind, batch) for batch in batches))
    for batch, answer in zip(batches, answers, strict=True):
        assert answer == [rows.get(u) for u in batch]


# --- Cassandra only -----------------------------------------------------------------------


def _query(endpoint: str, cql: str, *values: Any) -> list[Any]:
    """One statement over a plain driver session (blocking; run it in a thread)."""
    host, port = parse_contact_point(endpoint)
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=30.0)
    cluster = Cluster(
        contact_points=[(host, port)], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    try:
        return list(cluster.connect().execute(cql, values))
    finally:
        cluster.shutdown()


@pytest.mark.services
async def test_cassandra_rows_live_in_ic_tables_without_a_ttl(
    cassandra_cold: CassandraColdStore, cassandra_endpoint: str, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    await prepared(cassandra_cold, kind)
    await put(cassandra_cold, kind, [(user(7), history(7))])
    table = f'{cassandra_cold.keyspace}."ic_{kind}"'
    rows = await asyncio.to_thread(
        _query, cassandra_endpoint, f"SELECT v, TTL(v) FROM {table} WHERE k = %s", user(7)
    )
    assert [(bytes(row[0]), row[1]) for row in rows] == [(history(7), None)]
    written_at = fence()
    await cassandra_cold.write(kind, [ColdWrite(user(8), history(8), None)], written_at)
    stamps = await asyncio.to_thread(
        _query, cassandra_endpoint, f"SELECT WRITETIME(v) FROM {table} WHERE k = %s", user(8)
    )
    assert [row[0] for row in stamps] == [written_at]  # the fence orders a row's writes
    comment = await asyncio.to_thread(
        _query,
        cassandra_endpoint,
        "SELECT comment FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s",
        cassandra_cold.keyspace,
        f"ic_{kind}",
    )
    assert comment[0][0] == f"inferstack interaction type {kind}"


@pytest.mark.services
async def test_cassandra_write_to_an_unprepared_type_names_it(
    cassandra_cold: CassandraColdStore, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    with pytest.raises(NotFoundError, match=f"interaction type '{kind}' has no table"):
        await put(cassandra_cold, kind, [(user(1), history(1))])


@pytest.mark.services
async def test_cassandra_stores_share_a_keyspace_with_the_feature_store_without_clashing(
    cassandra_cold: CassandraColdStore, cassandra_endpoint: str
) -> None:
    from inferstack.kv.cassandra import CassandraStorage
    from tests.helpers import registry_from

    name = f"n_{uuid.uuid4().hex[:12]}"  # a feature group and an interaction type alike
    features = CassandraStorage(
        CassandraSettings(
            contact_points=[cassandra_endpoint],
            keyspace=cassandra_cold.keyspace,
            request_timeout=CASSANDRA_TIMEOUT,
        )
    )
    try:
        spec = {
            "entities": [{"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}],
            "feature_groups": [
                {"name": name, "entity": "user", "features": [{"name": "x", "type": "int32"}]}
            ],
        }
        await features.prepare(registry_from(spec))
        await prepared(cassandra_cold, name)
        await features.write(name, [(user(1), b"feature row")], None)
        await put(cassandra_cold, name, [(user(1), history("cold"))])
        assert await features.read(name, [user(1)]) == [b"feature row"]
        assert await cassandra_cold.read(name, [user(1)]) == [history("cold")]
    finally:
        await features.close()


@pytest.mark.services
async def test_cassandra_long_type_names_fit_table_names(
    cassandra_cold: CassandraColdStore,
) -> None:
    stem = f"t{uuid.uuid4().hex}_"
    long_a = (stem + "a" * 60)[:63]
    long_b = long_a[:62] + "b"  # the same leading characters: only the hash tells them apart
    await prepared(cassandra_cold, long_a, long_b)
    await put(cassandra_cold, long_a, [(user(1), history("a"))])
    await put(cassandra_cold, long_b, [(user(1), history("b"))])
    assert await cassandra_cold.read(long_a, [user(1)]) == [history("a")]
    assert await cassandra_cold.read(long_b, [user(1)]) == [history("b")]


def _closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_cassandra_down_raises_unavailable_naming_the_address() -> None:
    address = _closed_port()
    store = CassandraColdStore(CassandraSettings(contact_points=[address], connect_timeout=2.0))
    try:
        for call in (
            store.read("click", [user(1)]),
            store.write("click", [ColdWrite(user(1), history(1), None)], fence()),
            store.prepare(registry_of("click")),
        ):
            with pytest.raises(UnavailableError, match=f"cassandra at {address} did not answer"):
                await call
    finally:
        await store.close()


def test_cassandra_settings_are_validated() -> None:
    from inferstack.kv.cassandra import CassandraStorage, table_name

    with pytest.raises(ValueError, match="consistency level"):
        CassandraColdStore(
            CassandraSettings(contact_points=["127.0.0.1:9042"], write_consistency="MOST")
        )
    with pytest.raises(ValueError, match="keyspace"):
        CassandraColdStore(
            CassandraSettings(contact_points=["127.0.0.1:9042"], keyspace="bad-name")
        )
    with pytest.raises(ValueError, match="table prefix"):
        CassandraStorage(
            CassandraSettings(contact_points=["127.0.0.1:9042"]), table_prefix='x"; DROP'
        )
    with pytest.raises(ValueError, match="table kind"):
        CassandraStorage(CassandraSettings(contact_points=["127.0.0.1:9042"]), kind="it's")
    with pytest.raises(ValueError, match="interaction type name"):
        table_name("Bad", "ic_", "interaction type")
    assert table_name("click", "ic_") == "ic_click"
    assert len(table_name("c" * 63, "ic_")) == 48


def _conforms(lmdb_store: LmdbColdStore, cassandra_store: CassandraColdStore) -> list[ColdStore]:
    """Checked by mypy: both adapters implement the ColdStore protocol exactly."""
    return [lmdb_store, cassandra_store]


# --- LMDB only ----------------------------------------------------------------------------


async def test_lmdb_writes_only_rows_that_are_still_what_the_writer_read(
    lmdb_cold: LmdbColdStore, new_type: Callable[[], str]
) -> None:
    kind = new_type()
    await prepared(lmdb_cold, kind)
    await put(lmdb_cold, kind, [(user(1), history("first")), (user(2), history("first 2"))])
    writes = [
        ColdWrite(user(1), history("second"), history("first")),  # still what was read
        ColdWrite(user(2), history("lost race"), history("something else")),
        ColdWrite(user(3), history("new"), history("thought it existed")),
    ]
    assert await lmdb_cold.write(kind, writes, fence()) == [user(2), user(3)]
    found = await lmdb_cold.read(kind, [user(1), user(2), user(3)])
    assert found == [history("second"), history("first 2"), None]


async def test_lmdb_rows_are_durable_and_in_ic_databases(
    tmp_path: Path, new_type: Callable[[], str]
) -> None:
    path = tmp_path / "cold"
    kind = new_type()
    store = LmdbColdStore(path)
    await prepared(store, kind)
    await put(store, kind, [(user(1), history(1)), (user(2), history(2))])
    await store.close()
    reopened = LmdbColdStore(path)
    assert await reopened.read(kind, [user(2), user(1)]) == [history(2), history(1)]
    await reopened.close()

    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [bytes(key) for key, _ in txn.cursor()]
        database = env.open_db(f"ic_{kind}".encode(), create=False)
        with env.begin(db=database) as txn:
            assert txn.get(user(1)) == history(1)
    finally:
        env.close()
    assert names == [f"ic_{kind}".encode()]
