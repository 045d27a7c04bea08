"""Interaction store benchmark: ingest, sweep and Get against `inferstack serve`, with the raw
write ceilings of its hot tiers measured in the same run.

Deployments (each its own server, `--workers` workers, the servers' sweepers off):
  embedded     LMDB hot tier + LMDB cold tier under a fresh data directory
  distributed  (--distributed) Redis hot tier + Cassandra cold tier, definitions in ZooKeeper
               (deploy/distributed.yaml pointed at scripts/services.py's services, with a key
               prefix, keyspace and ZooKeeper root of this run, all removed afterwards)
Both apply the benchmark's own types (click and order, `inactivity: 1s`).

Per deployment, in this order:
  1. ingest over gRPC: the public AsyncInteractionsClient, requests of 1,000 events (clicks and
     orders of ~1,000 different users, in time order), --in-flight requests outstanding
  2. ingest over Kafka: one JSON message per event on a topic per type, produced beforehand
     (untimed), consumed by InteractionConsumer in this process into the deployment's tiers
     opened as `serve` opens them (serve runs no consumers yet); skipped, and said so, if
     src/inferstack/interactions/kafka.py is missing. Its users are not the gRPC phase's.
  3. Get last 100 clicks, 1 in flight, sync InteractionsClient, users drawn at random:
     users with >= 100 clicks (all hot; never swept or hydrated, so the hot tier cannot prove
     it holds the newest and the cold row is read too) and any user (fewer than 100 hot:
     the cold tier is read too); the first again through InteractionService in this process
     (no gRPC); and gRPC Health/Check round trips to the same server (the transport's floor)
  4. sweep: Sweep(limit) from --sweepers callers until every user has moved (users/s)
  5. Get last 100 clicks again (the same draws), now from the cold tier only
  6. ceilings: the gRPC phase's events, encoded as the server encodes them, written raw from
     this process: embedded, LMDB puts (the hot tier's keys, one transaction per 1,000
     events); distributed, ZADD per (user, type) in pipelines of 1,000 events, --in-flight at
     once, through redis-py and as pre-encoded RESP bytes (Redis's own limit)
CPU: utime + stime from /proc of the server's workers (the benchmark process when it does
the work: Kafka consumer, ceilings) and of Redis, Cassandra and Kafka when
`scripts/services.py status` knows their pids, over each timed window, per 1,000 events/users.

Footprint (issue 14), taken with the server up before ingest, after the ingest phases (every
event hot, before 3.) and after the sweep (every event cold, before 5.), while nothing writes:
  embedded     per LMDB tier (<data_dir>/interactions/hot and /cold): data.mdb's blocks on disk
               (st_blocks x 512), and LMDB's own pages read through a read-only, lock-less view
               of the environment: B-tree pages in use, and the high-water mark
               ((last_pgno + 1) x page size: LMDB never shrinks its file)
  distributed  Redis's own accounting: MEMORY USAGE (SAMPLES 0) of the run's keys, INFO
               used_memory and the AOF (aof_current_size, and its files' blocks), the last
               three for the whole instance; Cassandra: the blocks of the run's ic_* sstables
               under the data directory of scripts/services.py's cassandra.yaml, after a flush
               (services.py runs Cassandra without JMX, so no nodetool: an ALTER TABLE of the
               tables' comment, a schema change, makes Cassandra flush them) and once the files
               settle (no flush or compaction running)
  RSS          VmRSS (/proc/<pid>/status) of the server's workers and, distributed, of
               redis-server and Cassandra; anon/file parts and PSS in the note
Each figure also as added since before ingest, per million events stored by the ingest phases.

Defaults (10k users, 1M events + 250k over Kafka; 100 events per user as in the issue's 100k
users x 10M events) take ~2 min of measuring embedded and ~3 min more with --distributed on
2 shared cores; the issue's full size would take ~10x as long for the same per-user shape.

    python bench/interactions.py [--users 10000] [--events 1000000] [--distributed]
    python bench/interactions.py --users 1000 --events 100000 --seconds 2   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hiredis
import launch
import lmdb
import numpy as np
import numpy.typing as npt
import redis
import redis.asyncio as aioredis
from procstat import cpu_seconds, memory, worker_pids

from inferstack.client.interactions import (
    AsyncInteractionsClient,
    InteractionsClient,
    SweepCounts,
)
from inferstack.core.events import EventBatch
from inferstack.core.registry import Registry
from inferstack.interactions.events import InteractionCatalog, encode_batch
from inferstack.interactions.hot.base import NEW
from inferstack.server.components import open_config_store, open_interactions
from inferstack.server.settings import ServeSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"
DEPLOY = ROOT / "deploy" / "distributed.yaml"
ENDPOINTS = ROOT / ".services" / "endpoints.json"
SERVICES = ROOT / "scripts" / "services.py"
SERVICES_STATE = ENDPOINTS.parent  # scripts/services.py's state dir: config, data, logs

BATCH = 1000  # events per Ingest request, per Kafka consumer poll... and per raw write
GET_LIMIT = 100
CLICK_SHARE = 0.9  # the rest are orders
PRODUCTS = 200_000
CATEGORIES = 400
SOURCES = np.array(["home", "search", "category", "recommendation"], dtype=object)
HISTORY_MS = 3_600_000  # events fall in the hour before the run
START_TIMEOUT = 120.0
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
STALL_SECONDS = 10.0  # a sweep or consumer making no progress this long: stop, report it
TYPES_YAML = """\
# The benchmark's interaction types: a tiny inactivity so that every user is due for the sweep
# right after ingest (the servers' own sweepers are off; the benchmark calls Sweep).
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: category_id, type: string, default: unknown}
      - {name: source, type: string, default: home}
    hot_cap: 200
    inactivity: 1s
  - name: order
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32, default: 0}
      - {name: quantity, type: int32, default: 1}
    hot_cap: 100
    inactivity: 1s
