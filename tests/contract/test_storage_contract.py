"""The FeatureStorage contract, run against every adapter.

`lmdb` is the embedded adapter in a fresh directory per test; `cassandra` is CassandraStorage
against the real Apache Cassandra that scripts/services.py starts, one connection and one
keyspace (`test_<random>`, dropped at the end) for the whole session. Every test uses feature
groups with fresh names, so tests never see each other's rows. A few Cassandra-specific
checks (TTL, table names, replication, settings) follow the contract at the end of the file.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import acsylla
import pytest

from inferstack.core.registry import Registry
from inferstack.featurestore.storage.base import FeatureStorage
from inferstack.kv.cassandra import (
    CassandraStorage,
    parse_contact_point,
    table_name,
    ttl_seconds,
)
from inferstack.kv.cassandra_ring import (
    MURMUR3_PARTITIONER,
    Node,
    TokenRing,
    murmur3_tokens,
)
from inferstack.kv.lmdb import LmdbStorage
from inferstack.kv.settings import CassandraSettings
from tests.helpers import drop_keyspace, registry_from

# Generous: the contract is about behaviour, not about how fast a loaded CI machine is.
CASSANDRA_TIMEOUT = 10.0

ADAPTERS = [
    pytest.param("lmdb", id="lmdb"),
    pytest.param("cassandra", id="cassandra", marks=pytest.mark.services),
]

USER = {"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}


def group_spec(name: str) -> dict[str, Any]:
    return {"name": name, "entity": "user", "features": [{"name": "score", "type": "float32"}]}


def registry_of(*groups: str, base: Registry | None = None) -> Registry:
    """A registry (built by the real definitions and planner) with these feature groups."""
    return registry_from(
        {"entities": [USER], "feature_groups": [group_spec(name) for name in groups]}, base
    )


@pytest.fixture
def new_group() -> Callable[[], str]:
    """Fresh, valid feature group names: tests sharing one keyspace never collide."""
    return lambda: f"g_{uuid.uuid4().hex[:16]}"


def key(number: int) -> bytes:
    return number.to_bytes(8, "big")


def row(tag: int | str, size: int = 24) -> bytes:
    """Something shaped like an encoded row: an 8-byte header, then payload."""
    return (b"\x01\x00\x00\x01\x00\x00\x00\x00" + str(tag).encode()).ljust(size, b"\xab")


@pytest.fixture(scope="session")
async def cassandra_storage(cassandra_endpoint: str) -> AsyncIterator[CassandraStorage]:
    keyspace = f"test_{uuid.uuid4().hex[:12]}"
    storage = CassandraStorage(
        CassandraSettings(
            contact_points=[cassandra_endpoint],
            keyspace=keyspace,
            request_timeout=CASSANDRA_TIMEOUT,
        )
    )
    await storage.connect()
    try:
        yield storage
    finally:
        await storage.close()
        await asyncio.to_thread(drop_keyspace, cassandra_endpoint, keyspace)


@pytest.fixture
async def lmdb_storage(tmp_path: Path) -> AsyncIterator[LmdbStorage]:
    storage = LmdbStorage(tmp_path / "lmdb")
    yield storage
    await storage.close()


@pytest.fixture(params=ADAPTERS)
def storage(request: pytest.FixtureRequest) -> FeatureStorage:
    # A plain function: pytest-asyncio cannot set up an async fixture (here the adapter's)
    # from inside another async fixture, which already runs on the event loop.
    adapter: FeatureStorage = request.getfixturevalue(f"{request.param}_storage")
    return adapter


async def prepared(storage: FeatureStorage, *groups: str) -> Registry:
    registry = registry_of(*groups)
    await storage.prepare(registry)
    return registry


# --- the contract -------------------------------------------------------------------------


async def test_missing_keys_read_as_none(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    group = new_group()
    await prepared(storage, group)
    await storage.write(group, [(key(1), row(1)), (key(3), row(3))], None)
    assert await storage.read(group, [key(0), key(1), key(2), key(3), key(4)]) == [
        None,
        row(1),
        None,
        row(3),
        None,
    ]


async def test_round_trip_of_many_keys_keeps_request_order_and_duplicates(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    group = new_group()
    await prepared(storage, group)
    rows = [(key(n), row(n, size=16 + n % 64)) for n in range(1000)]
    await storage.write(group, rows, None)

    wanted = [key(n) for n in range(1000)]
    random.Random(3).shuffle(wanted)
    wanted += wanted[:250]  # duplicates, far from their first occurrence
    wanted.insert(10, wanted[10])  # and one right next to it
    wanted.insert(500, key(5000))  # and one that is missing
    expected = dict(rows)
    assert await storage.read(group, wanted) == [expected.get(k) for k in wanted]


async def test_overwrite_replaces_the_row(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    group = new_group()
    await prepared(storage, group)
    await storage.write(group, [(key(1), row("old", size=200)), (key(2), row("kept"))], None)
    await storage.write(group, [(key(1), row("new"))], None)  # shorter than before
    assert await storage.read(group, [key(1), key(2)]) == [row("new"), row("kept")]


async def test_groups_are_isolated(storage: FeatureStorage, new_group: Callable[[], str]) -> None:
    first, second = new_group(), new_group()
    await prepared(storage, first, second)
    await storage.write(first, [(key(1), row("first")), (key(2), row("only first"))], None)
    await storage.write(second, [(key(1), row("second"))], None)
    assert await storage.read(first, [key(1), key(2)]) == [row("first"), row("only first")]
    assert await storage.read(second, [key(1), key(2)]) == [row("second"), None]


async def test_prepared_group_never_written_reads_as_none(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    group = new_group()
    await prepared(storage, group)
    assert await storage.read(group, [key(1), key(2), key(1)]) == [None, None, None]


async def test_unknown_group_reads_as_none(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    assert await storage.read(new_group(), [key(1), key(2)]) == [None, None]


async def test_empty_batches(storage: FeatureStorage, new_group: Callable[[], str]) -> None:
    group = new_group()
    await prepared(storage, group)
    assert await storage.read(group, []) == []
    await storage.write(group, [], None)
    await storage.write(group, [], 60.0)


async def test_large_rows(storage: FeatureStorage, new_group: Callable[[], str]) -> None:
    group = new_group()
    await prepared(storage, group)
    big = random.Random(1).randbytes(1 << 20)  # 1 MiB, incompressible
    await storage.write(group, [(key(1), big), (key(2), row(2))], None)
    assert await storage.read(group, [key(2), key(1)]) == [row(2), big]


async def test_binary_keys_and_rows(storage: FeatureStorage, new_group: Callable[[], str]) -> None:
    group = new_group()
    await prepared(storage, group)
    rows = [
        (b"\x00", b"\x00"),
        (b"\x00\x00\x00", b"\x00" * 100),
        (b"a\x00b", b"\xff\x00\xfe\x00"),
        (bytes(range(256)), bytes(reversed(range(256)))),
        (b"\xff" * 8, b"'; DROP TABLE x; --"),  # values are bound, never spliced into CQL
        (b"empty row", b""),
    ]
    await storage.write(group, rows, None)
    keys = [k for k, _ in rows]
    assert await storage.read(group, keys) == [v for _, v in rows]
    assert await storage.read(group, [b"\x00\x00", b"a\x00"]) == [None, None]  # no prefixes


async def test_prepare_is_idempotent(storage: FeatureStorage, new_group: Callable[[], str]) -> None:
    group = new_group()
    registry = await prepared(storage, group)
    await storage.write(group, [(key(1), row(1))], None)
    await storage.prepare(registry)
    await storage.prepare(registry)
    assert await storage.read(group, [key(1)]) == [row(1)]


async def test_group_added_later_gets_prepared(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    first, later = new_group(), new_group()
    registry = await prepared(storage, first)
    await storage.write(first, [(key(1), row("first"))], None)

    extended = registry_of(later, base=registry)
    assert set(extended.feature_groups) == {first, later}
    await storage.prepare(extended)
    await storage.write(later, [(key(1), row("later"))], None)
    assert await storage.read(later, [key(1)]) == [row("later")]
    assert await storage.read(first, [key(1)]) == [row("first")]


async def test_rows_written_with_a_ttl_read_back(
    storage: FeatureStorage, new_group: Callable[[], str]
) -> None:
    group = new_group()
    await prepared(storage, group)
    await storage.write(group, [(key(1), row(1))], 3600.0)
    await storage.write(group, [(key(2), row(2))], 10 * 365 * 86400.0)
    assert await storage.read(group, [key(1), key(2)]) == [row(1), row(2)]


async def test_concurrent_calls(storage: FeatureStorage, new_group: Callable[[], str]) -> None:
    group = new_group()
    await prepared(storage, group)
    rows = {key(n): row(n) for n in range(300)}
    items = list(rows.items())
    await asyncio.gather(*(storage.write(group, items[i::6], None) for i in range(6)))
    batches = [[*list(rows)[i::5], key(10_000 + i)] for i in range(20)]
    answers = await asyncio.gather(*(storage.read(group, batch) for batch in batches))
    for batch, answer in zip(batches, answers, strict=True):
        assert answer == [rows.get(k) for k in batch]


# --- Cassandra only -----------------------------------------------------------------------

cassandra_only = pytest.mark.services


@cassandra_only
async def test_cassandra_ttl_drops_rows_physically(
    cassandra_storage: CassandraStorage, new_group: Callable[[], str]
) -> None:
    group = new_group()
    await prepared(cassandra_storage, group)
    # Cassandra counts TTLs in whole seconds from the current second: a 3 s TTL keeps a
    # row between 2 and 3 s. (Rounding up keeps it at least as long as its header says.)
    await cassandra_storage.write(group, [(key(2), row(2))], None)
    await cassandra_storage.write(group, [(key(1), row(1))], 2.2)
    assert await cassandra_storage.read(group, [key(1)]) == [row(1)]
    deadline = time.monotonic() + 10.0
    while await cassandra_storage.read(group, [key(1)]) != [None]:
        assert time.monotonic() < deadline, "a row written with a 3 s TTL is still there"
        await asyncio.sleep(0.2)
    assert await cassandra_storage.read(group, [key(2)]) == [row(2)]


@cassandra_only
async def test_cassandra_long_group_names_fit_table_names(
    cassandra_storage: CassandraStorage,
) -> None:
    stem = f"g{uuid.uuid4().hex}_"
    long_a = (stem + "a" * 60)[:63]
    long_b = long_a[:62] + "b"  # the same first 36 characters: only the hash tells them apart
    assert len(long_a) == 63 and len(table_name(long_a)) == 48
    assert table_name(long_a) != table_name(long_b)
    await prepared(cassandra_storage, long_a, long_b)
    await cassandra_storage.write(long_a, [(key(1), row("a"))], None)
    await cassandra_storage.write(long_b, [(key(1), row("b"))], None)
    assert await cassandra_storage.read(long_a, [key(1)]) == [row("a")]
    assert await cassandra_storage.read(long_b, [key(1)]) == [row("b")]


@cassandra_only
async def test_cassandra_network_topology_replication_and_small_window(
    cassandra_endpoint: str,
) -> None:
    keyspace = f"test_{uuid.uuid4().hex[:12]}"
    storage = CassandraStorage(
        CassandraSettings(
            contact_points=[cassandra_endpoint],
            keyspace=keyspace,
            # The DC name SimpleSnitch reports for a single test node.
            replication={"class": "NetworkTopologyStrategy", "datacenter1": 1},
            local_dc="datacenter1",
            read_consistency="local_quorum",
            write_consistency="ONE",
            request_timeout=CASSANDRA_TIMEOUT,
            max_in_flight=3,  # far fewer than the keys of one call: requests queue for slots
        )
    )
    try:
        await storage.prepare(registry_of("events"))
        rows = [(key(n), row(n)) for n in range(200)]
        await storage.write("events", rows, None)
        keys = [k for k, _ in rows]
        reads = await asyncio.gather(*(storage.read("events", keys) for _ in range(4)))
        assert all(answer == [v for _, v in rows] for answer in reads)
    finally:
        await storage.close()
        await asyncio.to_thread(drop_keyspace, cassandra_endpoint, keyspace)


@cassandra_only
async def test_cassandra_prepares_lazily_and_once_under_concurrency(
    cassandra_storage: CassandraStorage,
    cassandra_endpoint: str,
    new_group: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = new_group()
    await prepared(cassandra_storage, group)
    rows = [(key(n), row(n)) for n in range(50)]
    await cassandra_storage.write(group, rows, None)

    # Another process's view: the table exists, but this adapter never ran prepare().
    other = CassandraStorage(
        CassandraSettings(
            contact_points=[cassandra_endpoint],
            keyspace=cassandra_storage.keyspace,
            request_timeout=CASSANDRA_TIMEOUT,
        )
    )
    preparations: list[str] = []
    prepare_on = other._prepare_on

    async def counting(session: Any, table: str) -> Any:
        preparations.append(table)
        return await prepare_on(session, table)

    monkeypatch.setattr(other, "_prepare_on", counting)
    try:
        keys = [k for k, _ in rows]
        answers = await asyncio.gather(*(other.read(group, keys) for _ in range(20)))
        assert all(answer == [v for _, v in rows] for answer in answers)
        await other.read(group, keys)
        assert preparations == [f'{other.keyspace}."{table_name(group)}"']
    finally:
        await other.close()


@cassandra_only
async def test_cassandra_write_to_a_group_without_a_table_names_it(
    cassandra_storage: CassandraStorage, new_group: Callable[[], str]
) -> None:
    from inferstack.core.errors import NotFoundError

    group = new_group()
    with pytest.raises(NotFoundError, match=group):
        await cassandra_storage.write(group, [(key(1), row(1))], None)


@cassandra_only
async def test_cassandra_tokens_are_the_servers(
    cassandra_storage: CassandraStorage, new_group: Callable[[], str]
) -> None:
    """Grouping keys by node relies on computing Cassandra's Murmur3 token of each key."""
    group = new_group()
    await prepared(cassandra_storage, group)
    rng = random.Random(9)
    # Every tail length, bytes >= 0x80 (Cassandra widens them as signed), long keys.
    keys = [rng.randbytes(n) for n in range(1, 70)] + [b"\xff" * n for n in range(1, 20)]
    await cassandra_storage.write(group, [(k, b"v") for k in keys], None)
    session = cassandra_storage._session
    table = f'{cassandra_storage.keyspace}."{table_name(group)}"'
    result = await session.execute(
        acsylla.create_statement(f"SELECT k, token(k) FROM {table}", page_size=1000)
    )
    theirs = dict(row.as_tuple() for row in result)
    ours = murmur3_tokens(keys)
    assert {k: int(t) for k, t in zip(keys, ours, strict=True)} == theirs


