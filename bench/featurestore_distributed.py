"""Feature store benchmark against Cassandra + Redis (definitions in ZooKeeper), as traffic.

Runs `inferstack serve --config deploy/distributed.yaml` (2 workers) against the services of
`scripts/services.py up cassandra redis zookeeper`, which it leaves running, and calls it
through the public `AsyncFeatureStoreClient` the way a ranking service does:

  (a) 2 round trips: the user + 100 products; then the 100 user x category rows keyed by each
      product's category_id read from the first answer
  (a) 1 RetrieveBatch: the user, the 100 products and their user x category rows at once
  (c) one product
  (p1), (p100) one Persist of 1 / 100 products' product_stats rows (--no-persist: reads only):
      the Cassandra write, then the written keys dropped from every cache: this worker's,
      Redis (tombstones), and every other worker's through the key feed in ZooKeeper

Users are drawn uniformly from all users; products uniformly from all products, or with Zipf
s = 1.1 (a few hot products, a long tail). Every request is drawn fresh (no pool of requests is
replayed). Everything runs twice: with the in-process cache on (the default deployment: in
front of Redis) and off (every cache lookup goes to Redis).

Per cache mode (a fresh server each) and shape:
  - cold, first for every shape: Redis flushed, keys never asked before; 1 and 16 in flight.
    At 1 in flight each request is paired with the ceiling: CassandraStorage (the adopted
    read path) reading the same keys in this process, right before the request.
  - traffic: uniform, then Zipf, each after --warmup seconds of the same traffic, for
    --seconds at 1, 16 and 64 in flight (the caches fill the way traffic fills them).
The Persist patterns have no cold measurement (a write finds no cache to miss); they run as
traffic, after the reads. Each row reports client latency p50/p95/p99, requests/s, rows/s
(returned or written), errors (admission control may refuse calls at 64 in flight), and CPU
per request of the server's workers, Cassandra and Redis
(/proc/<pid>/stat around the timed window), plus the cache hit rates in the window (the
server's /metrics: in-process, Redis, and keys that reached Cassandra).

Before all that, bench/cassandra_reads.py compares the candidate Cassandra read paths on the
same data (skip with --skip-candidates), and the one-off ingest is timed through the CLI.

    python bench/featurestore_distributed.py [--scale 1.0] [--seconds 5] [--requests 100]
    python bench/featurestore_distributed.py --scale 0.05 --seconds 1 --requests 20  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import acsylla
import cassandra_reads
import grpc
import launch
import numpy as np
import pyarrow.parquet as pq
import redis
from procstat import worker_pids
from traffic import ZIPF_S, KeyDraw, Pattern, Read, persist_patterns

from inferstack.client.featurestore import AsyncFeatureStoreClient
from inferstack.core.keys import encode_keys
from inferstack.featurestore.catalog import Catalog
from inferstack.kv.cassandra import CassandraStorage, table_name
from inferstack.kv.settings import CassandraSettings
from inferstack.sampledata.generate import FULL_SIZES, GROUP_FILES, category_of, generate
from inferstack.server.components import open_config_store
from inferstack.server.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"
DEPLOY = ROOT / "deploy" / "distributed.yaml"
SERVICES = ("cassandra", "redis", "zookeeper")
REDIS_DB = 9  # a throwaway database of the services' Redis: flushed before cold measurements
WORKERS = 2
GROUP_OF = {
    "user": "user_profile",
    "product": "product_stats",
    "user_category": "user_category_affinity",
}
PRODUCTS_PER_REQUEST = 100
COLD_IN_FLIGHT = (1, 16)
TRAFFIC_IN_FLIGHT = (1, 16, 64)
CALL_TIMEOUT = 10.0  # client deadline per call


@dataclass(frozen=True)
class Endpoints:
    cassandra: str
    redis: str
    zookeeper: str


# --- services, data, ingest -------------------------------------------------------------


def services_output(*args: str) -> str:
    script = str(ROOT / "scripts" / "services.py")
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False
    ).stdout


def service_endpoints() -> Endpoints:
    """host:port of each service from `scripts/services.py env`; exits if one is down."""
    found = {}
    for line in services_output("env", *SERVICES).splitlines():
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


def service_pid(name: str) -> int | None:
    words = services_output("status", name).split()
    return int(words[words.index("pid") + 1]) if "pid" in words else None


def cassandra_jit() -> str:
    """Whether the services' Cassandra runs with C1 only (the test default) or C2 too."""
    pid = service_pid("cassandra")
    try:
        flags = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "unknown"
    levels = [f for f in flags if f.startswith(b"-XX:TieredStopAtLevel=")]
    return "C1 only (TieredStopAtLevel=1)" if levels and levels[-1].endswith(b"=1") else "C1+C2"