"""
TYPES = ("click", "order")
TARGETS = {  # issue 7, 2-core machine
    "ingest_per_core": 50_000.0,  # events/s per core into the hot tier
    "ingest_of_ceiling": 0.5,
    "get_hot_p99_ms": 2.0,
    "get_cold_p99_ms": 5.0,
    "sweep_users_per_s": 5_000.0,
}

IntArray = npt.NDArray[np.int64]
# Per request: (type, encoded user, ts, member) per event, as the hot tier gets them.
EncodedRows = list[list[tuple[str, bytes, int, bytes]]]


# --- results -------------------------------------------------------------------------------


@dataclass
class Throughput:
    deployment: str
    what: str
    events: int
    seconds: float
    per_s: float  # events (or users, for the sweep) per wall-clock second
    server_cpu_ms_per_1k: float | None = None  # the serving processes (workers, or this one)
    service_cpu_ms_per_1k: dict[str, float] = field(default_factory=dict)  # redis, cassandra
    client_cpu_ms_per_1k: float | None = None
    worker_cpu_share: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Latency:
    deployment: str
    what: str
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_events: float  # events returned per call
    hot_share: float  # of the events returned, the share that came from the hot tier
    note: str = ""


# --- events --------------------------------------------------------------------------------


@dataclass
class Events:
    """One phase's events in time order, column by column."""

    users: IntArray
    clicks: npt.NDArray[np.bool_]  # True: a click, False: an order
    items: IntArray
    ts: IntArray
    ids: list[str]
    categories: npt.NDArray[np.object_]
    sources: npt.NDArray[np.object_]
    prices: npt.NDArray[np.float32]
    quantities: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.users)

    def distinct_users(self) -> int:
        return len(np.unique(self.users))

    def users_with_clicks(self, at_least: int) -> IntArray:
        users, counts = np.unique(self.users[self.clicks], return_counts=True)
        return users[counts >= at_least]

    def requests(self) -> list[list[EventBatch]]:
        """Every BATCH events as one request: a batch of clicks and one of orders."""
        return [self.request(start, start + BATCH) for start in range(0, len(self), BATCH)]

    def request(self, start: int, stop: int) -> list[EventBatch]:
        part = slice(start, stop)
        ids = self.ids[part]
        out = []
        for name, chosen in (("click", self.clicks[part]), ("order", ~self.clicks[part])):
            where = np.flatnonzero(chosen)
            if not len(where):
                continue
            columns: dict[str, Any] = (
                {"category_id": self.categories[part][where], "source": self.sources[part][where]}
                if name == "click"
                else {"price": self.prices[part][where], "quantity": self.quantities[part][where]}
            )
            out.append(
                EventBatch(
                    name,
                    [ids[i] for i in where.tolist()],
                    self.users[part][where],
                    self.items[part][where],
                    self.ts[part][where],
                    columns,
                )
            )
        return out

    def messages(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(type, user, event as the Kafka consumer reads it) per event."""
        out = []
        for i in range(len(self)):
            event: dict[str, Any] = {
                "event_id": self.ids[i],
                "user_id": int(self.users[i]),
                "product_id": int(self.items[i]),
                "ts": int(self.ts[i]),
            }
            if self.clicks[i]:
                event["category_id"] = self.categories[i]
                event["source"] = self.sources[i]
                out.append(("click", event["user_id"], event))
            else:
                event["price"] = round(float(self.prices[i]), 2)
                event["quantity"] = int(self.quantities[i])
                out.append(("order", event["user_id"], event))
        return out


def make_events(first_user: int, users: int, count: int, now_ms: int, seed: int) -> Events:
    """`count` events of users first_user .. first_user + users - 1, each event's user drawn
    uniformly, so a batch of 1,000 touches ~1,000 users (every one a deadline write)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, PRODUCTS + 1, count)
    salt = uuid.uuid4().hex[:8]
    category_names = np.array([f"c{c:04d}" for c in range(CATEGORIES)], dtype=object)
    return Events(
        users=rng.integers(first_user, first_user + users, count),
        clicks=rng.random(count) < CLICK_SHARE,
        items=items,
        ts=now_ms - HISTORY_MS + np.sort(rng.integers(0, HISTORY_MS - 1000, count)),
        ids=[f"{salt}-{seed}-{i:09d}" for i in range(count)],  # ~20 bytes, like a short uuid
        categories=category_names[items % CATEGORIES],
        sources=SOURCES[rng.integers(0, len(SOURCES), count)],
        prices=rng.gamma(2.0, 15.0, count).astype(np.float32),
        quantities=rng.integers(1, 4, count).astype(np.int32),
    )


def encoded_rows(catalog: InteractionCatalog, events: Events) -> EncodedRows:
    """Per request of `events.requests()`: (type, user key, ts, member) per event, encoded
    exactly as the server encodes them (what the raw ceilings write)."""
    now = int(time.time() * 1000)
    out = []
    for request in events.requests():
        rows = []
        for batch in request:
            encoded = encode_batch(catalog, batch, batch.type, now)
            rows += [
                (batch.type, user, ts, NEW + row)
                for user, ts, row in zip(
                    encoded.users, encoded.timestamps.tolist(), encoded.rows, strict=True
                )
            ]
        out.append(rows)
    return out


# --- processes and CPU ---------------------------------------------------------------------


class CpuWindow:
    """CPU seconds used between `start()` and `stop()` by the server's workers, named other
    processes (Redis, Cassandra) and this process."""

    def __init__(self, workers: Sequence[int], services: dict[str, int]) -> None:
        self.workers = list(workers)
        self.services = dict(services)

    def start(self) -> None:
        self._workers = cpu_seconds(self.workers)
        self._services = cpu_seconds(list(self.services.values()))
        self._client = time.process_time()

    def stop(self) -> None:
        self.worker_seconds = cpu_seconds(self.workers) - self._workers
        self.service_seconds = dict(
            zip(
                self.services,
                cpu_seconds(list(self.services.values())) - self._services,
                strict=True,
            )
        )
        self.client_seconds = time.process_time() - self._client

    def fill(self, row: Throughput, count: int, serving: str = "workers") -> Throughput:
        """Per 1,000 of `count`: CPU of `serving` ("workers", or "client" when this process
        does the serving), of each named service and of this process."""
        per_1k = 1e6 / max(count, 1)  # seconds per `count` -> ms per 1,000
        total = float(self.worker_seconds.sum())
        if serving == "workers":
            row.server_cpu_ms_per_1k = total * per_1k
            row.client_cpu_ms_per_1k = self.client_seconds * per_1k
            row.worker_cpu_share = [float(s) / total if total else 0.0 for s in self.worker_seconds]
        else:
            row.server_cpu_ms_per_1k = self.client_seconds * per_1k
        row.service_cpu_ms_per_1k = {
            name: float(seconds) * per_1k for name, seconds in self.service_seconds.items()
        }
        return row


class Server:
    """`inferstack serve` on a free port, HTTP off, its own process group."""

    def __init__(
        self, arguments: Sequence[str], env: dict[str, str], workers: int, log: Path
    ) -> None:
        self.running = launch.start_server(
            *arguments,
            *("--host", "127.0.0.1", "--log-level", "INFO"),  # start and stop only
            log=log,
            http=False,
            workers=workers,
            env=env,
            own_group=True,
            timeout=START_TIMEOUT,
        )
        self.target = self.running.grpc_target
        self.log = log
        self.workers = worker_pids(self.running.pid)
        if len(self.workers) != workers:
            self.stop()
            raise SystemExit(f"expected {workers} workers, found {self.workers}")

    def restarted_workers(self) -> bool:
        return sorted(worker_pids(self.running.pid)) != sorted(self.workers)

    def stop(self) -> None:
        self.running.stop_or_kill()


# --- deployments ---------------------------------------------------------------------------


