"""Feature store benchmark against Cassandra + Redis, definitions in ZooKeeper.

Runs `inferstack serve --config deploy/distributed.yaml` (one worker per core, in-process
cache off, so every cache lookup is a Redis lookup) against the services started by
`scripts/services.py up cassandra redis zookeeper`, which it leaves running.

Shapes, all features of every group, one RetrieveBatch call each:
  (a) 1 user + 100 products + their 100 user x category rows
  (b) the same with 500 products
  (c) one product
Measurements per shape:
  - cold: Redis flushed, keys that never repeat within a measurement (0 % hits);
    a bounded number of requests (--requests) at 1 and 16 in flight
  - warm: a hot set loaded through the server, then requests whose keys are 9 in 10 from
    the hot set and 1 in 10 never seen (about 90 % hits); --seconds at 1 and 16 in flight.
    The hit rate is measured from Redis INFO (keyspace_hits / keyspace_misses).
  - ceiling: the raw driver (scylla-driver, prepared statements, ~100 concurrent) reading
    the cold requests' keys, one request at a time, all keys of a request at once
Before the timed passes Cassandra reads every cold key once, so its own caches are equally
warm for the ceiling and for the server: "cold" means the Redis cache, not Cassandra's.

    python bench/featurestore_distributed.py [--seconds 5] [--scale 1.0] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import redis
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.concurrent import execute_concurrent
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory
from featurestore import (
    BENCH_DATA,
    METHOD,
    RESULTS,
    ROOT,
    Row,
    cli,
    encode,
    format_row,
    shape_queries,
    start,
    stop,
    summarise,
)

from inferstack.client.featurestore import Query
from inferstack.core.keys import encode_keys
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.storage.cassandra import parse_contact_point, table_name
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.sampledata.generate import FULL_SIZES, GROUP_FILES, category_of, generate
from inferstack.server.components import open_config_store
from inferstack.server.settings import load_settings
from inferstack.server.supervisor import free_port

DEPLOY = ROOT / "deploy" / "distributed.yaml"
SERVICES = ("cassandra", "redis", "zookeeper")
REDIS_DB = 9  # a throwaway database of the services' Redis: flushed before every measurement
GROUP_OF = {
    "user": "user_profile",
    "product": "product_stats",
    "user_category": "user_category_affinity",
}
SHAPES = {  # products per request; 0 = shape (c), one product and nothing else
    "(a) 1 user + 100 products + 100 user x category": 100,
    "(b) 1 user + 500 products + 500 user x category": 500,
    "(c) 1 product": 0,
}
IN_FLIGHT = (1, 16)
WARMUP = 20  # requests before each measurement, on the measurement's own connections
FRESH_EVERY = 10  # warm phase: every 10th key is one never seen before
HOT_REQUESTS = 50  # distinct requests in the warm phase's hot set
RAW_CONCURRENCY = 100
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]

Timings = tuple[list[float], float]  # per-request seconds, wall-clock seconds of the run


@dataclass(frozen=True)
class Endpoints:
    cassandra: str
    redis: str
    zookeeper: str


@dataclass
class DistRow(Row):
    redis_hit_rate: float | None = None  # keyspace hits / lookups during the run, Redis INFO


# --- services, data, ingest -------------------------------------------------------------


def service_endpoints() -> Endpoints:
    """host:port of each service from `scripts/services.py env`; exits if one is down."""
    output = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), "env", *SERVICES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in output.splitlines():
        name, _, value = line.removeprefix("export INFERSTACK_TEST_").partition("=")
        if value:
            found[name.lower()] = value
    missing = [name for name in SERVICES if name not in found]
    if missing:
        raise SystemExit(
            f"not running: {', '.join(missing)}; start them with "
            f"`python3 scripts/services.py up {' '.join(SERVICES)}`"
        )
    return Endpoints(**found)


def keyspace_of(scale: float) -> str:
    return f"bench_s{scale:g}".replace(".", "_").replace("-", "_")


def deployment_env(endpoints: Endpoints, scale: float) -> dict[str, str]:
    """INFERSTACK_* overrides that point deploy/distributed.yaml at the services."""
    return {
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{endpoints.cassandra}]",
        "INFERSTACK_STORAGE__KEYSPACE": keyspace_of(scale),
        "INFERSTACK_CACHE__SHARED__ADDRESS": f"redis://{endpoints.redis}/{REDIS_DB}",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": f"redis://{endpoints.redis}/{REDIS_DB}",
        "INFERSTACK_CONFIG__HOSTS": endpoints.zookeeper,
        "INFERSTACK_CONFIG__ROOT": f"/inferstack-bench-s{scale:g}",
    }


def sample_data(scale: float) -> Path:
    """The sample files bench/featurestore.py generates, shared with it."""
    sample = BENCH_DATA / f"sample-{scale:g}"
    if not (sample / "user_category.parquet").exists():
        print(f"generating sample data at scale {scale:g} ...", flush=True)
        generate(sample, scale=scale)
    return sample


def ingest(sample: Path, scale: float, endpoints: Endpoints, raw: RawReader) -> dict[str, Any]:
    """Apply and ingest once per (scale, endpoints, keyspace); later runs reuse the marker."""
    identity = {"scale": scale, **deployment_env(endpoints, scale)}
    marker = BENCH_DATA / f"distributed-{keyspace_of(scale)}.json"
    if marker.exists():
        state: dict[str, Any] = json.loads(marker.read_text())
        if state["identity"] == identity and raw.has_tables(GROUP_OF.values()):
            print(f"ingested state reused ({marker.name}, ingested {state['when']})")
            print_ingest(state["ingest"])
            return state
    data_dir = BENCH_DATA / "distributed"  # unused by this deployment; keeps ./.inferstack out
    cli("apply", "--config", str(DEPLOY), "-f", str(sample / "ecommerce.yaml"), data_dir=data_dir)
    report = {}
    for group, file in GROUP_FILES.items():
        path = sample / file
        started = time.perf_counter()
        cli("ingest", "--config", str(DEPLOY), "-g", group, str(path), data_dir=data_dir)
        seconds = time.perf_counter() - started
        rows = pq.ParquetFile(path).metadata.num_rows
        report[group] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
    state = {"identity": identity, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "ingest": report}
    marker.write_text(json.dumps(state, indent=1))
    print_ingest(report)
    return state


def print_ingest(report: dict[str, dict[str, float]]) -> None:
    rows = sum(r["rows"] for r in report.values())
    seconds = sum(r["seconds"] for r in report.values())
    parts = ", ".join(f"{g} {r['rows_per_s']:,.0f}" for g, r in report.items())
    print(
        f"ingest into cassandra (CLI, wall clock incl. start-up): {rows:,.0f} rows in "
        f"{seconds:.0f}s = {rows / seconds:,.0f} rows/s ({parts} rows/s)"
    )


def load_catalog() -> Catalog:
    store = open_config_store(load_settings(DEPLOY))
    try:
        return Catalog(store.load())
    finally:
        store.close()


def negative_ttl(catalog: Catalog) -> float:
    """The longest a "known absent" entry can live in Redis (group policy + TTL jitter)."""
    shared = load_settings(DEPLOY).cache.shared
    jitter = shared.ttl_jitter if shared is not None else 0.0
    return max(catalog.group(g).cache.negative_ttl for g in GROUP_OF.values()) * (1 + jitter)


def cassandra_jit(endpoints: Endpoints) -> str:
    """Whether the services' Cassandra runs with C1 only (the test default) or C2 too."""
    output = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), "status", "cassandra"],
        capture_output=True,
        text=True,
    ).stdout.split()
    pid = output[output.index("pid") + 1] if "pid" in output else ""
    try:
        flags = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "unknown"
    levels = [f for f in flags if f.startswith(b"-XX:TieredStopAtLevel=")]
    return "C1 only (TieredStopAtLevel=1)" if levels and levels[-1].endswith(b"=1") else "C1+C2"