NAME = "bench"  # --name: keyspace <name>_s<scale>, ZooKeeper root /inferstack-<name>-s<scale>


def keyspace_of(scale: float) -> str:
    return f"{NAME}_s{scale:g}".replace(".", "_").replace("-", "_")


def deployment_env(endpoints: Endpoints, scale: float) -> dict[str, str]:
    """INFERSTACK_* overrides that point deploy/distributed.yaml at the services."""
    return {
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{endpoints.cassandra}]",
        "INFERSTACK_STORAGE__KEYSPACE": keyspace_of(scale),
        "INFERSTACK_CACHE__SHARED__ADDRESS": f"redis://{endpoints.redis}/{REDIS_DB}",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": f"redis://{endpoints.redis}/{REDIS_DB}",
        "INFERSTACK_CONFIG__HOSTS": endpoints.zookeeper,
        "INFERSTACK_CONFIG__ROOT": f"/inferstack-{NAME}-s{scale:g}",
    }


def sizes(scale: float) -> tuple[int, int]:
    return max(1, int(FULL_SIZES["user"] * scale)), max(1, int(FULL_SIZES["product"] * scale))


def sample_data(scale: float) -> Path:
    """The sample files bench/featurestore.py generates, shared with it."""
    sample = BENCH_DATA / f"sample-{scale:g}"
    if not (sample / "user_category.parquet").exists():
        print(f"generating sample data at scale {scale:g} ...", flush=True)
        generate(sample, scale=scale)
    return sample


def cli(*args: str) -> None:
    # The data dir is unused by this deployment; it keeps ./.inferstack out of the repo.
    env = {**os.environ, "INFERSTACK_DATA_DIR": str(BENCH_DATA / "distributed")}
    subprocess.run([sys.executable, "-m", "inferstack.cli.main", *args], env=env, check=True)


def has_tables(contact_point: str, keyspace: str) -> bool:
    async def look() -> bool:
        host, _, port = contact_point.rpartition(":")
        cluster = acsylla.create_cluster([host], port=int(port), log_level="disabled")
        session = await cluster.create_session()
        try:
            tables = session.get_metadata().get_tables(keyspace)
        except acsylla.errors.KeyspaceNotFound:
            tables = []
        finally:
            await session.close()
        return all(table_name(group) in tables for group in GROUP_OF.values())

    return asyncio.run(look())


def ingest(sample: Path, scale: float, endpoints: Endpoints) -> dict[str, Any]:
    """Apply and ingest once per (scale, endpoints, keyspace); later runs reuse the marker.
    Each group's ingest is timed through the CLI, with Cassandra's CPU over the same time."""
    identity = {"scale": scale, **deployment_env(endpoints, scale)}
    marker = BENCH_DATA / f"distributed-{keyspace_of(scale)}.json"
    if marker.exists():
        state: dict[str, Any] = json.loads(marker.read_text())
        if state["identity"] == identity and has_tables(endpoints.cassandra, keyspace_of(scale)):
            print(f"ingested state reused ({marker.name}, ingested {state['when']})")
            print_ingest(state["ingest"])
            return state
    cli("apply", "--config", str(DEPLOY), "-f", str(sample / "ecommerce.yaml"))
    pid = service_pid("cassandra")
    report = {}
    for group, file in GROUP_FILES.items():
        path = sample / file
        cassandra = cassandra_reads.process_cpu(pid)
        started = time.perf_counter()
        cli("ingest", "--config", str(DEPLOY), "-g", group, str(path))
        seconds = time.perf_counter() - started
        rows = pq.ParquetFile(path).metadata.num_rows
        report[group] = {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "cassandra_cpu_us_per_row": 1e6 * (cassandra_reads.process_cpu(pid) - cassandra) / rows,
        }
    state = {"identity": identity, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "ingest": report}
    marker.write_text(json.dumps(state, indent=1))
    print_ingest(report)
    return state