@dataclass
class Deployment:
    name: str
    serve_arguments: list[str]
    env: dict[str, str]  # the whole environment of the CLI and the server
    settings: ServeSettings  # as the server reads them: for the in-process Kafka consumer
    work: Path  # logs and the raw LMDB ceiling
    redis: str | None = None  # host:port of the hot tier's Redis
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def cli(self, *arguments: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "inferstack.cli.main", *arguments],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def apply(self, types_file: Path) -> None:
        """Apply the types, then create their cold tables from this one process: two workers
        creating the same table in a fresh Cassandra keyspace at once can fail to start
        ("Unknown CF": concurrent schema changes)."""
        self.cli("apply", "-f", str(types_file), *self.serve_arguments)

        async def prepare() -> None:
            await (await open_interactions(self.settings, self.registry())).close()

        asyncio.run(prepare())

    def registry(self) -> Registry:
        store = open_config_store(self.settings)
        try:
            return store.registry.load()
        finally:
            store.close()

    def clean_up(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # leave the rest to do; say what is left behind
                print(f"  clean-up of {self.name} failed: {type(exc).__name__}: {exc}")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERSTACK_")}
    env["INFERSTACK_INTERACTIONS__SWEEPER__ENABLED"] = "false"  # the benchmark sweeps
    return env


def embedded(work: Path) -> Deployment:
    data = work / "embedded"
    deployment = Deployment(
        "embedded",
        ["--data-dir", str(data)],
        base_env(),
        ServeSettings(data_dir=data),
        work,
    )
    deployment.cleanups.append(lambda: shutil.rmtree(data, ignore_errors=True))
    return deployment


def distributed(work: Path, endpoints: dict[str, str], run: str) -> Deployment:
    missing = [name for name in ("cassandra", "redis", "zookeeper") if name not in endpoints]
    if missing:
        raise SystemExit(
            f"--distributed needs {', '.join(missing)}: `python3 scripts/services.py up`"
        )
    prefix, keyspace, root = f"bench-ix-{run}:", f"bench_ix_{run}", f"/bench-interactions-{run}"
    env = {
        **base_env(),
        "INFERSTACK_STORAGE__CONTACT_POINTS": f"[{endpoints['cassandra']}]",
        "INFERSTACK_STORAGE__KEYSPACE": keyspace,
        "INFERSTACK_CACHE__SHARED__ADDRESS": endpoints["redis"],
        "INFERSTACK_CACHE__SHARED__PREFIX": f"bench-fs-{run}:",
        "INFERSTACK_INTERACTIONS__HOT__ADDRESS": endpoints["redis"],
        "INFERSTACK_INTERACTIONS__HOT__PREFIX": prefix,
        "INFERSTACK_CONFIG__HOSTS": endpoints["zookeeper"],
        "INFERSTACK_CONFIG__ROOT": root,
    }
    deployment = Deployment(
        "distributed",
        ["--config", str(DEPLOY)],
        env,
        load_settings(DEPLOY, environ=env),
        work,
        redis=endpoints["redis"],
    )
    deployment.cleanups += [
        lambda: delete_redis_prefix(endpoints["redis"], prefix),
        lambda: drop_keyspace(endpoints["cassandra"], keyspace),
        lambda: delete_znode(endpoints["zookeeper"], root),
    ]
    return deployment


def delete_redis_prefix(address: str, prefix: str) -> None:
    client = redis.Redis.from_url(f"redis://{address}")
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def drop_keyspace(contact_point: str, keyspace: str) -> None:
    from cassandra.cluster import Cluster

    from inferstack.kv.cassandra import parse_contact_point

    host, port = parse_contact_point(contact_point)
    cluster = Cluster([host], port=port)
    try:
        cluster.connect().execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=60)
    finally:
        cluster.shutdown()


def delete_znode(hosts: str, root: str) -> None:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts)
    client.start(timeout=10)
    try:
        client.delete(root, recursive=True)
    finally:
        client.stop()
        client.close()


def service_endpoints() -> dict[str, str]:
    """host:port per service from .services/endpoints.json ({} when there is none)."""
    try:
        found: dict[str, str] = json.loads(ENDPOINTS.read_text())
    except (OSError, ValueError):
        return {}
    return found


def service_pids() -> dict[str, int]:
    """pid of every service `scripts/services.py status` reports up (for their CPU)."""
    output = subprocess.run(
        [sys.executable, str(SERVICES), "status"], capture_output=True, text=True
    ).stdout
    pids = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) > 3 and words[1] == "up" and words[2] == "pid":
            pids[words[0]] = int(words[3])
    return pids


# --- ingest --------------------------------------------------------------------------------


async def ingest_grpc(
    deployment: Deployment,
    server: Server,
    requests: Sequence[list[EventBatch]],
    in_flight: int,
    services: dict[str, int],
) -> tuple[Throughput, int]:
    """`in_flight` callers sharing one pass over the requests; the first `in_flight` untimed.
    Also the events stored by every request, the untimed ones included."""
    async with AsyncInteractionsClient(server.target, timeout=60, connections=in_flight) as client:
        untimed = await asyncio.gather(*(client.ingest_batches(r) for r in requests[:in_flight]))
        pending = iter(requests[in_flight:])
        stored = 0

        async def caller() -> None:
            nonlocal stored
            for request in pending:
                count = await client.ingest_batches(request)
                stored += count  # not `stored += await ...`: that reads `stored` before

        cpu = CpuWindow(server.workers, services)
        cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        seconds = time.perf_counter() - started
        cpu.stop()
    row = Throughput(
        deployment.name,
        f"ingest, gRPC ({BATCH:,} events/request, {in_flight} in flight)",
        stored,
        seconds,
        stored / seconds,
    )
    return cpu.fill(row, stored), stored + sum(untimed)


def kafka_available() -> bool:
    return importlib.util.find_spec("inferstack.interactions.kafka") is not None


def produce(bootstrap: str, topics: dict[str, str], events: Events, partitions: int) -> None:
    """Create the topics and write one JSON message per event, keyed by user (untimed)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from inferstack.interactions.kafkamessages import encode_events

    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(t, partitions, 1) for t in topics.values()])
    for future in created.values():
        future.result(30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1 << 20,
        }
    )
    for type_name, user, event in events.messages():
        value = encode_events([event])
        while True:
            try:
                producer.produce(topics[type_name], value, str(user).encode())
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
    if producer.flush(120):
        raise RuntimeError("the producer could not deliver every message within 120 s")


def delete_kafka(bootstrap: str, topics: Sequence[str], group: str) -> None:
    """Delete the run's topics and its consumer group (empty once the consumer left)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # alive until the futures are done
    for future in admin.delete_topics(list(topics)).values():
        future.result(30)
    for future in admin.delete_consumer_groups([group]).values():
        with contextlib.suppress(KafkaException):  # not empty yet: only offsets are left
            future.result(30)


async def ingest_kafka(
    deployment: Deployment,
    events: Events,
    bootstrap: str,
    run: str,
    services: dict[str, int],
    stored_sink: list[int],
) -> Throughput:
    """InteractionConsumer in this process, into the deployment's tiers opened as serve opens
    them. Timed from the first stored batch to the last event (joining the group is not).
    Every event it stored is appended to `stored_sink`'s count, also when it fails."""
    from inferstack.interactions.kafka import InteractionConsumer

    topics = {name: f"bench-interactions-{run}-{deployment.name}.{name}" for name in TYPES}
    partitions = 2
    produce(bootstrap, topics, events, partitions)
    service = await open_interactions(deployment.settings, deployment.registry())
    group = f"bench-interactions-{run}-{deployment.name}"
    consumer = InteractionConsumer(
        bootstrap,
        group,
        {topic: name for name, topic in topics.items()},
        service.ingest,
        service.catalog.type,
        create_topics=False,
    )
    cpu = CpuWindow([], services)
    try:
        await consumer.start()
        first = await wait_for(lambda: consumer.stats.stored > 0, 60.0)
        if first is None:
            raise RuntimeError("the consumer stored nothing within 60 s")
        cpu.start()
        started, already = time.perf_counter(), consumer.stats.stored
        done = await wait_for(
            lambda: consumer.stats.stored + consumer.stats.rejected >= len(events),
            STALL_SECONDS,
            progress=lambda: consumer.stats.stored,
        )
        seconds = time.perf_counter() - started
        cpu.stop()
    finally:
        await consumer.stop()
        stored_sink.append(consumer.stats.stored)
        await service.close()
        delete_kafka(bootstrap, list(topics.values()), group)
    stored = consumer.stats.stored - already
    note = f"{consumer.stats.stored:,} of {len(events):,} stored"
    note += "" if done else f"; stalled (no progress for {STALL_SECONDS:g} s)"
    if consumer.stats.rejected:
        note += f"; {consumer.stats.rejected} rejected"
    row = Throughput(
        deployment.name,
        f"ingest, Kafka (1 event/message, {partitions} partitions, 1 consumer in process)",
        stored,
        seconds,
        stored / seconds,
        note=note,
    )
    return cpu.fill(row, stored, serving="client")


async def wait_for(
    condition: Callable[[], bool],
    stall: float,
    progress: Callable[[], int] | None = None,
) -> float | None:
    """Poll until `condition()`; None once `progress()` (or nothing) stood still `stall` s."""
    last, since = progress() if progress else 0, time.monotonic()
    while not condition():
        await asyncio.sleep(0.005)
        now = progress() if progress else 0
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            return None
    return time.perf_counter()