@cassandra_only
async def test_cassandra_keys_routed_to_a_node_that_is_gone_are_still_read_and_written(
    cassandra_storage: CassandraStorage, new_group: Callable[[], str]
) -> None:
    """A stale ring (a node replaced or down) costs a retry through any node, never rows."""
    group = new_group()
    await prepared(cassandra_storage, group)
    # The ring the adapter built from the system tables: the one test node, holding every key.
    own = cassandra_storage._ring.nodes[0]
    assert [node.address for node in cassandra_storage._ring.nodes] == [own.address]
    assert own.address == cassandra_storage.contact_points[0] and own.tokens
    assert cassandra_storage._ring.everywhere
    gone = Node(("127.0.0.254", own.address[1]), own.data_center, (2**62,))
    here = Node(own.address, own.data_center, (-(2**62),))
    stale = TokenRing([here, gone], 1, MURMUR3_PARTITIONER)
    rows = [(key(n), row(n)) for n in range(300)]
    previous = cassandra_storage._ring
    cassandra_storage._ring = stale
    cassandra_storage._ring_built = time.monotonic()  # no refresh during the test
    try:
        groups = stale.groups([k for k, _ in rows], 50)
        assert {g.replica for g in groups} == {own.address, gone.address}
        await cassandra_storage.write(group, rows, None)
        wanted = [k for k, _ in rows] + [key(5000)]
        assert await cassandra_storage.read(group, wanted) == [v for _, v in rows] + [None]
        # The node that failed gets no pinned requests for a while; the one that answers does.
        assert cassandra_storage._pin(gone.address) is None
        assert cassandra_storage._pin(own.address) == own.address
        assert await cassandra_storage.read(group, wanted) == [v for _, v in rows] + [None]
    finally:
        cassandra_storage._ring = previous
        cassandra_storage._unpinned.clear()