def print_ingest(report: dict[str, dict[str, float]]) -> None:
    rows = sum(r["rows"] for r in report.values())
    seconds = sum(r["seconds"] for r in report.values())
    parts = ", ".join(
        f"{g} {r['rows_per_s']:,.0f} rows/s, Cassandra {r.get('cassandra_cpu_us_per_row', 0):.0f}"
        " us CPU/row"
        for g, r in report.items()
    )
    print(
        f"ingest into cassandra (`inferstack ingest`, wall clock incl. start-up): {rows:,.0f} rows "
        f"in {seconds:.1f}s = {rows / seconds:,.0f} rows/s ({parts}) (target >= 30,000 rows/s)"
    )


def load_catalog() -> Catalog:
    store = open_config_store(load_settings(DEPLOY))
    try:
        return Catalog(store.registry.load())
    finally:
        store.close()


def wait_for_compactions(contact_point: str, keyspace: str, limit: float = 900.0) -> None:
    """Wait (at most `limit` seconds) until Cassandra runs no compaction in the keyspace:
    right after an ingest, leveled compaction would compete with every measurement."""

    async def wait() -> None:
        host, _, port = contact_point.rpartition(":")
        cluster = acsylla.create_cluster([host], port=int(port), log_level="disabled")
        session = await cluster.create_session()
        query = acsylla.create_statement("SELECT keyspace_name FROM system_views.sstable_tasks")
        deadline = time.monotonic() + limit
        said = False
        try:
            while time.monotonic() < deadline:
                busy = [r for r in await session.execute(query) if r.as_tuple()[0] == keyspace]
                if not busy:
                    return
                if not said:
                    print("waiting for cassandra to finish compacting the keyspace ...", flush=True)
                    said = True
                await asyncio.sleep(2)
            print(f"  cassandra still compacting after {limit:.0f}s: measuring anyway")
        finally:
            await session.close()

    asyncio.run(wait())


# --- drawing requests ----------------------------------------------------------------------