# --- Get and sweep -------------------------------------------------------------------------


def get_latency(
    deployment: Deployment, target: str, users: IntArray, seconds: float, what: str, seed: int
) -> Latency:
    """Get last GET_LIMIT clicks of a user drawn at random, one call at a time (sync client)."""
    rng = np.random.default_rng(seed)
    timings: list[float] = []
    counts: list[int] = []
    hot: list[int] = []
    with InteractionsClient(target, timeout=10) as client:
        for user in rng.choice(users, 20).tolist():  # untimed: connections, both workers
            client.get(user, ["click"], limit=GET_LIMIT)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            user = int(users[rng.integers(0, len(users))])
            started = time.perf_counter()
            history = client.get(user, ["click"], limit=GET_LIMIT)["click"]
            timings.append(time.perf_counter() - started)
            counts.append(history.count)
            hot.append(history.hot)
    return latency_row(deployment, what, timings, counts, hot)


def ping_floor(deployment: Deployment, target: str, seconds: float) -> Latency:
    """gRPC Health/Check round trips to the same server, one at a time: the transport's
    floor under every Get on this machine (an empty request, a 2-byte answer)."""
    timings: list[float] = []
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
        for _ in range(20):
            check(b"", timeout=10)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            check(b"", timeout=10)
            timings.append(time.perf_counter() - started)
    return latency_row(deployment, "floor: gRPC Health/Check round trip", timings, [0], [0])


async def get_in_process(
    deployment: Deployment, users: IntArray, seconds: float, what: str, seed: int
) -> Latency:
    """The same Get through InteractionService in this process, on the deployment's tiers
    opened as serve opens them: the service's own time, without gRPC and the client."""
    rng = np.random.default_rng(seed)
    timings: list[float] = []
    counts: list[int] = []
    hot: list[int] = []
    service = await open_interactions(deployment.settings, deployment.registry())
    try:
        for user in rng.choice(users, 20).tolist():
            await service.get(user, ["click"], limit=GET_LIMIT)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            user = int(users[rng.integers(0, len(users))])
            started = time.perf_counter()
            (history,) = await service.get(user, ["click"], limit=GET_LIMIT)
            timings.append(time.perf_counter() - started)
            counts.append(history.count)
            hot.append(history.hot)
    finally:
        await service.close()
    return latency_row(deployment, f"{what}, in process (no gRPC)", timings, counts, hot)


def latency_row(
    deployment: Deployment, what: str, timings: list[float], counts: list[int], hot: list[int]
) -> Latency:
    p50, p95, p99 = np.percentile(np.array(timings) * 1e3, [50, 95, 99])
    returned = sum(counts)
    return Latency(
        deployment.name,
        what,
        len(timings),
        float(p50),
        float(p95),
        float(p99),
        returned / len(counts),
        sum(hot) / returned if returned else 0.0,
    )


async def sweep_all(
    deployment: Deployment,
    server: Server,
    expected: int,
    limit: int,
    sweepers: int,
    services: dict[str, int],
) -> Throughput:
    """`sweepers` callers of Sweep(limit) until `expected` users moved (or nothing moves for
    STALL_SECONDS); timed until the last user moved."""
    moved = events = lost = calls = 0
    finished = 0.0
    failures: list[str] = []
    stall = deployment.settings.interactions.sweeper.lease + STALL_SECONDS
    async with AsyncInteractionsClient(server.target, timeout=60, connections=sweepers) as client:

        async def sweeper() -> None:
            nonlocal moved, events, lost, calls, finished
            idle_since: float | None = None
            while moved < expected:
                try:
                    swept = await client.sweep(limit)
                except grpc.aio.AioRpcError as exc:  # its claimed users wait for the lease
                    failures.append(f"{exc.code().name}: {exc.details()}")
                    swept = SweepCounts(0, 0, 0)
                calls += 1
                moved += swept.users
                events += swept.events
                lost += swept.lost_claims
                if moved >= expected and not finished:
                    finished = time.perf_counter()
                if swept.users or swept.lost_claims:
                    idle_since = None
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > stall:
                    return
                await asyncio.sleep(0.05)  # the others hold the last claims

        cpu = CpuWindow(server.workers, services)
        cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(sweeper() for _ in range(sweepers)))
        seconds = (finished or time.perf_counter()) - started
        cpu.stop()
    note = f"{events:,} events moved ({events / seconds:,.0f}/s), {calls} calls"
    if lost:
        note += f", {lost} lost claims"
    if failures:
        note += f", {len(failures)} calls failed (first: {failures[0]})"
    if moved < expected:
        note += f"; INCOMPLETE: {moved:,} of {expected:,} users moved"
    row = Throughput(
        deployment.name,
        f"sweep, users/s (Sweep(limit={limit}), {sweepers} callers)",
        moved,
        seconds,
        moved / seconds,
        note=note,
    )
    return cpu.fill(row, moved)


# --- footprint: disk and memory ------------------------------------------------------------

MIB = 1 << 20
SETTLE_SECONDS = 1.0  # Cassandra's table files unchanged this long: the flush is done
SETTLE_TIMEOUT = 600.0  # for the flush and the compactions it starts
COLD_TABLE_PREFIX = "ic_"  # interactions/cold/cassandra.py: one table per interaction type


@dataclass
class Measure:
    """One figure of a deployment's footprint at one moment: bytes, None if not measured
    (the note says why)."""

    what: str
    bytes: int | None
    note: str = ""
    rewrites: int | None = None  # AOF rewrites so far: one since the baseline shrinks `bytes`


Snapshot = dict[str, Measure]  # by `what`


@dataclass
class Footprint:
    deployment: str
    when: str  # "after ingest" (every event hot) or "after sweep" (every event cold)
    events: int  # events the ingest phases stored: the divisor of the per-million figure
    what: str
    bytes: int | None
    start_bytes: int | None  # the same figure with the server up and nothing ingested yet
    added_per_million_events: float | None  # (bytes - start_bytes) / (events / 1e6)
    note: str = ""


def footprint(
    deployment: Deployment, server: Server, pids: dict[str, int], endpoints: dict[str, str]
) -> Snapshot:
    """Disk and memory of both tiers and RSS of the processes serving them, now. Taken while
    nothing is written (between phases, the servers' sweepers off)."""
    measures = []
    if deployment.redis is None:
        settings = deployment.settings
        hot = settings.interactions.hot.path or settings.data_dir / "interactions" / "hot"
        cold = settings.data_dir / "interactions" / "cold"  # as server.components opens them
        measures += guarded("hot tier: LMDB", lambda: lmdb_footprint("hot", hot))
        measures += guarded("cold tier: LMDB", lambda: lmdb_footprint("cold", cold))
    else:
        address, prefix = deployment.redis, deployment.env["INFERSTACK_INTERACTIONS__HOT__PREFIX"]
        measures += guarded("hot tier: Redis", lambda: redis_footprint(address, prefix))
        keyspace = deployment.env["INFERSTACK_STORAGE__KEYSPACE"]
        measures += guarded(
            "cold tier: Cassandra",
            lambda: [cassandra_footprint(endpoints["cassandra"], keyspace)],
        )
    shared = "; file = mapped files (libraries, LMDB's maps), shared: in each worker's RSS"
    workers = f"RSS: server workers ({len(server.workers)}), summed"
    measures.append(rss(workers, server.workers, shared if deployment.redis is None else ""))
    if deployment.redis is not None:
        for name in ("redis", "cassandra"):
            if name in pids:
                label = "redis-server" if name == "redis" else "Cassandra (JVM)"
                measures.append(rss(f"RSS: {label} (the whole instance)", [pids[name]]))
    return {measure.what: measure for measure in measures}


