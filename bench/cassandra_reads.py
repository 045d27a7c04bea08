"""Candidates for reading many Cassandra partitions at once, side by side in one run.

Every candidate reads the keys of shape (a) requests (1 user + 100 products + their 100 user x
category rows: 201 keys in three tables), drawn uniformly from the whole data set, fresh keys
for every request:

  - scylla-driver, one SELECT per key: what CassandraStorage did until issue 9 (prepared
    `SELECT v FROM t WHERE k = ?`, `execute_async` per key, answers handed to the event loop
    with `call_soon_threadsafe`, the driver's default LZ4 wire compression)
  - the same without wire compression (the driver's default is LZ4)
  - scylla-driver, one `SELECT k, v FROM t WHERE k IN ?` per group of keys sharing a replica
  - acsylla (the C++ driver), one SELECT per key
  - acsylla, IN per replica group, at several group sizes, and once paged as the Python
    driver pages by default (Cassandra then reads the partitions of an IN one by one)
  - CassandraStorage: the adopted path (acsylla, IN per replica group), through the adapter

Measured per candidate, at 1 and at 16 reads in flight: p50/p99 of one 201-key read, keys
read per second, the client's CPU per read (this process, all threads: getrusage) and
Cassandra's CPU per read (/proc/<pid>/stat of the services' Cassandra, around each timed
window). Candidates take turns in rounds so a noisy neighbour hits all of them; the idle CPU
of Cassandra over one second is printed first (other users of the same Cassandra show there).

Then the write paths: each writes --write-rows rows of ~150 bytes with fresh keys into a
scratch table (rows/s, client and Cassandra CPU per row): one INSERT per row with either
driver, and CassandraStorage.write (unlogged batches of rows sharing a replica).

Run alone (it reuses the keyspace bench/featurestore_distributed.py ingests, or ingests it):

    python bench/cassandra_reads.py [--scale 0.05] [--requests 40] [--rounds 3]
        [--only acsylla,CassandraStorage] [--write-rows 20000]

bench/featurestore_distributed.py runs it too, before its served measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import acsylla
import numpy as np
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from inferstack.core.keys import encode_keys
from inferstack.featurestore.catalog import Catalog
from inferstack.kv.cassandra import (
    CassandraStorage,
    parse_contact_point,
    table_name,
)
from inferstack.kv.settings import CassandraSettings
from inferstack.sampledata.generate import category_of

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("user_profile", "product_stats", "user_category_affinity")
IN_FLIGHT = (1, 16)
PRODUCTS_PER_REQUEST = 100
WARMUP = 5  # reads per candidate before its first timed window
SLOTS = 128  # requests in flight per candidate, as CassandraStorage's default

Request = list[tuple[str, list[bytes]]]  # (group, distinct encoded keys) per table


# --- CPU ------------------------------------------------------------------------------------


def cassandra_pid() -> int | None:
    """The pid of the services' Cassandra (scripts/services.py status), None if unknown."""
    output = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), "status", "cassandra"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(output[output.index("pid") + 1]) if "pid" in output else None


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 if it cannot be read."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, the drivers' included
    return usage.ru_utime + usage.ru_stime


# --- requests -------------------------------------------------------------------------------


class Keys:
    """Shape (a) requests with users and products drawn uniformly from the whole data set."""

    def __init__(self, catalog: Catalog, users: int, products: int, seed: int) -> None:
        self.catalog = catalog
        self.users = users
        self.products = products
        self.rng = np.random.default_rng(seed)

    def request(self) -> Request:
        user = int(self.rng.integers(1, self.users + 1))
        count = min(PRODUCTS_PER_REQUEST, self.products)
        products = self.rng.choice(self.products, count, replace=False) + 1
        user_keys = encode_keys(self.catalog.entity("user"), {"user_id": np.array([user])})
        product_keys = encode_keys(self.catalog.entity("product"), {"product_id": products})
        affinity = encode_keys(
            self.catalog.entity("user_category"),
            {"user_id": np.full(count, user), "category_id": category_of(products)},
        )
        return [
            ("user_profile", user_keys),
            ("product_stats", list(dict.fromkeys(product_keys))),
            ("user_category_affinity", list(dict.fromkeys(affinity))),
        ]


def key_count(request: Request) -> int:
    return sum(len(keys) for _, keys in request)


# --- candidates -----------------------------------------------------------------------------


class Reader(Protocol):
    name: str

    async def open(self) -> None: ...

    async def read(self, group: str, keys: list[bytes]) -> list[bytes | None]: ...

    async def close(self) -> None: ...