class ColdKeys:
    """Users and products never drawn cold before, so cold requests find empty caches."""

    def __init__(self, users: int, products: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.users = iter((rng.permutation(users) + 1).tolist())
        self.products = iter((rng.permutation(products) + 1).tolist())

    def draw(self, count: int) -> tuple[int, list[int]] | None:
        """A user and `count` products; None when they run out."""
        try:
            return next(self.users), [next(self.products) for _ in range(count)]
        except StopIteration:
            return None


@dataclass
class Request:
    """One request of a pattern: its keys, and the call(s) that make it."""

    user: int
    products: list[int]
    pattern: Pattern

    async def call(self, client: AsyncFeatureStoreClient) -> None:
        await self.pattern.acall(client, self.user, self.products)


# The read patterns of bench/traffic.py this benchmark runs (values/s is not reported here);
# its Persist patterns come from `persist_patterns`, built from the catalog and sample data.
SHAPES = (
    Read("(a) 2 round trips", PRODUCTS_PER_REQUEST, 0, round_trips=2),
    Read("(a) 1 RetrieveBatch", PRODUCTS_PER_REQUEST, 0, round_trips=1),
    Read("(c) 1 product", 0, 0, round_trips=1),
)


def storage_keys(
    catalog: Catalog, request: Request, shape: Pattern
) -> list[tuple[str, list[bytes]]]:
    """What the server reads from storage for a request (each key once per group)."""
    products = np.array(request.products)
    product_keys = encode_keys(catalog.entity("product"), {"product_id": products})
    if shape.products == 0:
        return [("product_stats", product_keys)]
    user_keys = encode_keys(catalog.entity("user"), {"user_id": np.array([request.user])})
    affinity = encode_keys(
        catalog.entity("user_category"),
        {"user_id": np.full(len(products), request.user), "category_id": category_of(products)},
    )
    return [
        ("user_profile", user_keys),
        ("product_stats", list(dict.fromkeys(product_keys))),
        ("user_category_affinity", list(dict.fromkeys(affinity))),
    ]


# --- the server and what it costs ----------------------------------------------------------


@dataclass
class Server:
    running: launch.RunningServer
    target: str
    metrics_url: str
    workers: list[int]


def start_server(cache_on: bool) -> Server:
    arguments = ["--config", str(DEPLOY), "--host", "127.0.0.1", "--log-level", "WARNING"]
    if not cache_on:
        arguments += ["--cache-mb", "0"]
    running = launch.start_server(
        *arguments, log=BENCH_DATA / "serve-distributed.log", workers=WORKERS, own_group=True
    )
    # Every worker is up by now: both answer, and /metrics with them.
    workers = worker_pids(running.pid)
    return Server(running, running.grpc_target, f"{running.http_base}/metrics", workers)


def stop_server(server: Server) -> None:
    server.running.stop_or_kill()


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(url: str) -> dict[str, float]:
    """Cache lookups by level and result, and keys read from storage, from /metrics (summed
    over every other label, e.g. feature group)."""
    out = dict.fromkeys(("local_hit", "local_miss", "shared_hit", "shared_miss", "storage"), 0.0)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        if name == "inferstack_storage_keys_total":
            out["storage"] += float(value)
        elif name == "inferstack_cache_lookups_total":
            found = dict(_LABEL.findall(labels))
            slot = f"{found.get('level')}_{found.get('result')}"
            if slot in out:
                out[slot] += float(value)
    return out


@dataclass
class Costs:
    """CPU seconds of the server's workers, Cassandra and Redis; cache counters."""

    server: float
    cassandra: float
    redis: float
    metrics: dict[str, float]

    @staticmethod
    def now(server: Server, pids: dict[str, int | None]) -> Costs:
        return Costs(
            sum(cassandra_reads.process_cpu(pid) for pid in server.workers),
            cassandra_reads.process_cpu(pids["cassandra"]),
            cassandra_reads.process_cpu(pids["redis"]),
            scrape(server.metrics_url),
        )


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Result:
    cache: str
    shape: str
    traffic: str
    in_flight: int
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float
    rows_per_s: float  # rows returned or written
    server_cpu_ms: float  # per request (both round trips for "2 round trips")
    cassandra_cpu_ms: float
    redis_cpu_ms: float
    local_hit_rate: float | None = None
    redis_hit_rate: float | None = None
    storage_keys_per_request: float | None = None
    error_codes: dict[str, int] = field(default_factory=dict)


async def measure(
    client: AsyncFeatureStoreClient,
    requests: Iterator[Request],
    in_flight: int,
    seconds: float | None,
    before: Callable[[], Costs],
) -> tuple[list[float], dict[str, int], float, Costs, Costs]:
    """`in_flight` callers share `requests` until they run out or `seconds` pass."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start_costs = before()
    started = time.perf_counter()
    deadline = started + seconds if seconds else float("inf")

    async def caller() -> None:
        for request in requests:
            begin = time.perf_counter()
            if begin >= deadline:
                return
            try:
                await request.call(client)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    return latencies, errors, wall, start_costs, before()


def result_of(
    cache: str,
    shape: Pattern,
    traffic: str,
    in_flight: int,
    run: tuple[list[float], dict[str, int], float, Costs, Costs],
) -> Result:
    latencies, errors, wall, begin, end = run
    done = max(1, len(latencies))
    p50, p95, p99 = np.percentile(np.array(latencies or [0.0]) * 1000, [50, 95, 99])
    delta = {k: end.metrics[k] - begin.metrics[k] for k in end.metrics}
    local = delta["local_hit"] + delta["local_miss"]
    shared = delta["shared_hit"] + delta["shared_miss"]
    return Result(
        cache,
        shape.name,
        traffic,
        in_flight,
        len(latencies),
        sum(errors.values()),
        float(p50),
        float(p95),
        float(p99),
        len(latencies) / wall,
        len(latencies) * shape.rows / wall,
        1000 * (end.server - begin.server) / done,
        1000 * (end.cassandra - begin.cassandra) / done,
        1000 * (end.redis - begin.redis) / done,
        delta["local_hit"] / local if local else None,
        delta["shared_hit"] / shared if shared else None,
        delta["storage"] / done,
        errors,
    )


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def print_header() -> None:
    print(
        "| cache | shape | traffic | in flight | requests | errors | p50 ms | p95 ms | p99 ms "
        "| req/s | rows/s | server CPU ms/req | Cassandra CPU ms/req | Redis CPU ms/req "
        "| local hits | Redis hits | storage keys/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def print_result(row: Result) -> None:
    keys = "-" if row.storage_keys_per_request is None else f"{row.storage_keys_per_request:.0f}"
    print(
        f"| {row.cache} | {row.shape} | {row.traffic} | {row.in_flight} | {row.requests} | "
        f"{row.errors} | {row.p50_ms:.2f} | {row.p95_ms:.2f} | {row.p99_ms:.2f} | "
        f"{row.requests_per_s:,.0f} | {row.rows_per_s:,.0f} | {row.server_cpu_ms:.2f} | "
        f"{row.cassandra_cpu_ms:.2f} | {row.redis_cpu_ms:.2f} | "
        f"{percent(row.local_hit_rate)} | {percent(row.redis_hit_rate)} | {keys} |",
        flush=True,
    )


@dataclass
class Context:
    client: AsyncFeatureStoreClient
    server: Server
    pids: dict[str, int | None]
    redis: redis.Redis
    cold: ColdKeys
    uniform: KeyDraw
    zipf: KeyDraw
    catalog: Catalog
    storage: CassandraStorage
    args: argparse.Namespace
    cache: str

    def costs(self) -> Costs:
        return Costs.now(self.server, self.pids)


def cold_requests(ctx: Context, shape: Pattern, count: int) -> list[Request]:
    out: list[Request] = []
    for _ in range(count):
        drawn = ctx.cold.draw(max(1, shape.products))
        if drawn is None:
            print(f"  (never-seen keys ran out after {len(out)} cold requests: larger --scale)")
            break
        out.append(Request(*drawn, shape))
    return out


async def ceiling_paired(ctx: Context, shape: Pattern, requests: list[Request]) -> list[Result]:
    """1 in flight: each request's keys read raw (CassandraStorage, this process), then the
    request served; both see the same moment of a shared machine."""
    raw: list[float] = []
    served: list[float] = []
    errors: dict[str, int] = {}
    ctx.redis.flushdb()
    begin = ctx.costs()
    raw_cpu = raw_cassandra = 0.0
    for request in requests:
        keys = storage_keys(ctx.catalog, request, shape)
        cpu = cassandra_reads.own_cpu()
        cassandra = cassandra_reads.process_cpu(ctx.pids["cassandra"])
        started = time.perf_counter()
        await asyncio.gather(*(ctx.storage.read(group, ks) for group, ks in keys))
        middle = time.perf_counter()
        raw_cassandra += cassandra_reads.process_cpu(ctx.pids["cassandra"]) - cassandra
        raw_cpu += cassandra_reads.own_cpu() - cpu
        raw.append(middle - started)
        try:
            await request.call(ctx.client)
            served.append(time.perf_counter() - middle)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
    end = ctx.costs()
    end.cassandra -= raw_cassandra  # the raw reads' share is the ceiling row's
    served_row = result_of(ctx.cache, shape, "cold", 1, (served, errors, sum(served), begin, end))
    raw_row = result_of(ctx.cache, shape, "cold", 1, (raw, {}, sum(raw), begin, begin))
    done = max(1, len(raw))
    raw_row.server_cpu_ms = 1000 * raw_cpu / done  # the reading process's CPU
    raw_row.cassandra_cpu_ms = 1000 * raw_cassandra / done
    raw_row.local_hit_rate = raw_row.redis_hit_rate = raw_row.storage_keys_per_request = None
    raw_row.traffic = "ceiling: raw read of the same keys (adopted path)"
    return [raw_row, served_row]


def traffic_requests(ctx: Context, shape: Pattern, zipf: bool) -> Iterator[Request]:
    keys = ctx.zipf if zipf else ctx.uniform
    while True:
        yield Request(*shape.draw(keys), shape)


async def measure_cold(ctx: Context, shape: Pattern) -> list[Result]:
    """The ceiling pairs at 1 in flight, then 16 in flight on other never-seen keys."""
    rows: list[Result] = []
    args = ctx.args
    cold = cold_requests(ctx, shape, args.requests)
    if cold:
        for row in await ceiling_paired(ctx, shape, cold):
            rows.append(row)
            print_result(row)
    for in_flight in COLD_IN_FLIGHT[1:]:
        cold = cold_requests(ctx, shape, args.requests * 2)
        if not cold:
            continue
        ctx.redis.flushdb()
        run = await measure(ctx.client, iter(cold), in_flight, None, ctx.costs)
        rows.append(result_of(ctx.cache, shape, "cold", in_flight, run))
        print_result(rows[-1])
    return rows


async def measure_traffic(ctx: Context, shape: Pattern) -> list[Result]:
    rows: list[Result] = []
    args = ctx.args
    for zipf in (False, True):
        traffic = f"Zipf s={ZIPF_S}" if zipf else "uniform"
        requests = traffic_requests(ctx, shape, zipf)
        await measure(ctx.client, requests, 16, args.warmup, ctx.costs)  # the caches fill
        for in_flight in TRAFFIC_IN_FLIGHT:
            run = await measure(ctx.client, requests, in_flight, args.seconds, ctx.costs)
            rows.append(result_of(ctx.cache, shape, traffic, in_flight, run))
            print_result(rows[-1])
    return rows


async def measure_server(
    args: argparse.Namespace,
    endpoints: Endpoints,
    catalog: Catalog,
    cache_on: bool,
    persists: list[Pattern],
) -> list[Result]:
    """Reads cold, then reads as traffic, then `persists` as traffic (after the reads, so
    their invalidations never empty a cache a read measurement relies on)."""
    server = start_server(cache_on)
    pids = {"cassandra": service_pid("cassandra"), "redis": service_pid("redis")}
    users, products = sizes(args.scale)
    storage = CassandraStorage(
        CassandraSettings(
            contact_points=[endpoints.cassandra],
            keyspace=keyspace_of(args.scale),
            request_timeout=CALL_TIMEOUT,
        )
    )
    await storage.prepare_tables(GROUP_OF.values())
    client = AsyncFeatureStoreClient(server.target, timeout=CALL_TIMEOUT)
    ctx = Context(
        client,
        server,
        pids,
        redis.Redis.from_url(f"redis://{endpoints.redis}/{REDIS_DB}"),
        ColdKeys(users, products, seed=int(time.time()) + cache_on),
        KeyDraw(args.scale, "uniform", seed=int(time.time()) + 2),
        KeyDraw(args.scale, "zipf", seed=int(time.time()) + 3),
        catalog,
        storage,
        args,
        "on" if cache_on else "off",
    )
    rows: list[Result] = []
    try:
        ctx.redis.flushdb()
        for shape in SHAPES:  # first, while no key has been asked yet
            rows += await measure_cold(ctx, shape)
        for pattern in [*SHAPES, *persists]:
            rows += await measure_traffic(ctx, pattern)
    finally:
        await client.close()
        await storage.close()
        ctx.redis.close()
        stop_server(server)
    return rows


# --- report --------------------------------------------------------------------------------


def pick(rows: list[Result], **wanted: Any) -> Result | None:
    return next((r for r in rows if all(getattr(r, k) == v for k, v in wanted.items())), None)


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return f"{value:.2f} ({'met' if value <= limit else 'missed'}, target <= {limit:g})"


def targets(rows: list[Result], reads: list[cassandra_reads.ReadRow]) -> dict[str, str]:
    """The issue's targets against the rows of this run (cache on = the default deployment)."""
    adopted = next((r for r in reads if r.candidate.startswith("CassandraStorage")), None)
    ceiling = pick(
        rows,
        cache="on",
        shape=SHAPES[1].name,
        traffic="ceiling: raw read of the same keys (adopted path)",
    )
    raw_p50 = adopted.p50_ms if adopted else (ceiling.p50_ms if ceiling else None)
    cold = pick(rows, cache="on", shape=SHAPES[1].name, traffic="cold", in_flight=16)
    warm = pick(rows, cache="on", shape=SHAPES[1].name, traffic=f"Zipf s={ZIPF_S}", in_flight=16)
    warm_one = pick(rows, cache="on", shape=SHAPES[1].name, traffic=f"Zipf s={ZIPF_S}", in_flight=1)
    c_warm = pick(rows, cache="on", shape=SHAPES[2].name, traffic=f"Zipf s={ZIPF_S}", in_flight=16)
    spread = warm.p99_ms / warm.p50_ms if warm else None
    out = {
        "raw read of shape (a)'s 201 keys, p50 ms": verdict(raw_p50, 10.0),
        "server CPU ms per request, (a) cold, 16 in flight": verdict(
            cold.server_cpu_ms if cold else None, 11.0
        ),
        "server CPU ms per request, (a) warm (Zipf, cache on), 16 in flight": verdict(
            warm.server_cpu_ms if warm else None, 6.0
        ),
        "server CPU ms per request, (c) warm (Zipf, cache on), 16 in flight": verdict(
            c_warm.server_cpu_ms if c_warm else None, 0.35
        ),
        "(a) warm p99 ms at 1 in flight": verdict(warm_one.p99_ms if warm_one else None, 5.0),
        "(a) warm p99 / p50 at 16 in flight": verdict(spread, 3.0),
    }
    for name, text in out.items():
        print(f"{name}: {text}")
    return out


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per traffic measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="traffic before measuring")
    parser.add_argument("--requests", type=int, default=100, help="per cold measurement")
    parser.add_argument("--rounds", type=int, default=3, help="candidate comparison rounds")
    parser.add_argument("--skip-candidates", action="store_true")
    parser.add_argument(
        "--persist",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the Persist patterns too: writes product rows into the keyspace",
    )
    parser.add_argument("--write-rows", type=int, default=20_000, help="per write candidate")
    parser.add_argument(
        "--name", default=NAME, help="keyspace <name>_s<scale> and ZooKeeper root (own data)"
    )
    return parser.parse_args()