def guarded(what: str, measure: Callable[[], list[Measure]]) -> list[Measure]:
    """`measure()`, or one row saying why it failed: a missing figure is no reason to lose
    the rest of the run."""
    try:
        return measure()
    except Exception as exc:
        return [Measure(what, None, f"not measured: {type(exc).__name__}: {exc}")]


def footprint_rows(
    deployment: Deployment, when: str, events: int, now: Snapshot, start: Snapshot
) -> list[Footprint]:
    rows = []
    for what, measure in now.items():
        before = start[what].bytes if what in start else None
        per_million = None
        if measure.bytes is not None and before is not None and events:
            per_million = (measure.bytes - before) / (events / 1e6)
        note = measure.note
        if what in start and measure.rewrites != start[what].rewrites:
            since = (measure.rewrites or 0) - (start[what].rewrites or 0)
            note += f"; {since} AOF rewrite(s) since before ingest: `added` is not this run's"
        rows.append(
            Footprint(
                deployment.name,
                when,
                events,
                what,
                bytes=measure.bytes,
                start_bytes=before,
                added_per_million_events=per_million,
                note=note,
            )
        )
    return rows


def allocated(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk = st_blocks x 512, apparent size) of a file (0, 0 if gone)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return 0, 0
    return stat.st_blocks * 512, stat.st_size


def lmdb_footprint(tier: str, path: Path) -> list[Measure]:
    """data.mdb's blocks on disk, and LMDB's own figures read through a read-only view of the
    server's environment (lock=False: no reader slot taken, nothing written; nothing writes
    at these moments): the pages of every B-tree (in use) and the high-water mark (pages
    ever used; LMDB never shrinks its file, freed pages go to its free list)."""
    data = path / "data.mdb"
    disk, size = allocated(data)
    what = f"{tier} tier: LMDB data.mdb allocated (st_blocks x 512)"
    if not data.exists():
        return [Measure(what, None, f"not measured: no {data}")]
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=64, readahead=False)
    try:
        info, main = env.info(), env.stat()
        psize = int(main["psize"])
        pages = main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
        entries = {}
        with env.begin() as txn:
            for name, _ in txn.cursor():  # the main B-tree holds the named ones
                db = env.open_db(name, txn=txn, create=False)
                stat = txn.stat(db)
                pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
                entries[name.decode()] = stat["entries"]
    finally:
        env.close()
    high_water = (int(info["last_pgno"]) + 1) * psize
    counts = ", ".join(f"{name} {count:,}" for name, count in entries.items())
    return [
        Measure(what, disk, f"file size {size / MIB:,.1f} MiB"),
        Measure(
            f"{tier} tier: LMDB pages in use (B-tree pages x {psize})",
            int(pages) * psize,
            f"high-water mark (last_pgno + 1) x {psize}: {high_water / MIB:,.1f} MiB; "
            f"entries: {counts or 'none'}",
        ),
    ]


def redis_footprint(address: str, prefix: str) -> list[Measure]:
    """Redis's own accounting: MEMORY USAGE (SAMPLES 0: every element) summed over the run's
    keys, with the events their sorted sets hold; INFO used_memory and the AOF's size (INFO
    and the files in CONFIG GET dir/appenddirname), both for the whole instance."""
    client = redis.Redis.from_url(f"redis://{address}")
    try:
        used = events = 0
        keys: list[bytes] = list(
            client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000)
        )
        sorted_sets = (prefix + "h:").encode()  # <prefix>h:<type>:<user>, hot/redis.py
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            pipe = client.pipeline(transaction=False)
            for name in batch:
                pipe.memory_usage(name, samples=0)
            for name in batch:
                if name.startswith(sorted_sets):
                    pipe.zcard(name)
            replies = pipe.execute()
            used += sum(r or 0 for r in replies[: len(batch)])  # None: gone since SCAN
            events += sum(replies[len(batch) :])
        memory_info: dict[str, Any] = client.info("memory")
        persistence: dict[str, Any] = client.info("persistence")
        try:
            found = {
                **client.config_get("dir"),
                **client.config_get("appenddirname"),  # Redis >= 7: the AOF's own directory
            }
            directory = Path(str(found["dir"])) / str(found.get("appenddirname") or "")
            files = [f for f in directory.iterdir() if f.is_file()]
            aof_note = f"{len(files)} files in {directory}"
        except (redis.RedisError, OSError, KeyError) as exc:  # CONFIG renamed, or not local
            files, aof_note = [], f"not measured: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    whole = "the whole instance"
    rewrites = persistence.get("aof_rewrites")  # Redis >= 7
    aof = [
        Measure(
            f"hot tier: Redis AOF, aof_current_size (INFO persistence; {whole})",
            int(persistence["aof_current_size"]) if persistence.get("aof_enabled") else None,
            f"aof_rewrites {rewrites if rewrites is not None else '?'}",
            rewrites,
        ),
        Measure(
            f"hot tier: Redis AOF, files allocated (st_blocks x 512; {whole})",
            sum(allocated(f)[0] for f in files) if files else None,
            aof_note,
            rewrites,
        ),
    ]
    return [
        Measure(
            "hot tier: Redis MEMORY USAGE of the run's keys (SAMPLES 0)",
            used,
            f"{len(keys):,} keys under {prefix!r}; {events:,} events in their sorted sets",
        ),
        Measure(
            f"hot tier: Redis used_memory (INFO memory; {whole})",
            int(memory_info["used_memory"]),
            f"used_memory_rss {int(memory_info['used_memory_rss']) / MIB:,.1f} MiB",
        ),
        *aof,
    ]


def cassandra_data_dirs(contact_point: str) -> list[Path] | str:
    """data_file_directories of scripts/services.py's Cassandra (its cassandra.yaml), if it is
    the one at `contact_point`; else why not."""
    import yaml

    conf = SERVICES_STATE / "cassandra" / "conf" / "cassandra.yaml"
    try:
        config = yaml.safe_load(conf.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return f"{conf}: {type(exc).__name__}: {exc}"
    port = contact_point.rpartition(":")[2]
    if str(config.get("native_transport_port")) != port:
        return f"the Cassandra of {conf} is not the one on port {port}"
    return [Path(d) for d in config.get("data_file_directories") or []]


def cold_table_files(directories: Sequence[Path], keyspace: str) -> list[Path]:
    """Files of the keyspace's ic_* tables (their sstables; not snapshots/ or backups/)."""
    files = []
    for root in directories:
        tables = root / keyspace
        for table in tables.iterdir() if tables.is_dir() else ():
            if table.is_dir() and table.name.startswith(COLD_TABLE_PREFIX):
                files += [f for f in table.iterdir() if f.is_file()]
    return files


def cassandra_footprint(contact_point: str, keyspace: str) -> Measure:
    """The blocks of the keyspace's ic_* sstables, after a flush: no JMX here (services.py
    starts Cassandra without it), so no `nodetool flush`; an ALTER TABLE (a new comment)
    makes Cassandra flush the table's memtable (a schema change), then the files are read
    once they settle (no flush or compaction left; system_views.sstable_tasks)."""
    from cassandra.cluster import Cluster

    from inferstack.kv.cassandra import parse_contact_point

    what = "cold tier: Cassandra ic_* sstables allocated (st_blocks x 512, after a flush)"
    directories = cassandra_data_dirs(contact_point)
    if isinstance(directories, str):
        return Measure(what, None, f"not measured: {directories}")
    host, port = parse_contact_point(contact_point)
    cluster = Cluster([host], port=port)
    try:
        session = cluster.connect()
        tables = [
            row.table_name
            for row in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                (keyspace,),
            )
            if row.table_name.startswith(COLD_TABLE_PREFIX)
        ]
        comment = f"'bench flush {time.strftime('%H:%M:%S')}'"  # a change: a schema change
        for table in tables:  # (the keyspace's own: dropped at the end of the run)
            session.execute(
                f'ALTER TABLE "{keyspace}"."{table}" WITH comment = {comment}', timeout=60
            )
        waited = settle(directories, keyspace, session)
    finally:
        cluster.shutdown()
    if not tables:
        return Measure(what, None, f"not measured: no {COLD_TABLE_PREFIX}* table in {keyspace}")
    if not any((root / keyspace).is_dir() for root in directories):
        where = ", ".join(str(root / keyspace) for root in directories)
        return Measure(what, None, f"not measured: no {where}")
    files = cold_table_files(directories, keyspace)
    sizes = [allocated(f) for f in files]
    sstables = sum(f.name.endswith("-Data.db") for f in files)
    note = (
        f"{len(tables)} tables, {sstables} sstables, {sum(s for _, s in sizes) / MIB:,.1f} MiB "
        "apparent; flushed by ALTER TABLE ... WITH comment (Cassandra flushes a table on a "
        "schema change; no JMX for nodetool), "
    )
    note += (
        f"files settled in {waited:.1f} s"
        if waited is not None
        else f"files STILL CHANGING after {SETTLE_TIMEOUT:.0f} s"
    )
    return Measure(what, sum(a for a, _ in sizes), note)