def test_cassandra_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="keyspace"):
        CassandraStorage(
            CassandraSettings(contact_points=["127.0.0.1:9042"], keyspace='x"; DROP KEYSPACE y; --')
        )
    with pytest.raises(ValueError, match="replication class"):
        CassandraStorage(
            CassandraSettings(
                contact_points=["127.0.0.1:9042"], replication={"class": "LocalStrategy"}
            )
        )
    with pytest.raises(ValueError, match="not a valid name"):
        CassandraStorage(
            CassandraSettings(
                contact_points=["127.0.0.1:9042"],
                replication={"class": "NetworkTopologyStrategy", "dc'": 1},
            )
        )
    with pytest.raises(ValueError, match="positive integer"):
        CassandraStorage(
            CassandraSettings(
                contact_points=["127.0.0.1:9042"],
                replication={"class": "SimpleStrategy", "replication_factor": "1}"},
            )
        )
    with pytest.raises(ValueError, match="consistency level"):
        CassandraStorage(
            CassandraSettings(contact_points=["127.0.0.1:9042"], read_consistency="MOST")
        )
    with pytest.raises(ValueError, match="port"):
        CassandraStorage(CassandraSettings(contact_points=["127.0.0.1:99999"]))
    with pytest.raises(ValueError, match="share one port"):
        CassandraStorage(CassandraSettings(contact_points=["db1:9042", "db2:9043"]))
    with pytest.raises(ValueError, match="read_group_size"):
        CassandraStorage(CassandraSettings(contact_points=["db1"]), read_group_size=0)
    with pytest.raises(ValueError, match="feature group name"):
        table_name('x"; DROP TABLE y')
    assert parse_contact_point("db1") == ("db1", 9042)
    assert parse_contact_point("db1:19042") == ("db1", 19042)
    assert parse_contact_point("[::1]:19042") == ("::1", 19042)
    assert parse_contact_point("::1") == ("::1", 9042)


def test_cassandra_ttl_rounds_up_and_is_capped() -> None:
    assert ttl_seconds(None) == 0  # no TTL
    assert ttl_seconds(0.001) == 1  # never 0: that would mean "keep forever"
    assert ttl_seconds(0) == 1
    assert ttl_seconds(59.5) == 60
    assert ttl_seconds(1e12) == 630_720_000