def main() -> None:
    global NAME
    args = parse_args()
    NAME = args.name
    endpoints = service_endpoints()
    os.environ.update(deployment_env(endpoints, args.scale))  # for the CLI and the server
    load = os.getloadavg()
    print(f"services: {endpoints}; cassandra JIT: {cassandra_jit()}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    sample = sample_data(args.scale)
    state = ingest(sample, args.scale, endpoints)
    wait_for_compactions(endpoints.cassandra, keyspace_of(args.scale))
    catalog = load_catalog()
    persists = persist_patterns(catalog, sample) if args.persist else []
    users, products = sizes(args.scale)
    reads: list[cassandra_reads.ReadRow] = []
    writes: list[cassandra_reads.WriteRow] = []
    if not args.skip_candidates:
        print("\nCassandra read candidates (shape (a) keys, uniform over the whole data set):")
        reads = asyncio.run(
            cassandra_reads.compare(
                endpoints.cassandra,
                keyspace_of(args.scale),
                catalog,
                users,
                products,
                args.requests // 2 or 1,
                args.rounds,
            )
        )
        print("\nCassandra write paths:")
        writes = asyncio.run(
            cassandra_reads.compare_writes(
                endpoints.cassandra, keyspace_of(args.scale), args.write_rows
            )
        )
    print(f"\nserved: {WORKERS} workers, Redis db {REDIS_DB}, data scale {args.scale:g}")
    print_header()
    rows: list[Result] = []
    for cache_on in (True, False):
        rows += asyncio.run(measure_server(args, endpoints, catalog, cache_on, persists))
    print()
    figures = targets(rows, reads)
    end_load = os.getloadavg()
    print(f"load average at end: {end_load[0]:.2f} {end_load[1]:.2f} {end_load[2]:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"featurestore-distributed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {
        "args": vars(args),
        "endpoints": asdict(endpoints),
        "cassandra_jit": cassandra_jit(),
        "ingest": state,
        "load_average": {"start": load, "end": end_load},
        "candidates": [asdict(r) for r in reads],
        "write_candidates": [asdict(r) for r in writes],
        "rows": [asdict(r) for r in rows],
        "targets": figures,
    }
    out.write_text(json.dumps(payload, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