def settle(directories: Sequence[Path], keyspace: str, session: Any) -> float | None:
    """Seconds until the keyspace's table files stop changing (no flush or compaction
    transaction log, `*_txn_*.log`, and the same files and sizes for SETTLE_SECONDS) and no
    compaction of it runs; None if they still change after SETTLE_TIMEOUT."""
    started = last_change = time.monotonic()
    last: list[tuple[str, int]] | None = None
    while time.monotonic() - started < SETTLE_TIMEOUT:
        listing = [(str(f), allocated(f)[1]) for f in cold_table_files(directories, keyspace)]
        tasks = session.execute("SELECT keyspace_name FROM system_views.sstable_tasks")
        busy = any("_txn_" in name for name, _ in listing) or any(
            row.keyspace_name == keyspace for row in tasks
        )
        now = time.monotonic()
        if busy or listing != last:
            last, last_change = listing, now
        elif now - last_change >= SETTLE_SECONDS:
            return now - started
        time.sleep(0.1)
    return None


def rss(what: str, pids: Sequence[int], about: str = "") -> Measure:
    """VmRSS summed over `pids` (/proc/<pid>/status), with its parts and PSS in the note."""
    found = [memory(pid) for pid in pids]
    if not all(found):
        return Measure(what, None, f"not measured: a process is gone ({list(pids)})")

    def total(name: str) -> str:
        if not all(name in m for m in found):
            return "?"
        return f"{sum(m[name] for m in found) / MIB:,.1f}"

    note = (
        f"anon {total('RssAnon')} + file {total('RssFile')} + shmem {total('RssShmem')} MiB, "
        f"PSS {total('Pss')} MiB{about}"
    )
    return Measure(what, sum(m["VmRSS"] for m in found), note)


# --- raw ceilings --------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def lmdb_key(type_name: str, user: bytes, ts: int, member: bytes) -> bytes:
    """The LMDB hot tier's event key (hot/lmdb.py): type, user, ts, hash of the member."""
    return (
        type_name.encode() + b"\x00" + _U32.pack(len(user)) + user + _U64.pack(ts)
        + hashlib.blake2b(member, digest_size=8).digest()
    )  # fmt: skip


def raw_lmdb(deployment: Deployment, rows: EncodedRows) -> Throughput:
    """The same events' keys and members put into a fresh LMDB environment in this process,
    one write transaction (committed with fsync, LMDB's default) per request's events."""
    path = deployment.work / "raw-lmdb"
    shutil.rmtree(path, ignore_errors=True)
    env = lmdb.open(str(path), map_size=1 << 40, max_dbs=1, readahead=False)
    try:
        db = env.open_db(b"events")
        chunks = [[(lmdb_key(*row), row[3]) for row in chunk] for chunk in rows]
        count = sum(len(chunk) for chunk in chunks)
        cpu = CpuWindow([], {})
        cpu.start()
        started = time.perf_counter()
        for chunk in chunks:
            with env.begin(write=True, db=db) as txn:
                for key, value in chunk:
                    txn.put(key, value)
        seconds = time.perf_counter() - started
        cpu.stop()
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    row = Throughput(
        deployment.name,
        f"ceiling: raw LMDB puts ({BATCH:,} per transaction, in this process)",
        count,
        seconds,
        count / seconds,
    )
    return cpu.fill(row, count, serving="client")


ZaddChunks = list[dict[bytes, dict[bytes, int]]]  # per request: key -> {member: ts}


def zadd_chunks(rows: EncodedRows, prefix: str) -> ZaddChunks:
    """Per request, the ZADDs the events make: one per (user, type), as the hot tier keys."""
    chunks = []
    for chunk in rows:
        keys: dict[bytes, dict[bytes, int]] = {}
        for type_name, user, ts, member in chunk:
            key = prefix.encode() + type_name.encode() + b":" + user
            keys.setdefault(key, {})[member] = ts
        chunks.append(keys)
    return chunks


async def raw_redis(
    deployment: Deployment,
    chunks: ZaddChunks,
    in_flight: int,
    services: dict[str, int],
    encoded: bool,
) -> Throughput:
    """The ZADDs, one pipeline per request's events, `in_flight` pipelines at a time, from
    this process: through redis-py, or (`encoded`) as RESP bytes built beforehand and written
    to sockets, replies parsed by hiredis: what Redis itself takes, the client's cost aside."""
    assert deployment.redis is not None
    count = sum(len(members) for chunk in chunks for members in chunk.values())
    if encoded:
        payloads = [
            (
                b"".join(_resp(b"ZADD", key, *_pairs(members)) for key, members in chunk.items()),
                len(chunk),
            )
            for chunk in chunks
        ]
        call = _resp_callers(deployment.redis, payloads, in_flight)
    else:
        call = _redis_py_callers(deployment.redis, chunks, in_flight)
    cpu = CpuWindow([], services)
    cpu.start()
    started = time.perf_counter()
    await call()
    seconds = time.perf_counter() - started
    cpu.stop()
    how = "pre-encoded RESP" if encoded else "redis-py"
    row = Throughput(
        deployment.name,
        f"ceiling: raw Redis ZADD, {how} ({BATCH:,} events a pipeline, {in_flight} in flight)",
        count,
        seconds,
        count / seconds,
    )
    return cpu.fill(row, count, serving="client")


def _pairs(members: dict[bytes, int]) -> list[bytes]:
    return [value for member, ts in members.items() for value in (b"%d" % ts, member)]