class ScyllaPerKey:
    """scylla-driver, one prepared single-partition SELECT per key (the path until issue 9)."""

    def __init__(self, contact_point: str, keyspace: str) -> None:
        self.name = "scylla-driver, one SELECT per key (until now)"
        self.contact_point = contact_point
        self.keyspace = keyspace
        self.slots = asyncio.Semaphore(SLOTS)
        self.cluster: Any = None
        self.session: Any = None
        self.selects: dict[str, Any] = {}
        self.compression = True  # the driver's default: LZ4 when it can

    async def open(self) -> None:
        await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        host, port = parse_contact_point(self.contact_point)
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            request_timeout=10.0,
            row_factory=tuple_factory,
        )
        self.cluster = Cluster(
            [host],
            port=port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            compression=self.compression,
        )
        self.session = self.cluster.connect()
        self.prepare()

    def prepare(self) -> None:
        for group in GROUPS:
            table = f'{self.keyspace}."{table_name(group)}"'
            self.selects[group] = self.session.prepare(f"SELECT v FROM {table} WHERE k = ?")
            self.selects[group].is_idempotent = True

    async def read(self, group: str, keys: list[bytes]) -> list[bytes | None]:
        answers = await self.gather([(self.selects[group], (key,), None) for key in keys])
        return [rows[0][0] if rows else None for rows in answers]

    async def gather(self, calls: list[tuple[Any, tuple[Any, ...], Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = []
        for statement, values, host in calls:
            await self.slots.acquire()
            future: asyncio.Future[Any] = loop.create_future()
            response = self.session.execute_async(statement, values, host=host)
            response.add_callbacks(
                _posted(loop, self._settle, future), _posted(loop, self._fail, future)
            )
            futures.append(future)
        return list(await asyncio.gather(*futures))

    def _settle(self, future: asyncio.Future[Any], rows: Any) -> None:
        self.slots.release()
        future.set_result(rows)

    def _fail(self, future: asyncio.Future[Any], error: BaseException) -> None:
        self.slots.release()
        future.set_exception(error)

    async def close(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)


class ScyllaPerKeyPlain(ScyllaPerKey):
    """The same without the driver's default LZ4 wire compression."""

    def __init__(self, contact_point: str, keyspace: str) -> None:
        super().__init__(contact_point, keyspace)
        self.name = "scylla-driver, one SELECT per key, no wire compression"
        self.compression = False


class ScyllaIn(ScyllaPerKey):
    """scylla-driver, `WHERE k IN ?` per group of keys with the same primary replica, not
    paged (the driver pages every SELECT by default; see AcsyllaIn with `page_size`)."""

    def __init__(self, contact_point: str, keyspace: str, group_size: int) -> None:
        super().__init__(contact_point, keyspace)
        self.name = f"scylla-driver, IN per replica group <= {group_size}"
        self.group_size = group_size

    def prepare(self) -> None:
        for group in GROUPS:
            table = f'{self.keyspace}."{table_name(group)}"'
            self.selects[group] = self.session.prepare(f"SELECT k, v FROM {table} WHERE k IN ?")
            self.selects[group].is_idempotent = True
            self.selects[group].fetch_size = None

    async def read(self, group: str, keys: list[bytes]) -> list[bytes | None]:
        token_map = self.cluster.metadata.token_map
        by_replica: dict[Any, list[bytes]] = defaultdict(list)
        for key in keys:
            replicas = token_map.get_replicas(self.keyspace, token_map.token_class.from_key(key))
            by_replica[replicas[0] if replicas else None].append(key)
        calls = [
            (self.selects[group], (mine[i : i + self.group_size],), host)
            for host, mine in by_replica.items()
            for i in range(0, len(mine), self.group_size)
        ]
        found: dict[bytes, bytes] = {}
        for rows in await self.gather(calls):
            found.update(rows)
        return [found.get(key) for key in keys]


class AcsyllaPerKey:
    """acsylla, one prepared single-partition SELECT per key."""

    def __init__(self, contact_point: str, keyspace: str) -> None:
        self.name = "acsylla, one SELECT per key"
        self.contact_point = contact_point
        self.keyspace = keyspace
        self.slots = asyncio.Semaphore(SLOTS)
        self.session: Any = None
        self.selects: dict[str, Any] = {}

    async def open(self) -> None:
        host, port = parse_contact_point(self.contact_point)
        cluster = acsylla.create_cluster([host], port=port, log_level="disabled")
        self.session = await cluster.create_session()
        for group in GROUPS:
            table = f'{self.keyspace}."{table_name(group)}"'
            self.selects[group] = await self.session.create_prepared(self.cql(table))

    def cql(self, table: str) -> str:
        return f"SELECT v FROM {table} WHERE k = ?"

    async def execute(self, statement: Any) -> Any:
        async with self.slots:
            return await self.session.execute(statement)

    async def read(self, group: str, keys: list[bytes]) -> list[bytes | None]:
        select = self.selects[group]
        results = await asyncio.gather(*(self.execute(select.bind([key])) for key in keys))
        out: list[bytes | None] = []
        for result in results:
            row = result.first()
            out.append(row.as_tuple()[0] if row is not None else None)
        return out

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class AcsyllaIn(AcsyllaPerKey):
    """acsylla, `WHERE k IN ?` per group of keys (one node here: every node holds every key,
    so groups are cut as keys come, as CassandraStorage does on such a cluster), unpaged or
    with a page size (what the Python driver does by default)."""

    def __init__(
        self, contact_point: str, keyspace: str, group_size: int, page_size: int = -1
    ) -> None:
        super().__init__(contact_point, keyspace)
        paged = f", paged ({page_size} rows a page)" if page_size > 0 else ""
        self.name = f"acsylla, IN per replica group <= {group_size}{paged}"
        self.group_size = group_size
        self.page_size = page_size

    def cql(self, table: str) -> str:
        return f"SELECT k, v FROM {table} WHERE k IN ?"

    async def read(self, group: str, keys: list[bytes]) -> list[bytes | None]:
        select = self.selects[group]
        size = self.group_size
        results = await asyncio.gather(
            *(
                self.execute(select.bind([keys[i : i + size]], page_size=self.page_size))
                for i in range(0, len(keys), size)
            )
        )
        found: dict[bytes, bytes] = {}
        for result in results:
            found.update(row.as_tuple() for row in result)
        return [found.get(key) for key in keys]


class Adopted:
    """CassandraStorage itself: the path the server uses."""

    def __init__(self, contact_point: str, keyspace: str) -> None:
        self.name = "CassandraStorage (adopted: acsylla, IN per replica group)"
        self.storage = CassandraStorage(
            CassandraSettings(
                contact_points=[contact_point], keyspace=keyspace, request_timeout=10.0
            )
        )

    async def open(self) -> None:
        await self.storage.prepare_tables(GROUPS)

    async def read(self, group: str, keys: list[bytes]) -> list[bytes | None]:
        return await self.storage.read(group, keys)

    async def close(self) -> None:
        await self.storage.close()


def _posted(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *first: Any) -> Any:
    """A driver-thread callback that runs `callback(*first, answer)` on the event loop."""

    def post(answer: Any) -> None:
        loop.call_soon_threadsafe(lambda: callback(*first, answer))

    return post


def candidates(contact_point: str, keyspace: str) -> list[Reader]:
    return [
        ScyllaPerKey(contact_point, keyspace),
        ScyllaPerKeyPlain(contact_point, keyspace),
        ScyllaIn(contact_point, keyspace, 50),
        AcsyllaPerKey(contact_point, keyspace),
        AcsyllaIn(contact_point, keyspace, 25),
        AcsyllaIn(contact_point, keyspace, 50),
        AcsyllaIn(contact_point, keyspace, 100),
        AcsyllaIn(contact_point, keyspace, 50, page_size=5000),
        Adopted(contact_point, keyspace),
    ]


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Tally:
    """One candidate at one in-flight value, summed over its timed windows."""

    latencies: list[float] = field(default_factory=list)
    keys: int = 0
    found: int = 0
    wall: float = 0.0
    client_cpu: float = 0.0
    cassandra_cpu: float = 0.0


@dataclass
class ReadRow:
    candidate: str
    in_flight: int
    reads: int
    p50_ms: float
    p99_ms: float
    keys_per_s: float
    client_cpu_ms: float  # per 201-key read
    cassandra_cpu_ms: float  # per 201-key read
    found_per_read: float


async def read_request(reader: Reader, request: Request) -> int:
    """All tables of one request at once, as the server reads them; rows found."""
    answers = await asyncio.gather(*(reader.read(group, keys) for group, keys in request))
    return sum(1 for rows in answers for row in rows if row is not None)


async def window(
    reader: Reader, requests: list[Request], in_flight: int, pid: int | None, tally: Tally
) -> None:
    pending = iter(requests)
    latencies: list[float] = []
    found = 0

    async def caller() -> None:
        nonlocal found
        for request in pending:
            begin = time.perf_counter()
            rows = await read_request(reader, request)
            latencies.append(time.perf_counter() - begin)
            found += rows

    client, cassandra, began = own_cpu(), process_cpu(pid), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    tally.wall += time.perf_counter() - began
    tally.client_cpu += own_cpu() - client
    tally.cassandra_cpu += process_cpu(pid) - cassandra
    tally.latencies += latencies
    tally.found += found
    tally.keys += sum(key_count(r) for r in requests)


def summarise(name: str, in_flight: int, tally: Tally) -> ReadRow:
    reads = len(tally.latencies)
    p50, p99 = np.percentile(np.array(tally.latencies) * 1000, [50, 99])
    return ReadRow(
        name,
        in_flight,
        reads,
        float(p50),
        float(p99),
        tally.keys / tally.wall,
        1000 * tally.client_cpu / reads,
        1000 * tally.cassandra_cpu / reads,
        tally.found / reads,
    )


def print_header() -> None:
    print(
        "| candidate | in flight | reads | p50 ms | p99 ms | keys/s | client CPU ms/read "
        "| Cassandra CPU ms/read | rows found/read |"
    )
    print("|---|---|---|---|---|---|---|---|---|")


def print_row(row: ReadRow) -> None:
    print(
        f"| {row.candidate} | {row.in_flight} | {row.reads} | {row.p50_ms:.2f} | "
        f"{row.p99_ms:.2f} | {row.keys_per_s:,.0f} | {row.client_cpu_ms:.2f} | "
        f"{row.cassandra_cpu_ms:.2f} | {row.found_per_read:.0f} |",
        flush=True,
    )


async def compare(
    contact_point: str,
    keyspace: str,
    catalog: Catalog,
    users: int,
    products: int,
    requests: int,
    rounds: int,
    readers: Sequence[Reader] | None = None,
    pid: int | None = None,
) -> list[ReadRow]:
    """Every candidate, `rounds` turns each per in-flight value, `requests` reads a turn.
    `pid` is Cassandra's process (default: the services' Cassandra)."""
    pid = pid or cassandra_pid()
    idle = process_cpu(pid)
    await asyncio.sleep(1.0)
    print(f"cassandra pid {pid}: {1000 * (process_cpu(pid) - idle):.0f} ms CPU in 1 s idle")
    keys = Keys(catalog, users, products, seed=int(time.time()))
    opened = list(readers) if readers is not None else candidates(contact_point, keyspace)
    for reader in opened:
        await reader.open()
        for _ in range(WARMUP):
            await read_request(reader, keys.request())
    rows: list[ReadRow] = []
    print_header()
    try:
        for in_flight in IN_FLIGHT:
            tallies = {reader.name: Tally() for reader in opened}
            count = requests if in_flight == 1 else requests * 4
            for turn in range(rounds):
                order = opened[turn % len(opened) :] + opened[: turn % len(opened)]
                for reader in order:
                    batch = [keys.request() for _ in range(count)]
                    await window(reader, batch, in_flight, pid, tallies[reader.name])
            for reader in opened:
                row = summarise(reader.name, in_flight, tallies[reader.name])
                print_row(row)
                rows.append(row)
    finally:
        for reader in opened:
            await reader.close()
    return rows


# --- writes ---------------------------------------------------------------------------------

WRITE_GROUP = "write_bench"  # a scratch table of its own in the keyspace
WRITE_VALUE_BYTES = 150  # about a product_stats row


@dataclass
class WriteRow:
    candidate: str
    rows: int
    rows_per_s: float
    client_cpu_us: float  # per row
    cassandra_cpu_us: float  # per row


class Writer(Protocol):
    name: str

    async def open(self) -> None: ...

    async def write(self, rows: list[tuple[bytes, bytes]]) -> None: ...

    async def close(self) -> None: ...


class ScyllaRowWriter:
    """scylla-driver, one prepared INSERT per row, 128 in flight (the path until issue 9)."""

    name = "scylla-driver, one INSERT per row (until now)"

    def __init__(self, contact_point: str, keyspace: str) -> None:
        self.reader = ScyllaPerKey(contact_point, keyspace)
        self.keyspace = keyspace

    async def open(self) -> None:
        await self.reader.open()
        table = f'{self.keyspace}."{table_name(WRITE_GROUP)}"'
        self.insert = self.reader.session.prepare(
            f"INSERT INTO {table} (k, v) VALUES (?, ?) USING TTL ?"
        )

    async def write(self, rows: list[tuple[bytes, bytes]]) -> None:
        await self.reader.gather([(self.insert, (k, v, 86400), None) for k, v in rows])

    async def close(self) -> None:
        await self.reader.close()


class AcsyllaRowWriter:
    """acsylla, one prepared INSERT per row, 128 in flight."""

    name = "acsylla, one INSERT per row"

    def __init__(self, contact_point: str, keyspace: str) -> None:
        self.reader = AcsyllaPerKey(contact_point, keyspace)
        self.keyspace = keyspace

    async def open(self) -> None:
        await self.reader.open()
        table = f'{self.keyspace}."{table_name(WRITE_GROUP)}"'
        self.insert = await self.reader.session.create_prepared(
            f"INSERT INTO {table} (k, v) VALUES (?, ?) USING TTL ?"
        )

    async def write(self, rows: list[tuple[bytes, bytes]]) -> None:
        await asyncio.gather(
            *(self.reader.execute(self.insert.bind([k, v, 86400])) for k, v in rows)
        )

    async def close(self) -> None:
        await self.reader.close()


class AdoptedWriter:
    """CassandraStorage.write: unlogged batches of rows sharing a replica, under 5 KiB."""

    name = "CassandraStorage (adopted: acsylla, unlogged batches per replica)"

    def __init__(self, contact_point: str, keyspace: str) -> None:
        self.storage = CassandraStorage(
            CassandraSettings(
                contact_points=[contact_point], keyspace=keyspace, request_timeout=10.0
            )
        )

    async def open(self) -> None:
        await self.storage.prepare_tables([WRITE_GROUP])

    async def write(self, rows: list[tuple[bytes, bytes]]) -> None:
        await self.storage.write(WRITE_GROUP, rows, 86400.0)

    async def close(self) -> None:
        await self.storage.close()


async def compare_writes(
    contact_point: str, keyspace: str, count: int, pid: int | None = None
) -> list[WriteRow]:
    """Each candidate writes `count` rows of fresh keys (in 4 calls, like ingest chunks)."""
    pid = pid or cassandra_pid()
    setup = AdoptedWriter(contact_point, keyspace)
    await setup.open()  # the scratch table
    await setup.close()
    writers: list[Writer] = [
        ScyllaRowWriter(contact_point, keyspace),
        AcsyllaRowWriter(contact_point, keyspace),
        AdoptedWriter(contact_point, keyspace),
    ]
    rng = np.random.default_rng()
    out: list[WriteRow] = []
    print("| writer | rows | rows/s | client CPU us/row | Cassandra CPU us/row |")
    print("|---|---|---|---|---|")
    for writer in writers:
        await writer.open()
        try:
            rows = [(rng.bytes(8), rng.bytes(WRITE_VALUE_BYTES)) for _ in range(count)]
            client, cassandra, began = own_cpu(), process_cpu(pid), time.perf_counter()
            chunk = max(1, count // 4)
            for i in range(0, count, chunk):
                await writer.write(rows[i : i + chunk])
            wall = time.perf_counter() - began
            row = WriteRow(
                writer.name,
                count,
                count / wall,
                1e6 * (own_cpu() - client) / count,
                1e6 * (process_cpu(pid) - cassandra) / count,
            )
        finally:
            await writer.close()
        print(
            f"| {row.candidate} | {row.rows:,} | {row.rows_per_s:,.0f} | "
            f"{row.client_cpu_us:.0f} | {row.cassandra_cpu_us:.0f} |",
            flush=True,
        )
        out.append(row)
    return out


def main() -> None:
    # Reuses the distributed benchmark's data preparation (services, sample, apply, ingest).
    import featurestore_distributed as dist

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=40, help="reads per turn at 1 in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default=dist.NAME, help="keyspace <name>_s<scale>")
    parser.add_argument(
        "--only", default="", help="comma-separated words: candidates whose name has one"
    )
    parser.add_argument("--write-rows", type=int, default=20_000, help="per write candidate")
    args = parser.parse_args()
    dist.NAME = args.name
    endpoints = dist.service_endpoints()
    os.environ.update(dist.deployment_env(endpoints, args.scale))
    sample = dist.sample_data(args.scale)
    dist.ingest(sample, args.scale, endpoints)
    dist.wait_for_compactions(endpoints.cassandra, dist.keyspace_of(args.scale))
    users, products = dist.sizes(args.scale)
    keyspace = dist.keyspace_of(args.scale)
    words = [word for word in args.only.split(",") if word]
    readers = [
        reader
        for reader in candidates(endpoints.cassandra, keyspace)
        if not words or any(word in reader.name for word in words)
    ]
    if readers:
        asyncio.run(
            compare(
                endpoints.cassandra,
                keyspace,
                dist.load_catalog(),
                users,
                products,
                args.requests,
                args.rounds,
                readers,
            )
        )
    if args.write_rows:
        asyncio.run(compare_writes(endpoints.cassandra, keyspace, args.write_rows))


if __name__ == "__main__":
    main()