# --- requests ------------------------------------------------------------------------------


def batch_for(user: int, products: list[int]) -> list[Query]:
    return [
        Query("user", {"user_id": [user]}),
        Query("product", {"product_id": products}),
        Query(
            "user_category",
            {"user_id": [user] * len(products), "category_id": category_of(np.array(products))},
        ),
    ]


def sizes(scale: float) -> tuple[int, int]:
    return max(1, int(FULL_SIZES["user"] * scale)), max(1, int(FULL_SIZES["product"] * scale))


def cold_batches(per_request: int, count: int) -> list[list[Query]]:
    """Request i: user i+1, products i*n+1 .. i*n+n: no key is asked twice."""
    if per_request == 0:
        return [[Query("product", {"product_id": [i + 1]})] for i in range(count)]
    return [
        batch_for(i + 1, list(range(i * per_request + 1, (i + 1) * per_request + 1)))
        for i in range(count)
    ]


def cold_count(per_request: int, scale: float, wanted: int) -> int:
    users, products = sizes(scale)
    if per_request == 0:
        return min(wanted, products)
    return max(1, min(wanted, users, products // per_request))


def hot_templates(sample: Path, scale: float, per_request: int) -> list[list[Query]]:
    """The embedded benchmark's requests (the first HOT_REQUESTS), or HOT_REQUESTS random
    products for (c); never more than keep half the products out of the hot set."""
    _, products = sizes(scale)
    count = max(1, min(HOT_REQUESTS, products // (2 * max(1, per_request))))
    if per_request == 0:
        ids = np.random.default_rng(3).choice(np.arange(1, products + 1), count, replace=False)
        return [[Query("product", {"product_id": [int(p)]})] for p in ids]
    return shape_queries(sample, scale, per_request)[:count]


def fresh_products(templates: list[list[Query]], scale: float) -> list[int]:
    """Products no template asks for, in a fixed shuffled order."""
    _, products = sizes(scale)
    hot = {int(p) for batch in templates for q in batch if q.entity == "product"
           for p in q.keys["product_id"]}  # fmt: skip
    fresh = [p for p in range(1, products + 1) if p not in hot]
    random.Random(11).shuffle(fresh)
    return fresh


def with_fresh_keys(
    template: list[Query], per_request: int, index: int, supply: Iterator[int]
) -> list[Query]:
    """Every FRESH_EVERY-th product slot (for (c): request) gets a product never asked
    before; user x category keys follow their products. StopIteration: supply is used up."""
    if per_request == 0:
        if index % FRESH_EVERY == FRESH_EVERY - 1:
            return [Query("product", {"product_id": [next(supply)]})]
        return template
    user = int(template[0].keys["user_id"][0])
    products = [int(p) for p in template[1].keys["product_id"]]
    for slot in range(FRESH_EVERY - 1, len(products), FRESH_EVERY):
        products[slot] = next(supply)
    return batch_for(user, products)


class WarmRequests:
    """Encoded warm requests, made as they are needed: the templates cycled with fresh keys
    mixed in. Shared by consecutive measurements, so fresh keys never repeat; ends (and sets
    `exhausted`) when the fresh products run out."""

    def __init__(self, templates: list[list[Query]], fresh: list[int], per_request: int) -> None:
        self.templates = templates
        self.per_request = per_request
        self.supply = iter(fresh)
        self.index = 0
        self.exhausted = False

    def __iter__(self) -> WarmRequests:
        return self

    def __next__(self) -> bytes:
        template = self.templates[self.index % len(self.templates)]
        try:
            batch = with_fresh_keys(template, self.per_request, self.index, self.supply)
        except StopIteration:
            self.exhausted = True
            raise
        self.index += 1
        return encode([batch])[0]


def value_count(response: bytes) -> int:
    """Values in one response (a vector feature counts each element)."""
    message = pb.RetrieveBatchResponse.FromString(response)
    return sum(
        len(c.lengths) // 4
        if c.lengths
        else len(c.values) // FeatureType.parse(c.type).scalar_dtype.itemsize
        for r in message.responses
        for c in r.columns
    )


# --- Redis ---------------------------------------------------------------------------------


class RedisProbe:
    """FLUSHDB of the benchmark's database and the server-wide hit counters."""

    def __init__(self, address: str) -> None:
        self.client = redis.Redis.from_url(f"redis://{address}/{REDIS_DB}")

    def flush(self) -> None:
        self.client.flushdb()

    def counters(self) -> tuple[int, int]:
        stats = self.client.info("stats")
        return int(stats["keyspace_hits"]), int(stats["keyspace_misses"])

    def close(self) -> None:
        self.client.close()


class HitWindow:
    """Called between warm-up and timed part: optionally flushes, then reads the counters;
    `rate()` afterwards is the hit rate of the lookups in between."""

    def __init__(self, probe: RedisProbe, flush: bool) -> None:
        self.probe = probe
        self.flush = flush
        self.before = (0, 0)

    def __call__(self) -> None:
        if self.flush:
            self.probe.flush()
        self.before = self.probe.counters()

    def rate(self) -> float | None:
        after = self.probe.counters()
        hits, misses = after[0] - self.before[0], after[1] - self.before[1]
        return hits / (hits + misses) if hits + misses else None


# --- the raw driver ------------------------------------------------------------------------


class RawReader:
    """scylla-driver with prepared single-partition SELECTs, as the storage adapter issues."""

    def __init__(self, contact_point: str, keyspace: str) -> None:
        host, port = parse_contact_point(contact_point)
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.LOCAL_ONE,
            request_timeout=10.0,
            row_factory=tuple_factory,
        )
        self.keyspace = keyspace
        self.cluster = Cluster(
            contact_points=[host], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
        )
        self.session = self.cluster.connect()
        self.selects: dict[str, Any] = {}

    def has_tables(self, groups: Iterable[str]) -> bool:
        keyspace = self.cluster.metadata.keyspaces.get(self.keyspace)
        return keyspace is not None and all(table_name(g) in keyspace.tables for g in groups)

    def prepare(self, groups: Iterable[str]) -> None:
        for group in groups:
            table = f'{self.keyspace}."{table_name(group)}"'
            self.selects[group] = self.session.prepare(f"SELECT v FROM {table} WHERE k = ?")

    def read(self, keys: Sequence[tuple[str, bytes]]) -> int:
        """Read every key concurrently; return how many rows were found."""
        statements = [(self.selects[group], (key,)) for group, key in keys]
        results = execute_concurrent(
            self.session, statements, concurrency=RAW_CONCURRENCY, raise_on_first_error=True
        )
        return sum(1 for _, result in results if result.current_rows)

    def close(self) -> None:
        self.cluster.shutdown()


def storage_keys(catalog: Catalog, batch: list[Query]) -> list[tuple[str, bytes]]:
    """The (group, key) reads the server sends to storage for a batch (duplicates once)."""
    keys: list[tuple[str, bytes]] = []
    for query in batch:
        encoded = encode_keys(catalog.entity(query.entity), dict(query.keys))
        keys += [(GROUP_OF[query.entity], key) for key in dict.fromkeys(encoded)]
    return keys


def wait_for_compactions(raw: RawReader, limit: float = 900.0) -> None:
    """Wait (at most `limit` seconds) until Cassandra runs no compaction in the keyspace:
    right after an ingest, leveled compaction would compete with every measurement."""
    deadline = time.monotonic() + limit
    query = "SELECT keyspace_name FROM system_views.sstable_tasks"
    said = False
    while time.monotonic() < deadline:
        busy = [r for r in raw.session.execute(query) if r[0] == raw.keyspace]
        if not busy:
            return
        if not said:
            print("waiting for cassandra to finish compacting the keyspace ...", flush=True)
            said = True
        time.sleep(2)
    print(f"  cassandra still compacting after {limit:.0f}s: measuring anyway")


# --- the server ----------------------------------------------------------------------------


def start_server(workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port("127.0.0.1")
    target = f"127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "inferstack.cli.main", "serve",
        "--config", str(DEPLOY), "--host", "127.0.0.1", "--port", str(port),
        "--http-port", "-1", "--workers", str(workers), "--cache-mb", "0",
        "--log-level", "WARNING",
    ]  # fmt: skip
    return start(command, target), target


def measure_sync(
    target: str,
    warmup: Sequence[bytes],
    requests: Iterable[bytes],
    seconds: float | None,
    before: Callable[[], None],
) -> Timings:
    """One request at a time until `requests` run out or `seconds` pass; `before` runs
    between the warm-up and the timed part."""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for request in warmup:
            call(request, timeout=30)
        before()
        timings = []
        started = time.perf_counter()
        deadline = started + seconds if seconds else float("inf")
        for request in requests:
            if time.perf_counter() >= deadline:
                break
            begin = time.perf_counter()
            call(request, timeout=30)
            timings.append(time.perf_counter() - begin)
    return timings, time.perf_counter() - started


async def measure_async(
    target: str,
    warmup: Sequence[bytes],
    requests: Iterable[bytes],
    seconds: float | None,
    in_flight: int,
    before: Callable[[], None],
) -> Timings:
    """`in_flight` callers, each on its own connection (the kernel spreads connections, not
    calls, over the workers), sharing one pass over `requests`."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(in_flight)]
    try:
        calls = [
            c.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            for c in channels
        ]
        if warmup:  # one call per connection at least, so all of them are open
            await asyncio.gather(
                *(call(warmup[i % len(warmup)], timeout=30) for i, call in enumerate(calls))
            )
        before()
        pending: Iterator[bytes] = iter(requests)
        timings: list[float] = []
        started = time.perf_counter()
        deadline = started + seconds if seconds else float("inf")

        async def caller(call: Any) -> None:
            for request in pending:
                begin = time.perf_counter()
                if begin >= deadline:
                    return  # an unsent request: its keys stay never seen
                await call(request, timeout=30)
                timings.append(time.perf_counter() - begin)

        await asyncio.gather(*(caller(call) for call in calls))
        return timings, time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))


def measure(
    target: str,
    warmup: Sequence[bytes],
    requests: Iterable[bytes],
    seconds: float | None,
    in_flight: int,
    before: Callable[[], None],
) -> Timings:
    if in_flight == 1:
        return measure_sync(target, warmup, requests, seconds, before)
    return asyncio.run(measure_async(target, warmup, requests, seconds, in_flight, before))


def measure_paired(
    target: str,
    requests: Sequence[bytes],
    raw: RawReader,
    keys: Sequence[list[tuple[str, bytes]]],
    before: Callable[[], None],
) -> tuple[Timings, Timings]:
    """One request at a time, each right after the raw driver read its keys, so both see the
    same moment of a shared, noisy machine. Wall clock = the sum of each side's timings."""
    served: list[float] = []
    driver: list[float] = []
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for request in requests[:WARMUP]:
            call(request, timeout=30)
        before()
        for request, request_keys in zip(requests, keys, strict=True):
            begin = time.perf_counter()
            raw.read(request_keys)
            middle = time.perf_counter()
            call(request, timeout=30)
            served.append(time.perf_counter() - middle)
            driver.append(middle - begin)
    return (served, sum(served)), (driver, sum(driver))


# --- the phases ----------------------------------------------------------------------------


@dataclass
class Shape:
    name: str
    per_request: int
    values: int = 0  # values in one response


@dataclass(frozen=True)
class Warm:
    """What the warm phase needs besides the shape."""

    sample: Path
    scale: float
    seconds: float
    workers: int
    negative_ttl: float  # the longest a negative entry lives in Redis, jitter included


def row_of(shape: Shape, target: str, in_flight: int, run: Timings, rate: float | None) -> DistRow:
    base = summarise(shape.name, target, in_flight, run[0], run[1], shape.values)
    row = DistRow(**asdict(base), redis_hit_rate=rate)
    hits = "" if rate is None else f"{100 * rate:.1f} %"
    print(f"{format_row(row)} {hits} |", flush=True)
    return row


def cold_phase(
    shape: Shape, target: str, redis_probe: RedisProbe, raw: RawReader, catalog: Catalog, count: int
) -> list[DistRow]:
    batches = cold_batches(shape.per_request, count)
    requests = encode(batches)
    keys = [storage_keys(catalog, batch) for batch in batches]
    for request_keys in keys:  # untimed: Cassandra's caches see every key once before both
        raw.read(request_keys)
    window = HitWindow(redis_probe, flush=True)
    served, driver = measure_paired(target, requests, raw, keys, window)
    rows = [
        row_of(shape, "raw driver, same keys (ceiling)", 1, driver, None),
        row_of(shape, "serve, cold cache", 1, served, window.rate()),
    ]
    for in_flight in IN_FLIGHT[1:]:
        window = HitWindow(redis_probe, flush=True)
        run = measure(target, requests[:WARMUP], requests, None, in_flight, window)
        rows.append(row_of(shape, "serve, cold cache", in_flight, run, window.rate()))
    return rows


def load_hot_set(
    target: str, hot: list[bytes], redis_probe: RedisProbe, warm: Warm, absent_keys: bool
) -> None:
    """Read the hot set through the server, one request per worker in flight (more makes
    back-fill writes miss Redis's 50 ms timeout). With absent keys (user x category rows
    mostly do not exist), read it once more after every negative entry of the first pass has
    expired, so that all entries outlive the measurement (negative_ttl is 10 s)."""
    redis_probe.flush()
    measure(target, [], hot, None, warm.workers, lambda: None)
    if absent_keys:
        time.sleep(warm.negative_ttl)
        measure(target, [], hot, None, warm.workers, lambda: None)


def warm_phase(shape: Shape, target: str, redis_probe: RedisProbe, warm: Warm) -> list[DistRow]:
    templates = hot_templates(warm.sample, warm.scale, shape.per_request)
    hot = encode(templates)
    requests = WarmRequests(templates, fresh_products(templates, warm.scale), shape.per_request)
    rows = []
    for in_flight in IN_FLIGHT:
        if requests.exhausted:
            print(
                f"  (no never-seen products left for {in_flight} in flight: use a larger --scale)"
            )
            continue
        load_hot_set(target, hot, redis_probe, warm, absent_keys=shape.per_request > 0)
        window = HitWindow(redis_probe, flush=False)
        run = measure(target, hot[:WARMUP], requests, warm.seconds, in_flight, window)
        if run[0]:
            rows.append(row_of(shape, "serve, warm cache", in_flight, run, window.rate()))
        if requests.exhausted:
            print(f"  (never-seen products ran out after {run[1]:.1f}s of {warm.seconds:g}s)")
    return rows


def shape_values(target: str, shape: Shape) -> int:
    request = encode(cold_batches(shape.per_request, 1))[0]
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        return value_count(call(request, timeout=30))


# --- report --------------------------------------------------------------------------------


def find(rows: list[DistRow], shape: str, target: str, in_flight: int) -> DistRow | None:
    return next(
        (r for r in rows if r.shape == shape and target in r.target and r.in_flight == in_flight),
        None,
    )


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "missed"


def summary(rows: list[DistRow]) -> dict[str, Any]:
    """Per shape: cold / raw ratios (total time, p50, p99) and warm p99, against targets."""
    out: dict[str, Any] = {}
    for shape in SHAPES:
        raw, cold = find(rows, shape, "raw", 1), find(rows, shape, "cold", 1)
        warm = find(rows, shape, "warm", 1)
        if raw is None or cold is None:
            continue
        ratio = {
            "total": raw.requests_per_s / cold.requests_per_s,  # paired: sums of latencies
            "p50": cold.p50_ms / raw.p50_ms,
            "p99": cold.p99_ms / raw.p99_ms,
        }
        out[shape] = {
            "cold_over_raw": ratio,
            "warm_p99_ms_1_in_flight": warm.p99_ms if warm else None,
        }
        line = (
            f"{shape}: cold / raw driver at 1 in flight: total time {ratio['total']:.2f}x, "
            f"p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x "
            f"(target total <= 1.5x: {verdict(ratio['total'], 1.5)})"
        )
        if warm is not None:
            line += f"; warm p99 at 1 in flight {warm.p99_ms:.2f} ms"
            if shape.startswith("(a)"):
                line += f" (target <= 3 ms: {verdict(warm.p99_ms, 3.0)})"
        print(line)
    return out


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per warm measurement")
    parser.add_argument("--requests", type=int, default=200, help="per cold measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser.parse_args()


def run(
    args: argparse.Namespace, sample: Path, raw: RawReader, endpoints: Endpoints
) -> list[DistRow]:
    catalog = load_catalog()
    redis_probe = RedisProbe(endpoints.redis)
    server, target = start_server(args.workers)
    print(
        f"server: {args.workers} workers, in-process cache off, Redis db {REDIS_DB}, "
        f"keyspace {keyspace_of(args.scale)}, data scale {args.scale:g}"
    )
    warm = Warm(sample, args.scale, args.seconds, args.workers, negative_ttl(catalog))
    rows: list[DistRow] = []
    try:
        print("| shape | target | in flight | p50 ms | p95 ms | p99 ms | requests/s "
              "| M values/s | Redis hits |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for name, per_request in SHAPES.items():
            shape = Shape(name, per_request)
            shape.values = shape_values(target, shape)
            count = cold_count(per_request, args.scale, args.requests)
            rows += cold_phase(shape, target, redis_probe, raw, catalog, count)
            rows += warm_phase(shape, target, redis_probe, warm)
    finally:
        stop(server)
        redis_probe.close()
    return rows


def main() -> None:
    args = parse_args()
    endpoints = service_endpoints()
    os.environ.update(deployment_env(endpoints, args.scale))  # for the CLI and the server
    load = os.getloadavg()
    print(f"services: {endpoints}; cassandra JIT: {cassandra_jit(endpoints)}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    sample = sample_data(args.scale)
    raw = RawReader(endpoints.cassandra, keyspace_of(args.scale))
    try:
        state = ingest(sample, args.scale, endpoints, raw)
        raw.prepare(GROUP_OF.values())
        wait_for_compactions(raw)
        rows = run(args, sample, raw, endpoints)
    finally:
        raw.close()
    figures = summary(rows)
    end_load = os.getloadavg()
    print(f"load average at end: {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"featurestore-distributed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {
        "args": vars(args),
        "endpoints": asdict(endpoints),
        "cassandra_jit": cassandra_jit(endpoints),
        "ingest": state,
        "load_average": {"start": load, "end": end_load},
        "rows": [asdict(r) for r in rows],
        "summary": figures,
    }
    out.write_text(json.dumps(payload, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