def _resp(*parts: bytes) -> bytes:
    """One command in Redis's wire protocol: an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _redis_py_callers(
    address: str, chunks: ZaddChunks, in_flight: int
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        client = aioredis.Redis.from_url(f"redis://{address}", max_connections=in_flight)
        pending = iter(chunks)

        async def caller() -> None:
            for chunk in pending:
                async with client.pipeline(transaction=False) as pipe:
                    for key, members in chunk.items():
                        pipe.zadd(key, members)
                    await pipe.execute()

        try:
            await asyncio.gather(*(caller() for _ in range(in_flight)))
        finally:
            await client.aclose()

    return run


def _resp_callers(
    address: str, payloads: list[tuple[bytes, int]], in_flight: int
) -> Callable[[], Awaitable[None]]:
    host, _, port = address.rpartition(":")

    async def run() -> None:
        pending = iter(payloads)

        async def caller() -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            parser = hiredis.Reader()
            try:
                for payload, commands in pending:
                    writer.write(payload)
                    replies = 0
                    while replies < commands:
                        parser.feed(await reader.read(1 << 16))
                        while (reply := parser.gets()) is not False:
                            if isinstance(reply, hiredis.ReplyError):
                                raise RuntimeError(f"Redis refused a ZADD: {reply}")
                            replies += 1
            finally:
                writer.close()

        await asyncio.gather(*(caller() for _ in range(in_flight)))

    return run


# --- one deployment ------------------------------------------------------------------------


@dataclass
class Workload:
    """What every deployment gets: the same events, users to draw from, rows for ceilings."""

    grpc: Events
    requests: list[list[EventBatch]]
    kafka: Events | None
    heavy_users: IntArray  # >= GET_LIMIT clicks: Get last 100 answered by the hot tier alone
    all_users: IntArray
    rows: EncodedRows = field(default_factory=list)


@dataclass
class Results:
    rows: list[Throughput] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    footprints: list[Footprint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, item: Throughput | Latency | Footprint) -> None:
        if isinstance(item, Throughput):
            self.rows.append(item)
            print(format_throughput(item), flush=True)
        elif isinstance(item, Latency):
            self.latencies.append(item)
            print(format_latency(item), flush=True)
        else:
            self.footprints.append(item)
            print(format_footprint(item), flush=True)


def measure(
    deployment: Deployment,
    workload: Workload,
    args: argparse.Namespace,
    run: str,
    pids: dict[str, int],
    endpoints: dict[str, str],
    results: Results,
) -> None:
    print(f"\n## {deployment.name}", flush=True)
    deployment.apply(deployment.work / "types.yaml")
    remote = deployment.name == "distributed"
    # The services whose CPU each phase reports (embedded: only Kafka is a service).
    redis = {"redis": pids["redis"]} if remote and "redis" in pids else {}
    cassandra = {"cassandra": pids["cassandra"]} if remote and "cassandra" in pids else {}
    kafka = {"kafka": pids["kafka"]} if "kafka" in pids else {}
    server = Server(
        deployment.serve_arguments, deployment.env, args.workers, deployment.work / "serve.log"
    )
    try:
        start = footprint(deployment, server, pids, endpoints)  # nothing ingested yet
        grpc_row = ingest_grpc(deployment, server, workload.requests, args.in_flight, redis)
        row, stored = asyncio.run(grpc_row)
        results.add(row)
        expected = workload.grpc.distinct_users()
        kafka_stored: list[int] = []
        if workload.kafka is not None:
            kafka_row = ingest_kafka(
                deployment,
                workload.kafka,
                endpoints["kafka"],
                run,
                {**kafka, **redis},
                kafka_stored,
            )
            try:
                row = asyncio.run(kafka_row)
                results.add(row)
                expected += workload.kafka.distinct_users() if "stalled" not in row.note else 0
            except Exception as exc:
                results.notes.append(f"{deployment.name}: Kafka ingest failed: {exc!r}")
                print(f"  Kafka ingest failed: {exc!r}", flush=True)
        ingested = time.monotonic()
        stored += sum(kafka_stored)
        hot = footprint(deployment, server, pids, endpoints)
        for item in footprint_rows(deployment, "after ingest", stored, hot, start):
            results.add(item)
        measure_gets(deployment, server, workload, args.seconds, "hot", results)
        results.add(ping_floor(deployment, server.target, args.seconds))
        time.sleep(max(0.0, ingested + 1.5 - time.monotonic()))  # inactivity 1 s: all due
        sweep = sweep_all(
            deployment, server, expected, args.sweep_limit, args.sweepers, {**redis, **cassandra}
        )
        results.add(asyncio.run(sweep))
        cold = footprint(deployment, server, pids, endpoints)
        for item in footprint_rows(deployment, "after sweep", stored, cold, start):
            results.add(item)
        measure_gets(deployment, server, workload, args.seconds, "cold", results)
        if server.restarted_workers():
            results.notes.append(f"{deployment.name}: a worker restarted: CPU figures are off")
    finally:
        server.stop()
    measure_ceilings(deployment, workload, args.in_flight, redis, results)


def measure_gets(
    deployment: Deployment,
    server: Server,
    workload: Workload,
    seconds: float,
    tier: str,
    results: Results,
) -> None:
    """Get last 100 over gRPC for heavy users and for anyone, then heavy users in process;
    the same seeds for both tiers, so hot and cold rows draw the same users."""
    heavy = f"{tier}: users with >= {GET_LIMIT} clicks"
    target = server.target
    results.add(get_latency(deployment, target, workload.heavy_users, seconds, heavy, 1))
    anyone = f"{tier}: any user"
    results.add(get_latency(deployment, target, workload.all_users, seconds, anyone, 2))
    results.add(asyncio.run(get_in_process(deployment, workload.heavy_users, seconds, heavy, 1)))


def measure_ceilings(
    deployment: Deployment,
    workload: Workload,
    in_flight: int,
    redis: dict[str, int],
    results: Results,
) -> None:
    if not workload.rows:  # encoded once, untimed; both deployments apply the same types
        workload.rows = encoded_rows(InteractionCatalog(deployment.registry()), workload.grpc)
    if deployment.redis is None:
        results.add(raw_lmdb(deployment, workload.rows))
        return
    prefix = deployment.env["INFERSTACK_INTERACTIONS__HOT__PREFIX"] + "raw:"
    chunks = zadd_chunks(workload.rows, prefix)
    for encoded in (False, True):
        try:
            row = asyncio.run(raw_redis(deployment, chunks, in_flight, redis, encoded))
        finally:
            delete_redis_prefix(deployment.redis, prefix)  # the next one writes anew
        results.add(row)


# --- report --------------------------------------------------------------------------------

THROUGHPUT_HEADER = (
    "| deployment | what | count | seconds | per s | server CPU ms/1k | services CPU ms/1k "
    "| client CPU ms/1k | note |\n|---|---|---|---|---|---|---|---|---|"
)
LATENCY_HEADER = (
    f"| deployment | Get last {GET_LIMIT} clicks, 1 in flight | requests | p50 ms | p95 ms "
    "| p99 ms | events/call | from hot |\n|---|---|---|---|---|---|---|---|"
)
FOOTPRINT_HEADER = (
    "| deployment | when | events stored | what | MiB | added MiB | added MiB per M events "
    "| note |\n|---|---|---|---|---|---|---|---|"
)


def format_throughput(row: Throughput) -> str:
    server = "-" if row.server_cpu_ms_per_1k is None else f"{row.server_cpu_ms_per_1k:.1f}"
    client = "-" if row.client_cpu_ms_per_1k is None else f"{row.client_cpu_ms_per_1k:.1f}"
    services = ", ".join(f"{k} {v:.1f}" for k, v in row.service_cpu_ms_per_1k.items()) or "-"
    return (
        f"| {row.deployment} | {row.what} | {row.events:,} | {row.seconds:.1f} | "
        f"{row.per_s:,.0f} | {server} | {services} | {client} | {row.note} |"
    )


def format_latency(row: Latency) -> str:
    return (
        f"| {row.deployment} | {row.what} | {row.requests:,} | {row.p50_ms:.2f} | "
        f"{row.p95_ms:.2f} | {row.p99_ms:.2f} | {row.mean_events:.1f} | {row.hot_share:.0%} |"
    )


def format_footprint(row: Footprint) -> str:
    value = "-" if row.bytes is None else f"{row.bytes / MIB:,.1f}"
    added = per_million = "-"
    if row.bytes is not None and row.start_bytes is not None:
        added = f"{(row.bytes - row.start_bytes) / MIB:+,.1f}"
    if row.added_per_million_events is not None:
        per_million = f"{row.added_per_million_events / MIB:+,.1f}"
    return (
        f"| {row.deployment} | {row.when} | {row.events:,} | {row.what} | {value} | {added} | "
        f"{per_million} | {row.note} |"
    )


def verdicts(results: Results, cores: int) -> list[str]:
    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    lines = []
    for name in dict.fromkeys(r.deployment for r in results.rows):
        rows = [r for r in results.rows if r.deployment == name]
        ceilings = [r for r in rows if r.what.startswith("ceiling")]
        for row in (r for r in rows if r.what.startswith("ingest")):
            per_core = row.per_s / cores
            line = (
                f"{name}, {row.what.split(' (')[0]}: {row.per_s:,.0f} events/s = "
                f"{per_core:,.0f} per core of the {cores}-core machine (target >= 50k: "
                f"{met(per_core >= TARGETS['ingest_per_core'])})"
            )
            if row.server_cpu_ms_per_1k:
                per_cpu = 1e6 / row.server_cpu_ms_per_1k
                serving = "workers'" if "gRPC" in row.what else "consumer process's"
                line += (
                    f"; {per_cpu:,.0f} per CPU-second of the {serving} CPU "
                    f"({met(per_cpu >= TARGETS['ingest_per_core'])})"
                )
                if "redis" in row.service_cpu_ms_per_1k:
                    both = 1e6 / (row.server_cpu_ms_per_1k + row.service_cpu_ms_per_1k["redis"])
                    line += f", {both:,.0f} counting Redis's CPU too ({met(both >= 50_000)})"
            for ceiling in ceilings:
                share = row.per_s / ceiling.per_s
                label = ceiling.what.removeprefix("ceiling: ").split(" (")[0]
                line += (
                    f"; {share:.0%} of {label}'s {ceiling.per_s:,.0f}/s (target >= 50 %: "
                    f"{met(share >= TARGETS['ingest_of_ceiling'])})"
                )
            lines.append(line)
        for row in (r for r in rows if r.what.startswith("sweep")):
            lines.append(
                f"{name}, sweep: {row.per_s:,.0f} users/s (target >= 5k: "
                f"{met(row.per_s >= TARGETS['sweep_users_per_s'])})"
                + (" INCOMPLETE" if "INCOMPLETE" in row.note else "")
            )
        served = [
            r
            for r in results.latencies
            if r.deployment == name and r.what.startswith(("hot:", "cold:"))
            and "in process" not in r.what
        ]  # fmt: skip
        for latency in served:
            tier = "hot" if latency.what.startswith("hot") else "cold"
            goal = TARGETS[f"get_{tier}_p99_ms"]
            lines.append(
                f"{name}, Get last {GET_LIMIT}, {latency.what}: p99 {latency.p99_ms:.2f} ms "
                f"(target <= {goal:g} ms: {met(latency.p99_ms <= goal)})"
            )
    return lines


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000, help="users of the gRPC phase")
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the gRPC phase")
    parser.add_argument(
        "--kafka-events",
        type=int,
        default=None,
        help="events of the Kafka phase, for users of their own at the same events per user "
        "(default: a quarter of --events; 0 skips the phase)",
    )
    parser.add_argument("--in-flight", type=int, default=6, help="ingest requests outstanding")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--seconds", type=float, default=5.0, help="per Get measurement")
    parser.add_argument("--sweep-limit", type=int, default=500, help="users per Sweep call")
    parser.add_argument("--sweepers", type=int, default=2, help="Sweep callers at once")
    parser.add_argument(
        "--distributed", action="store_true", help="also Redis + Cassandra (scripts/services.py)"
    )
    parser.add_argument("--skip-embedded", action="store_true", help="only --distributed")
    args = parser.parse_args()
    if args.kafka_events is None:
        args.kafka_events = args.events // 4
    if min(args.users, args.events, args.in_flight, args.workers, args.sweepers) < 1:
        parser.error("--users, --events, --in-flight, --workers and --sweepers must be >= 1")
    if args.skip_embedded and not args.distributed:
        parser.error("--skip-embedded leaves nothing to measure without --distributed")
    return args


def prepare(args: argparse.Namespace, notes: list[str]) -> Workload:
    now_ms = int(time.time() * 1000)
    grpc = make_events(1, args.users, args.events, now_ms, seed=1)
    kafka = None
    if args.kafka_events and not kafka_available():
        notes.append("Kafka ingest not measured: src/inferstack/interactions/kafka.py is missing")
    elif args.kafka_events and "kafka" not in service_endpoints():
        notes.append("Kafka ingest not measured: no Kafka in .services/endpoints.json")
    elif args.kafka_events:
        users = max(1, args.users * args.kafka_events // args.events)
        kafka = make_events(args.users + 1, users, args.kafka_events, now_ms, seed=2)
    heavy = grpc.users_with_clicks(GET_LIMIT)
    everyone = np.unique(grpc.users)
    if not len(heavy):
        notes.append(f"no user has {GET_LIMIT} clicks: raise --events per --users")
        heavy = everyone
    return Workload(grpc, grpc.requests(), kafka, heavy, everyone)


def main() -> None:
    args = parse_args()
    run = uuid.uuid4().hex[:8]
    cores = os.cpu_count() or 1
    load_start = os.getloadavg()
    endpoints, pids = service_endpoints(), service_pids()
    results = Results()
    workload = prepare(args, results.notes)
    per_user = args.events / args.users
    print(
        f"run {run}: gRPC phase {args.events:,} events of {args.users:,} users "
        f"({per_user:.0f} per user, {CLICK_SHARE:.0%} clicks); Kafka phase "
        f"{len(workload.kafka) if workload.kafka else 0:,} events of their own users; "
        f"{len(workload.heavy_users):,} users with >= {GET_LIMIT} clicks; "
        f"{args.workers} workers; {cores} cores; load average {load_start[0]:.2f}"
    )
    for note in results.notes:
        print(f"note: {note}")
    work = BENCH_DATA / f"interactions-{run}"
    work.mkdir(parents=True)
    (work / "types.yaml").write_text(TYPES_YAML)
    deployments = [] if args.skip_embedded else [embedded(work)]
    if args.distributed:
        deployments.append(distributed(work, endpoints, run))
    print("rows as they are measured; both tables again at the end")
    try:
        for deployment in deployments:
            try:
                measure(deployment, workload, args, run, pids, endpoints, results)
            finally:
                deployment.clean_up()
    except BaseException:
        print(f"failed; logs kept in {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n{THROUGHPUT_HEADER}")
    for row in results.rows:
        print(format_throughput(row))
    print(f"\n{LATENCY_HEADER}")
    for latency in results.latencies:
        print(format_latency(latency))
    print(f"\n{FOOTPRINT_HEADER}")
    for item in results.footprints:
        print(format_footprint(item))
    print()
    lines = verdicts(results, cores)
    for line in lines:
        print(line)
    load_end = os.getloadavg()
    print(f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"interactions-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "run": run,
                "cores": cores,
                "workload": {
                    "grpc_events": len(workload.grpc),
                    "grpc_users": len(workload.all_users),
                    "kafka_events": len(workload.kafka) if workload.kafka else 0,
                    "kafka_users": workload.kafka.distinct_users() if workload.kafka else 0,
                    "users_with_100_clicks": len(workload.heavy_users),
                    "click_share": CLICK_SHARE,
                },
                "load_average": {"start": load_start, "end": load_end},
                "targets": TARGETS,
                "throughput": [asdict(r) for r in results.rows],
                "get": [asdict(r) for r in results.latencies],
                "footprint": [asdict(r) for r in results.footprints],
                "verdicts": lines,
                "notes": results.notes,
            },
            indent=1,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
